"""The table of ``docs/bad-inputs.md``, generated from the catalogue of bad inputs in ``tests/test_bad_inputs.py``.

    python scripts/docs_bad_inputs.py           # rewrite the table between the page's markers
    python scripts/docs_bad_inputs.py --check   # exit 1 when the page is stale (tests/test_docs.py runs this)

Each row is one case of the catalogue: where the input is read, the command (``DIR`` is the folder the test writes
the case's files to, shown after the command), what the message says (the fragments the test requires, ``…``
between them) and the exit code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "bad-inputs.md"
START = "<!-- bad-inputs:start -->"
END = "<!-- bad-inputs:end -->"
PROGRAMS = {"mmlexp": "python -m mmlexp", "reproduce": "python -m mmlexp.reproduce"}


def catalogue() -> list:
    """The cases of ``tests/test_bad_inputs.py`` (the checkout's root on the path to import it)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.test_bad_inputs import CASES, WHERE

    return sorted(CASES, key=lambda case: WHERE.index(case.where))


def cell(text: str) -> str:
    """Text inside a code span of a table cell (a ``|`` escaped, newlines shown as ``↵``)."""
    return "`" + text.replace("{tmp}", "DIR").replace("\n", "↵").replace("|", "\\|").replace("`", "'") + "`"


def shown(content: str | bytes, limit: int = 48) -> str:
    text = content.decode("ascii", "backslashreplace") if isinstance(content, bytes) else content
    text = "".join(ch if ch.isprintable() or ch == "\n" else f"\\x{ord(ch):02x}" for ch in text)
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return cell(text) if text else "empty"


def input_of(case) -> str:
    parts = [cell(" ".join([PROGRAMS[case.command], *case.args]))]
    parts += [f"{cell(name.replace('in/', 'DIR/in/'))}: {shown(content)}" for name, content in case.files]
    parts += [f"{cell(f'{name}={value}')}" for name, value in case.env]
    return "<br>".join(parts)


def table() -> str:
    cases = catalogue()
    rows = ["| where | input | message (what it says) | exit code |", "|---|---|---|---|"]
    for case in cases:
        says = " … ".join(cell(fragment) for fragment in case.says)
        rows.append(f"| {case.where} | {input_of(case)} | {says} | 2 |")
    counts = ", ".join(f"{sum(c.where == w for c in cases)} {w}" for w in dict.fromkeys(c.where for c in cases))
    return f"{len(cases)} bad inputs ({counts}):\n\n" + "\n".join(rows)


def updated(text: str) -> str:
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--check", action="store_true", help="exit 1 when the page is stale; write nothing")
    check = args.parse_args(argv).check
    text = PAGE.read_text()
    new = updated(text)
    if check:
        if new != text:
            print(f"{PAGE} is stale: run python scripts/docs_bad_inputs.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())

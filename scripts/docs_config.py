"""The site's configuration reference, generated from ``conf/`` and the validation rules of ``mmlexp.config``.

Built at ``mkdocs build`` time by ``scripts/docs_hooks.py`` (so it cannot drift from the YAML files);
``python scripts/docs_config.py > /tmp/configuration.md`` prints it. For every config group: its options, and
for every option its keys with their defaults, the comment written beside them in the YAML file and, where
``mmlexp.config.RULES`` checks the key, the values it allows.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mmlexp.config import RULES

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w.@/-]*):(?P<value>[^#]*?)\s*(?:#\s?(?P<comment>.*))?$")
GLOBAL_GROUPS = {"dataset_defaults", "dataset_loss", "dataset_encoder"}  # config.yaml: optional <group>@_global_
NOT_HYDRA = {"reproduce": "read by `mmlexp.reproduce` (`make reproduce DATASET=...`), not a Hydra group"}


def cell(text: str) -> str:
    """Text for a Markdown table cell: pipes, emphasis marks, brackets and angle brackets escaped."""
    text = re.sub(r"([|*_\[\]])", r"\\\1", text)
    return text.replace("<", "&lt;").replace(">", "&gt;").strip()


def header_comment(lines: list[str]) -> tuple[str, list[str]]:
    """The comment lines before the file's first key (without ``@package``): the prose, and the indented example
    command lines (``#   python -m mmlexp ...``)."""
    prose, code = [], []
    for line in lines:
        if not line.startswith("#"):
            break
        raw = line[1:]
        text = raw.strip()
        if text.startswith("@package") or not text:
            continue
        (code if raw.startswith("   ") else prose).append(raw[3:].rstrip() if raw.startswith("   ") else text)
    return " ".join(prose), code


def comments(lines: list[str]) -> dict[str, str]:
    """Dotted key -> its comment: the full-line comments just above it and the one beside it."""
    found: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    above: list[str] = []
    body = lines[next((i for i, x in enumerate(lines) if x and not x.startswith("#")), len(lines)) :]
    for line in body:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("#").strip())
            continue
        match = KEY_LINE.match(line)
        if not match or stripped.startswith("-"):
            above = []
            continue
        indent = len(match["indent"])
        stack = [(i, k) for i, k in stack if i < indent] + [(indent, match["key"])]
        text = " ".join([*above, match["comment"] or ""]).strip()
        found[".".join(k for _, k in stack)] = text
        above = []
    return found


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> leaf value (lists are leaves; ``defaults`` is left out)."""
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "defaults" and not prefix:
            continue
        name = f"{prefix}.{key}" if prefix else str(key)
        out.update(flatten(value, name) if isinstance(value, dict) and value else {name: value})
    return out


def shown(value: Any) -> str:
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return f"a list of {len(value)} entries"
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return f"`{text.replace('|', '/')}`" if text else "`''`"


def package(group: str, lines: list[str]) -> str:
    """Where a group's keys land in the composed config ('' for the top level)."""
    for line in lines:
        if line.startswith("# @package"):
            name = line.split("@package", 1)[1].strip()
            return "" if name == "_global_" else name
    return "" if group in GLOBAL_GROUPS or group in NOT_HYDRA else group.replace("/", ".")


def defaults_list(lines: list[str]) -> list[str]:
    """The ``defaults:`` entries of a file, as written."""
    out, inside = [], False
    for line in lines:
        if line.startswith("defaults:"):
            inside = True
        elif inside and line.lstrip().startswith("- "):
            out.append(line.split("#")[0].strip()[2:])
        elif inside and line.strip() and not line.startswith((" ", "#")):
            break
    return out


def key_rows(path: Path, group: str) -> list[str]:
    """The table rows of one option file: key, default, comment, allowed values."""
    lines = path.read_text().splitlines()
    prefix = package(group, lines)
    notes = comments(lines)
    values = flatten(OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {})
    rows = []
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else key
        note = notes.get(key, "")
        allowed = RULES[full][1] if full in RULES else ""
        rows.append(f"| `{full}` | {shown(value)} | {cell(note)} | {cell(allowed)} |")
    return rows


def option_name(group: str, path: Path) -> str:
    """How an option is chosen: ``loss=mml``; a plan of conf/reproduce: ``DATASET=gowalla`` (make reproduce)."""
    if not group:
        return path.name
    return f"DATASET={path.stem}" if group in NOT_HYDRA else f"{group}={path.stem}"


def option_section(path: Path, group: str) -> list[str]:
    lines = path.read_text().splitlines()
    out = [f"### `{option_name(group, path)}`", "", f"`conf/{path.relative_to(CONF)}`"]
    about, examples = header_comment(lines)
    out += ["", cell(about)] if about else []
    out += ["", "```bash", *examples, "```"] if examples else []
    defaults = defaults_list(lines)
    out += ["", "Defaults: " + ", ".join(f"`{d}`" for d in defaults)] if defaults else []
    rows = key_rows(path, group)
    if rows:
        out += ["", "| key | default | comment | allowed |", "|---|---|---|---|", *rows]
    return [*out, ""]


def groups(conf: Path = CONF) -> dict[str, list[Path]]:
    """Group path (``hydra/sweeper``) -> its option files, sorted."""
    found: dict[str, list[Path]] = {}
    for path in sorted(conf.rglob("*.yaml")):
        if path.parent != conf:
            found.setdefault(path.parent.relative_to(conf).as_posix(), []).append(path)
    return dict(sorted(found.items()))


def rules_section() -> list[str]:
    rows = [f"| `{key}` | {cell(text)} |" for key, (_, text) in RULES.items()]
    intro = (
        "Checked before anything runs (`mmlexp.config.validate`); a value outside its rule stops the run with "
        "the key, the value and what is allowed. Losses, samplers and encoders check their own settings in "
        "their constructors. `trainer.monitor` must be one of the metrics at `eval.ks` "
        "(`recall@K`, `ndcg@K`, ... for each K)."
    )
    return ["## Validation rules", "", intro, "", "| key | allowed |", "|---|---|", *rows, ""]


def page(conf: Path = CONF) -> str:
    """The whole reference page (Markdown)."""
    out = [
        "# Configuration reference",
        "",
        '!!! note "Generated"',
        "    Generated at build time from every file of `conf/` and the rules of `mmlexp.config` "
        "(`scripts/docs_config.py`). The guide to these groups is [Config](../config.md).",
        "",
        "## Top level",
        "",
        *option_section(conf / "config.yaml", ""),
        *rules_section(),
    ]
    for group, files in groups(conf).items():
        options = ", ".join(f"`{p.stem}`" for p in files)
        note = f" ({NOT_HYDRA[group]})" if group in NOT_HYDRA else ""
        out += [f"## `{group}`", "", f"Options: {options}{note}.", ""]
        for path in files:
            out += option_section(path, group)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(page())

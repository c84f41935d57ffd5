"""Recompute the golden digests (``tests/golden_runs.py``) and compare them with ``tests/golden/digests.json``.

    .venv/bin/python scripts/golden_digests.py                      # which of tables, moments, metrics moved
    .venv/bin/python scripts/golden_digests.py mf-mml-uniform-adam  # only the named configurations
    .venv/bin/python scripts/golden_digests.py --update             # rewrite digests.json (all configurations)

Exit status 1 when a digest moved (or a configuration has none yet).  ``--update`` only when a change moves bits on
purpose (say so in the commit), and never while a reproduction run is in flight (the pinned bits are the ones the
running code produces).  Runs on the CPU with one thread, everything written to a temporary directory (~1 min).
"""

import argparse
import contextlib
import io
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.golden_runs import (  # noqa: E402
    BASE,
    CONFIGS,
    DIGESTS_FILE,
    KINDS,
    environment,
    load_expected,
    moved,
    run_config,
    write_expected,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="configurations to run (default: all)")
    parser.add_argument("--update", action="store_true", help=f"rewrite {DIGESTS_FILE.relative_to(REPO)}")
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {unknown}; known: {', '.join(CONFIGS)}")
    if args.update and args.names:
        parser.error("--update rewrites every configuration: run it without names")
    logging.disable(logging.WARNING)  # MLflow's and mmlexp's INFO / WARNING lines: the table is the output
    expected_all = load_expected() if DIGESTS_FILE.exists() else {}
    expected = expected_all.get("configs", {}) if expected_all.get("base") == BASE else {}  # else: all new
    if expected_all and expected_all.get("environment") != environment():
        print(f"note: digests.json was made on {expected_all.get('environment')}, this is {environment()}")

    actual: dict[str, dict[str, str]] = {}
    width = max(map(len, CONFIGS))
    print(f"{'configuration':<{width}}  " + "  ".join(f"{k:<8}" for k in KINDS) + "  seconds")
    with tempfile.TemporaryDirectory(prefix="golden-") as tmp:
        os.environ["MMLEXP_CACHE_DIR"] = str(Path(tmp) / "cache")
        for name in args.names or CONFIGS:
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # the runs' own "best epoch ..." lines
                actual[name] = run_config(CONFIGS[name], Path(tmp) / name, Path(tmp))
            want = expected.get(name)
            if want is not None and want.get("overrides") != CONFIGS[name]:
                want = None  # the configuration changed: its old digests say nothing
            gone = [] if want is None else moved(want, actual[name])
            cells = ["new" if want is None else ("MOVED" if kind in gone else "ok") for kind in KINDS]
            print(f"{name:<{width}}  " + "  ".join(f"{c:<8}" for c in cells) + f"  {time.perf_counter() - start:.1f}")
    if args.update:
        write_expected(actual)
        print(f"wrote {DIGESTS_FILE}")
        return 0
    changed = [n for n in actual if n not in expected or moved(expected[n], actual[n])]
    if changed:
        print(f"{len(changed)} configuration(s) differ from {DIGESTS_FILE}: {', '.join(changed)}")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())

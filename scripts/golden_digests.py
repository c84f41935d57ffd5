"""Recompute the golden digests (``tests/golden_runs.py``) and compare them with ``tests/golden/digests.json``.

    .venv/bin/python scripts/golden_digests.py                      # which of tables, moments, metrics moved
    .venv/bin/python scripts/golden_digests.py mf-mml-uniform-adam  # only the named configurations
    .venv/bin/python scripts/golden_digests.py --update             # this platform's digests, the others dropped
    .venv/bin/python scripts/golden_digests.py --add-platform       # this platform's digests beside the others

digests.json keeps one set of digests per platform (CPU instruction set, torch / numpy / numba versions).
Exit status 1 when a digest moved (or a configuration has none yet on this platform).  ``--update`` only when a
change moves bits on purpose (say so in the commit; the other platforms' sets are dropped, being stale), and
never while a reproduction run is in flight (the pinned bits are the ones the running code produces).
``--add-platform`` pins a machine the file has no set for yet: run it from the code that made the runs in
flight (a checkout of their commit), so that what it pins is what those runs compute.  Runs on the CPU with one
thread, everything written to a temporary directory (~1 min).
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
    pins_these_configurations,
    platform_digests,
    run_config,
    write_expected,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="configurations to run (default: all)")
    write = parser.add_mutually_exclusive_group()
    write.add_argument("--update", action="store_true", help="this platform's digests only (the others dropped)")
    write.add_argument("--add-platform", action="store_true", help="this platform's digests beside the others")
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {unknown}; known: {', '.join(CONFIGS)}")
    if (args.update or args.add_platform) and args.names:
        parser.error("--update / --add-platform record every configuration: run without names")
    logging.disable(logging.WARNING)  # MLflow's and mmlexp's INFO / WARNING lines: the table is the output
    expected = _expected_here(args.add_platform)

    actual: dict[str, dict[str, str]] = {}
    width = max(map(len, CONFIGS))
    print(f"{'configuration':<{width}}  " + "  ".join(f"{k:<8}" for k in KINDS) + "  seconds")
    with tempfile.TemporaryDirectory(prefix="golden-") as tmp:
        os.environ["MMLEXP_CACHE_DIR"] = str(Path(tmp) / "cache")
        for name in args.names or CONFIGS:
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # the runs' own "best epoch ..." lines
                actual[name] = run_config(CONFIGS[name], Path(tmp) / name, Path(tmp))
            want = expected.get(name)  # None: the configuration is new or changed, its old digests say nothing
            gone = [] if want is None else moved(want, actual[name])
            cells = ["new" if want is None else ("MOVED" if kind in gone else "ok") for kind in KINDS]
            print(f"{name:<{width}}  " + "  ".join(f"{c:<8}" for c in cells) + f"  {time.perf_counter() - start:.1f}")
    if args.update or args.add_platform:
        write_expected(actual, keep_others=args.add_platform)
        print(f"wrote {DIGESTS_FILE} ({'beside the other platforms' if args.add_platform else 'this platform only'})")
        return 0
    changed = [n for n in actual if n not in expected or moved(expected[n], actual[n])]
    if changed:
        print(f"{len(changed)} configuration(s) differ from {DIGESTS_FILE}: {', '.join(changed)}")
    return 1 if changed else 0


def _expected_here(adding: bool) -> dict[str, dict[str, str]]:
    """This platform's recorded digests by configuration (those whose overrides still hold)."""
    recorded = load_expected() if DIGESTS_FILE.exists() else {}
    configs = recorded.get("configs", {})
    if adding and recorded and not pins_these_configurations(recorded):  # the others' digests: of other runs
        sys.exit(
            f"golden_runs.BASE or CONFIGS changed since {DIGESTS_FILE.name} was written: --update, not --add-platform"
        )
    if recorded and recorded.get("base") != BASE:
        return {}  # every configuration is new
    here = platform_digests(recorded) if recorded else None
    if recorded and here is None:
        print(f"note: {DIGESTS_FILE.name} has no digests for this platform ({environment()})")
    return {n: d for n, d in (here or {}).items() if configs.get(n, {}).get("overrides") == CONFIGS.get(n)}


if __name__ == "__main__":
    sys.exit(main())

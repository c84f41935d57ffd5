"""The item table's gradient of the scoring, before and after grouping its entries by row, side by side in one
process: ``touched_rows`` + the scatter ``cosine_rows_grad`` of commit ``--before`` (read from git) against today's
``entries_by_row`` + ``cosine_rows_grad``, on a Gowalla-sized table (40,981 x 64, fp32), B=256, N=10/100/800.

    python benchmarks/ab_rows_grad.py [--threads 1 2] [--before 1aadb34]

Prints ms per call (best of 8 after one warm-up) and whether the two results are bit-identical.
"""

import argparse
import importlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mmlexp.encoders import cosine as after  # the kernels moved there from cpu_kernels.py

ROOT = Path(__file__).resolve().parent.parent


def load_before(rev: str, folder: Path):
    """The ``cpu_kernels`` module of commit ``rev``, importable under its own name (numba caches it there)."""
    source = subprocess.run(
        ["git", "show", f"{rev}:src/mmlexp/cpu_kernels.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    (folder / "cpu_kernels_before.py").write_text(source)
    sys.path.insert(0, str(folder))
    return importlib.import_module("cpu_kernels_before")


def best_ms(call, repeats: int = 9) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times[1:]) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--before", default="1aadb34", help="the commit whose kernel is the 'before'")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before = load_before(args.before, Path(tmp))
        rng = np.random.default_rng(0)
        n_items, batch, dim = 40_981, 256, 64
        table = (rng.standard_normal((n_items, dim)) * 0.1).astype(np.float32)
        users = rng.standard_normal((batch, dim)).astype(np.float32)
        for threads in args.threads:
            before.set_threads(threads)
            after.set_threads(threads)
            for n in (10, 100, 800):
                items = rng.integers(0, n_items, (batch, n + 1)).astype(np.int64)
                g, coef = (rng.standard_normal((batch, n + 1)).astype(np.float32) for _ in range(2))
                out = {}

                def old(items=items, g=g, coef=coef, out=out, threads=threads):
                    rows, slot = before.touched_rows(items, n_items)
                    out["before"] = before.cosine_rows_grad(table, items, g, coef, users, rows, slot, threads)

                def new(items=items, g=g, coef=coef, out=out):
                    rows, starts, order = after.entries_by_row(items, n_items)
                    out["after"] = after.cosine_rows_grad(table, g, coef, users, rows, starts, order)

                t_old, t_new = best_ms(old), best_ms(new)
                print(
                    f"threads {threads}, N={n}: before {t_old:.2f} ms, after {t_new:.2f} ms ({t_old / t_new:.2f}x); "
                    f"bit-identical: {np.array_equal(out['before'], out['after'])}"
                )


if __name__ == "__main__":
    main()

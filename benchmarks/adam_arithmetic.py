"""What bounds the Adam pass on the CPU: the square root and the division, or the memory traffic?

Three loops over fp32 rows of 64, each in ns per element and step, one thread:

  full      ``optim.kernels.adam_rows`` itself on rows without a gradient (the dense pass: g = l2 coef p; m, v, p
            updated; one ``sqrt`` and one division per element)
  no-div    a copy of that kernel with ``m / (sqrt(v) / bc + eps)`` replaced by ``m * (v * bc + eps)``: the same
            memory traffic without the ``sqrt`` and the division (wrong on purpose: it measures what they cost)
  replay    ``optim.kernels.replay_rows`` itself bringing every row ``--replay-steps`` steps forward (a row is loaded
            once, its steps run in registers: the deferred path's arithmetic without its traffic)

on a table larger than the caches (70,000 rows, about Gowalla's two tables) and on one that fits in L2 (4,000
rows).  ``full`` about equal on both sizes and several times ``no-div``: the pass is bound by the arithmetic;
deferring rows (which saves traffic, not arithmetic) then cannot make a step's cost follow the rows a batch
touches.  ``full`` well above ``replay``: the traffic matters, and deferring pays.

    python benchmarks/adam_arithmetic.py [--repeats 5] [--replay-steps 16]
"""

import argparse
import time
from functools import partial

import numpy as np

from mmlexp._numba import BLOCKS as _BLOCKS
from mmlexp._numba import jit as _jit
from mmlexp._numba import nb, set_threads
from mmlexp.optim import kernels


@_jit
def no_div(p, m, v, a, step_size, b1, c1, b2, c2, eps, bc2_sqrt):  # pragma: no cover - compiled
    """``kernels.adam_rows``' loops on rows without a gradient, the ``sqrt`` and the division taken out."""
    n, d = p.shape
    step = (n + _BLOCKS - 1) // _BLOCKS
    for blk in nb.prange(_BLOCKS):
        g = np.empty(d, p.dtype)
        for r in range(blk * step, min(n, (blk + 1) * step)):
            for j in range(d):
                g[j] = a * p[r, j]
            for j in range(d):
                mj = b1 * m[r, j] + c1 * g[j]
                vj = b2 * v[r, j] + c2 * g[j] * g[j]
                m[r, j] = mj
                v[r, j] = vj
                p[r, j] = p[r, j] - step_size * mj * (vj * bc2_sqrt + eps)


def replay_all(p, m, v, every, done, k, hist):
    """Every row ``k`` steps forward (``done`` reset first: the same pending steps at each call)."""
    done.fill(0)
    kernels.replay_rows(p, m, v, every, done, k, hist)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--replay-steps", type=int, default=16, help="steps per row load in the replay")
    args = parser.parse_args()
    set_threads(1)
    f32, k = np.float32, args.replay_steps
    a, step_size, b1, c1, b2, c2, eps, bc = (f32(x) for x in (1e-8, 1e-4, 0.9, 0.1, 0.999, 0.001, 1e-8, 0.5))
    update = (step_size, b1, c1, b2, c2, eps, bc)
    no_rows, no_vals = np.empty(0, np.int64), np.zeros((1, 64), f32)
    hist = np.tile(np.array([a, step_size, b1, c1, b2, c2, eps, bc], f32), (k, 1))  # kernels.replay_rows' columns
    print(f"ns per element and step (one thread, best of {args.repeats})")
    print(f"{'rows':>7} {'full':>8} {'no-div':>8} {'replay':>8}   full / no-div   full / replay")
    for n in (70_000, 4_000):
        rng = np.random.default_rng(0)
        p = (rng.standard_normal((n, 64)) * 0.1).astype(f32)
        m, v = np.abs(p) * f32(1e-3), np.abs(p) * f32(1e-6)
        every = np.arange(n, dtype=np.int64)
        done = np.zeros(n, np.int64)
        loops = {
            "full": (partial(kernels.adam_rows, p, m, v, no_rows, no_vals, a, f32(1), *update, False), 1),
            "no-div": (partial(no_div, p, m, v, a, *update), 1),
            "replay": (partial(replay_all, p, m, v, every, done, k, hist), k),
        }
        calls = int(2e7 / p.size) + 1
        out = {}
        for name, (call, steps) in loops.items():
            call()  # compile
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                for _ in range(calls):
                    call()
                best = min(best, (time.perf_counter() - start) / calls)
            out[name] = best / (p.size * steps) * 1e9
        print(
            f"{n:>7} {out['full']:>8.3f} {out['no-div']:>8.3f} {out['replay']:>8.3f}   "
            f"{out['full'] / out['no-div']:>12.1f}x {out['full'] / out['replay']:>14.1f}x"
        )


if __name__ == "__main__":
    main()

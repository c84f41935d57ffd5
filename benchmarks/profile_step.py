"""Where a training step's time goes: MF + MML on Gowalla (or a synthetic catalogue), per kernel, dense vs deferred.

The step's numba kernels are called from Python, so ``cProfile``'s own time per function is the time of each
kernel (``adam_rows``: the dense Adam pass; ``replay_rows``: the deferred rows brought up to date;
``cosine_*``: the scoring and its gradient; ``touched_grad_sq`` / ``grad_sq_norm``: the clip's norm).  One
thread by default, so that the figures are the work and not the waiting of a second thread.  The same
``Loop`` as ``bench_catalogs.py`` (paper settings: lr 1e-4, l2 1e-8, clip 10, B=256, uniform negatives).

    python benchmarks/profile_step.py [--items gowalla 400000] [--negatives 10 100 800] [--steps 60]

Prints, per (catalogue, N, path), ms per step of the whole step and of its heaviest functions.
"""

import argparse
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

GROUPS = {  # function name -> the part of the step it is
    "adam_rows": "Adam, dense pass",
    "replay_rows": "Adam, deferred replay",
    "adam_touched": "Adam, touched rows",
    "pending_rows": "Adam, deferred bookkeeping",
    "grad_sq_norm": "clip norm",
    "touched_grad_sq": "clip norm",
    "cosine_scores": "scoring (forward)",
    "gathered_rows_dot": "scoring (forward)",
    "cosine_rows_grad": "scoring gradient (backward)",
    "entries_by_row": "gradient rows",
    "randint": "sampling",
}


def profile(loop, steps: int) -> tuple[float, dict[str, float]]:
    """(ms per step, {part: ms per step}) over ``steps`` steps of ``loop``."""
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    loop.run(steps)
    prof.disable()
    total = (time.perf_counter() - start) * 1e3 / steps
    parts: dict[str, float] = {}
    for (_, _, name), (_, _, own, _, _) in pstats.Stats(prof).stats.items():  # type: ignore[attr-defined]
        part = GROUPS.get(name)
        if part:
            parts[part] = parts.get(part, 0.0) + own * 1e3 / steps
    parts["everything else (Python, autograd, torch ops)"] = total - sum(parts.values())
    return total, parts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", nargs="+", default=["gowalla"], help="gowalla, or synthetic catalogue sizes")
    parser.add_argument("--negatives", nargs="+", type=int, default=[10, 100, 800])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=150)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import bench_catalogs

    from mmlexp.allocator import keep_freed_memory
    from mmlexp.data import load_dataset

    keep_freed_memory()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}; "
        f"MF + MML, B={args.batch}, {args.steps} profiled steps after {args.warmup} warm-up"
    )
    for name in args.items:
        if name.isdigit():
            path = bench_catalogs.generate(bench_catalogs.HERE / ".catalogs", int(name))
            data = load_dataset("custom", path=path, cache_dir=path / "cache")
        else:
            data = load_dataset(name)
        for negatives in args.negatives:
            for defer in (False, True):
                loop = bench_catalogs.Loop(data, negatives, args.batch, defer)
                loop.run(args.warmup)
                torch.set_num_threads(args.threads)  # numba's pool start resets it
                total, parts = profile(loop, args.steps)
                path_name = "deferred" if defer else "dense"
                print(f"\n{name}, N={negatives}, {path_name}: {total:.2f} ms per step")
                for part, ms in sorted(parts.items(), key=lambda kv: -kv[1]):
                    print(f"  {part:<48} {ms:7.2f} ms  {100 * ms / total:5.1f}%")


if __name__ == "__main__":
    main()

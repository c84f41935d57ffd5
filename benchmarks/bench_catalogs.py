"""Step time against catalogue size: two synthetic catalogues, the same batch, deferred vs dense Adam.

The catalogues (issue "Performance II"): 30,000 users with 27 train items (and 3 test items) each, drawn
uniformly from 40,000 or 400,000 items; written in the LightGCN format under ``--out`` (generated, not
committed; ``dataset=custom dataset.path=...`` trains on them).  MF + MML, uniform negatives, B=256,
paper settings (lr 1e-4, l2 1e-8, clip 10).  ``dense`` is ``TableAdam`` as by default (every row of
both tables read and written each step); ``deferred`` with ``defer=True`` (``mmlexp.optim.deferred_rows``).
Each loop warms up first (``--warmup`` steps: the deferred rows reach their steady backlog), then the loops
alternate, timed
blocks of ``--steps`` steps, best of ``--repeats``.  ``materialize`` is the one full replay an epoch
ends with (reported apart: an epoch is 30,000 x 27 / 256 = 3,164 steps).

    python benchmarks/bench_catalogs.py [--negatives 100] [--steps 50] [--repeats 3] [--out DIR]
    python benchmarks/bench_catalogs.py --items gowalla --negatives 10   # the same on Gowalla

Each deferred loop also reports how its steps went: deferred, of which with the clip acting, and
dense fallbacks (the clip factor undecided by the bounds on the deferred rows).
"""

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
USERS, TRAIN_ITEMS, TEST_ITEMS = 30_000, 27, 3


def generate(folder: Path, n_items: int, seed: int = 0) -> Path:
    """``folder/items<n>/{train,test}.txt``: each user gets 30 distinct uniform items, 27 train and 3 test
    (item n_items - 1 is given to user 0 so that the catalogue has exactly n_items)."""
    out = folder / f"items{n_items}"
    if (out / "train.txt").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for user in range(USERS):
        items = rng.choice(n_items - 1 if user == 0 else n_items, TRAIN_ITEMS + TEST_ITEMS, replace=False)
        if user == 0:
            items[0] = n_items - 1
        train.append(f"{user} " + " ".join(map(str, items[:TRAIN_ITEMS])))
        test.append(f"{user} " + " ".join(map(str, items[TRAIN_ITEMS:])))
    (out / "train.txt").write_text("\n".join(train) + "\n")
    (out / "test.txt").write_text("\n".join(test) + "\n")
    return out


class Loop:
    def __init__(self, data, negatives: int, batch: int, defer: bool):
        from mmlexp import train as train_module
        from mmlexp.encoders import MatrixFactorization
        from mmlexp.losses import MultiMarginLoss
        from mmlexp.optim import make_optimizer
        from mmlexp.samplers import UniformSampler

        self.users, self.items = (torch.from_numpy(a) for a in data.train_pairs())
        torch.manual_seed(0)
        self.model = MatrixFactorization(data.n_users, data.n_items)
        self.optimizer = make_optimizer(self.model, 1e-4, defer=defer)
        self.gen = torch.Generator().manual_seed(0)
        self.sampler = UniformSampler(negatives, data.n_items, generator=self.gen)
        self.settings = train_module.TrainSettings(batch_size=batch, l2=1e-8, clip_grad_norm=10.0)
        self.loss, self.batch, self.defer, self.step = MultiMarginLoss(), batch, defer, 0
        self.order = torch.randperm(self.users.shape[0], generator=self.gen)
        self.n_items = data.n_items

    def run(self, steps: int) -> tuple[float, float]:
        """(wall, CPU) seconds per step: on a shared machine the CPU time of this process (all its threads)
        is the steadier measure of the work, the wall time what a user waits."""
        from mmlexp import train as train_module

        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            first = (self.step * self.batch) % (self.users.shape[0] - self.batch)
            rows = self.order[first : first + self.batch]
            loss = train_module.train_step(
                self.model, self.loss, self.sampler, self.optimizer, self.users[rows], self.items[rows], self.settings
            )
            self.step += 1
        loss.item()
        return (time.perf_counter() - start) / steps, (time.process_time() - cpu) / steps

    def materialize_time(self) -> float:
        start = time.perf_counter()
        self.optimizer.materialize()
        return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", nargs="+", default=["40000", "400000"], help="catalogue sizes, or gowalla")
    parser.add_argument("--negatives", type=int, default=100)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch and numba threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=HERE / ".catalogs", help="where the catalogues are written")
    args = parser.parse_args()
    from mmlexp.allocator import keep_freed_memory
    from mmlexp.data import load_dataset

    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    loops = {}
    for n in args.items:
        if n.isdigit():
            path = generate(args.out, int(n))
            data = load_dataset("custom", path=path, cache_dir=path / "cache")
        else:
            data = load_dataset(n)
        for defer in (False, True):
            loops[(n, defer)] = Loop(data, args.negatives, args.batch, defer)
    for loop in loops.values():
        loop.run(args.warmup)
        if args.threads:  # numba's OpenMP pool, started by the first kernel, resets the process's thread count
            torch.set_num_threads(args.threads)
    times = {key: [] for key in loops}
    keys = list(loops)
    for r in range(args.repeats):
        for key in keys if r % 2 == 0 else keys[::-1]:
            times[key].append(loops[key].run(args.steps))
    best = {key: min(t[0] for t in runs) for key, runs in times.items()}
    best_cpu = {key: min(t[1] for t in runs) for key, runs in times.items()}
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus, "
        f"load {os.getloadavg()[0]:.1f}; MF + MML, B={args.batch}, N={args.negatives}, "
        f"{args.steps} steps per block after {args.warmup} warm-up, best of {args.repeats}"
    )
    print("ms per step, wall (CPU time of all threads)")
    print(
        f"{'items':>8} {'dense':>16} {'deferred':>16} {'speed-up':>15} {'materialize ms':>15}"
        f"  deferred/clip acting/fallback steps"
    )
    for n in args.items:
        dense, fast = best[(n, False)] * 1e3, best[(n, True)] * 1e3
        dense_cpu, fast_cpu = best_cpu[(n, False)] * 1e3, best_cpu[(n, True)] * 1e3
        opt = loops[(n, True)].optimizer
        counts = f"{opt.deferred_steps}/{opt.clipped_steps}/{opt.fallback_steps}"
        print(
            f"{n:>8} {dense:>7.2f} ({dense_cpu:>6.2f}) {fast:>7.2f} ({fast_cpu:>6.2f}) "
            f"{dense / fast:>6.2f}x ({dense_cpu / fast_cpu:.2f}x) "
            f"{loops[(n, True)].materialize_time() * 1e3:>15.1f}  {counts}"
        )
    if len(args.items) == 2:
        small, large = args.items
        for name, b in (("wall", best), ("CPU", best_cpu)):
            print(
                f"ratio {large} / {small} items ({name}): dense {b[(large, False)] / b[(small, False)]:.2f}x, "
                f"deferred {b[(large, True)] / b[(small, True)]:.2f}x"
            )


if __name__ == "__main__":
    main()

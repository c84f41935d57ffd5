"""Training throughput (interactions/s) of MF + MML on Gowalla: mmlexp's loop vs a plain eager loop.

Both run side by side in this one process, alternating, on the same data, model, loss and sampler
(``python benchmarks/bench_training.py [--steps 200] [--negatives 100 800] [--batch 256 1024]``).
"""

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plain_loop import plain_training  # noqa: E402

from mmlexp.data import load_dataset  # noqa: E402
from mmlexp.encoders import MatrixFactorization  # noqa: E402
from mmlexp.losses import MultiMarginLoss  # noqa: E402
from mmlexp.samplers import UniformSampler  # noqa: E402
from mmlexp.train import TrainSettings, make_optimizer, train_step  # noqa: E402


def mmlexp_training(users, items, n_users, n_items, num_negatives, batch_size, max_steps):
    model = MatrixFactorization(n_users, n_items).train()
    loss_fn = MultiMarginLoss()
    gen = torch.Generator().manual_seed(0)
    sampler = UniformSampler(num_negatives, n_items, generator=gen)
    optimizer = make_optimizer(model, 1e-4)
    settings = TrainSettings(batch_size=batch_size, l2=1e-8)
    order = torch.randperm(users.shape[0], generator=gen)
    seen = 0
    for step in range(max_steps):
        rows = order[step * batch_size:(step + 1) * batch_size]
        loss = train_step(model, loss_fn, sampler, optimizer, users[rows], items[rows], settings)
        seen += rows.numel()
    loss.item()
    return seen


def timed(fn, *args):
    start = time.perf_counter()
    seen = fn(*args)
    return seen / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--negatives", type=int, nargs="+", default=[100, 800])
    parser.add_argument("--batch", type=int, nargs="+", default=[256])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset("gowalla")
    users, items = (torch.from_numpy(a) for a in data.train_pairs())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus; "
          f"Gowalla {data.n_users} users x {data.n_items} items; {args.steps} steps per measurement")
    print(f"{'B':>5} {'N':>5} {'plain int/s':>12} {'mmlexp int/s':>13} {'ratio':>6}")
    for batch in args.batch:
        for n in args.negatives:
            common = (users, items, data.n_users, data.n_items, n, batch, args.steps)
            mmlexp_training(*common[:-1], 5), plain_training(*common[:-1], 5)  # warm-up
            plain, fast = [], []
            for _ in range(args.repeats):  # alternate so machine noise hits both
                plain.append(timed(plain_training, *common))
                fast.append(timed(mmlexp_training, *common))
            p, f = max(plain), max(fast)
            print(f"{batch:>5} {n:>5} {p:>12,.0f} {f:>13,.0f} {f / p:>5.2f}x")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()

"""Per-step cost of every loss in conf/loss/, relative to MML at the same number of negatives.

Two timings per (loss, N), B = 256:
  * loss only:  forward + backward of the loss on a random ``scores[B, 1+N]`` (fp32, requires grad);
  * full step:  ``mmlexp.train.train_step`` (uniform sampler, MF scores, loss, L2, clip, Adam) with
    MatrixFactorization at Gowalla's size (29,858 users x 40,981 items), random (user, item) rows.
Measurements are interleaved (one round = every loss once, in a rotated order) and the median over
rounds is reported, so load from other processes on a shared machine hits every loss alike.
Peak resident memory at the largest N is measured per loss in a fresh subprocess (a few full steps).

    python benchmarks/bench_losses.py [--negatives 100 800] [--rounds 7] [--steps 5] [--no-memory]

Losses are built from their conf/loss/<name>.yaml, so the defaults benchmarked are the configured ones.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mmlexp.encoders import MatrixFactorization
from mmlexp.optim import make_optimizer
from mmlexp.samplers import UniformSampler
from mmlexp.train import TrainSettings, train_step

CONF = Path(__file__).resolve().parents[1] / "conf" / "loss"
N_USERS, N_ITEMS = 29_858, 40_981  # Gowalla
TARGET = 1.5


def loss_names() -> list[str]:
    names = sorted(p.stem for p in CONF.glob("*.yaml"))
    return ["mml"] + [n for n in names if n != "mml"]


def build_loss(name: str) -> torch.nn.Module:
    return instantiate(OmegaConf.load(CONF / f"{name}.yaml"), _execution_whitelist_=["mmlexp.*"])


class LossOnly:
    """forward + backward of the loss alone on a fixed random score matrix."""

    def __init__(self, batch: int, n_neg: int):
        g = torch.Generator().manual_seed(0)
        self.scores = (torch.rand(batch, 1 + n_neg, generator=g) * 2.2 - 1.1).requires_grad_()
        self.users = torch.randint(N_USERS, (batch,), generator=g)

    def __call__(self, loss_fn, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self.scores.grad = None
            loss_fn(self.scores, self.users).backward()
        return (time.perf_counter() - start) / steps


class FullStep:
    """``train_step`` on MF at Gowalla size, random (user, item) rows, uniform negatives."""

    def __init__(self, batch: int, n_neg: int):
        torch.manual_seed(0)
        self.gen = torch.Generator().manual_seed(0)
        self.model = MatrixFactorization(N_USERS, N_ITEMS).train()
        self.sampler = UniformSampler(n_neg, N_ITEMS, generator=self.gen)
        self.optimizer = make_optimizer(self.model, 1e-4)
        self.settings = TrainSettings(batch_size=batch, l2=1e-8)
        self.batch = batch

    def __call__(self, loss_fn, steps: int) -> float:
        batches = [
            (
                torch.randint(N_USERS, (self.batch,), generator=self.gen),
                torch.randint(N_ITEMS, (self.batch,), generator=self.gen),
            )
            for _ in range(steps)
        ]
        start = time.perf_counter()
        for users, items in batches:
            loss = train_step(self.model, loss_fn, self.sampler, self.optimizer, users, items, self.settings)
        loss.item()
        return (time.perf_counter() - start) / steps


def interleaved(bench, losses: dict, rounds: int, steps: int) -> dict[str, float]:
    """Median seconds per step of each loss over ``rounds`` rounds, order rotated each round."""
    names = list(losses)
    for name in names:  # warm-up
        bench(losses[name], 2)
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(bench(losses[name], steps))
    return {name: statistics.median(t) for name, t in times.items()}


def memory_child(name: str, batch: int, n_neg: int, steps: int) -> None:
    bench = FullStep(batch, n_neg)
    bench(build_loss(name), steps)
    print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def peak_memory(name: str, batch: int, n_neg: int, steps: int, threads: int) -> float:
    cmd = [
        sys.executable,
        __file__,
        "--memory-child",
        name,
        "--batch",
        str(batch),
        "--negatives",
        str(n_neg),
        "--steps",
        str(steps),
        "--threads",
        str(threads),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    return json.loads(out)["peak_rss_mib"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--negatives", type=int, nargs="+", default=[100, 800])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5, help="full training steps per measurement")
    parser.add_argument("--loss-steps", type=int, default=50, help="loss-only steps per measurement")
    parser.add_argument("--losses", nargs="+", default=None, help="subset of conf/loss names (mml always kept)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-full", action="store_true", help="skip the full training step timing")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        return memory_child(args.memory_child, args.batch, args.negatives[0], args.steps)

    names = loss_names() if args.losses is None else ["mml"] + [n for n in args.losses if n != "mml"]
    losses = {name: build_loss(name) for name in names}
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus, "
        f"load avg {os.getloadavg()[0]:.2f}; B={args.batch}; median of {args.rounds} interleaved rounds "
        f"({args.loss_steps} loss-only steps / {args.steps} full steps each)"
    )
    results = {}
    for n_neg in args.negatives:
        only = interleaved(LossOnly(args.batch, n_neg), losses, args.rounds, args.loss_steps)
        full = None if args.no_full else interleaved(FullStep(args.batch, n_neg), losses, args.rounds, args.steps)
        results[n_neg] = (only, full)

    header = f"{'loss':<12} {'N':>4} {'loss ms/step':>13} {'x MML':>6}"
    if not args.no_full:
        header += f" {'full ms/step':>13} {'x MML':>6}"
    print(header)
    over = []
    for n_neg, (only, full) in results.items():
        for name in names:
            row = f"{name:<12} {n_neg:>4} {only[name] * 1e3:>13.3f} {only[name] / only['mml']:>6.2f}"
            if full is not None:
                ratio = full[name] / full["mml"]
                row += f" {full[name] * 1e3:>13.2f} {ratio:>6.2f}"
                if ratio > TARGET:
                    over.append(f"{name}@N={n_neg}")
            print(row)
    if not args.no_full:
        print(
            f"full-step target: every loss within {TARGET}x of MML -> "
            + ("met" if not over else f"NOT met for {', '.join(over)}")
        )

    if not args.no_memory:
        n_neg = max(args.negatives)
        print(f"\npeak RSS of a fresh process doing {args.steps} full steps at N={n_neg} (MF tables + Adam included)")
        print(f"{'loss':<12} {'peak MiB':>9} {'- MML':>7}")
        peaks = {name: peak_memory(name, args.batch, n_neg, args.steps, torch.get_num_threads()) for name in names}
        for name in names:
            print(f"{name:<12} {peaks[name]:>9.0f} {peaks[name] - peaks['mml']:>+7.0f}")


if __name__ == "__main__":
    main()

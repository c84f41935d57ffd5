"""Training throughput (interactions/s) and peak memory of MF + MML on Gowalla: mmlexp vs a plain loop.

Each measurement runs in a fresh subprocess (so every loop starts from the same process state and
its peak resident memory is its own); the loops alternate, ``--repeats`` times, so load from other
processes hits them alike; the best of the repeats is reported.  Loops:

  plain         benchmarks/plain_loop.py: nn.Embedding, DataLoader, autograd, Adam, as usually written
  plain+malloc  the same with ``mmlexp.allocator.keep_freed_memory()`` (shows what the allocator alone gives)
  mmlexp        ``mmlexp.train.train_step`` with its defaults (the paper's semantics)
  mmlexp:<variant>  a named fast variant (``--variants shared sparse_adam bf16``), semantics changed;
                ``deferred``: the default's semantics with deferred rows (``make_optimizer(defer=True)``)

    python benchmarks/bench_training.py [--steps 100] [--negatives 100 800] [--batch 256 1024]
                                        [--threads 1] [--repeats 3] [--variants ...] [--device cuda]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def mmlexp_training(users, items, n_users, n_items, num_negatives, batch_size, max_steps, variant="", device="cpu"):
    from mmlexp.allocator import keep_freed_memory
    from mmlexp.encoders import MatrixFactorization
    from mmlexp.losses import MultiMarginLoss
    from mmlexp.optim import make_optimizer
    from mmlexp.samplers import SharedSampler, UniformSampler
    from mmlexp.train import TrainSettings, train_step

    keep_freed_memory()
    model = MatrixFactorization(n_users, n_items).train().to(device)
    loss_fn = MultiMarginLoss()
    gen = torch.Generator(device).manual_seed(0)
    sampler_cls = SharedSampler if variant == "shared" else UniformSampler
    sampler = sampler_cls(num_negatives, n_items, generator=gen, device=device)
    users, items = users.to(device), items.to(device)
    optimizer_name = "sparse_adam" if variant == "sparse_adam" else "adam"
    optimizer = make_optimizer(model, 1e-4, optimizer_name, defer=variant == "deferred")
    settings = TrainSettings(
        batch_size=batch_size, l2=1e-8, optimizer=optimizer_name, precision="bf16" if variant == "bf16" else "fp32"
    )
    order = torch.randperm(users.shape[0], generator=gen, device=device)
    seen = 0
    for step in range(max_steps):
        rows = order[step * batch_size : (step + 1) * batch_size]
        loss = train_step(model, loss_fn, sampler, optimizer, users[rows], items[rows], settings)
        seen += rows.numel()
    loss.item()
    return seen


def worker(args) -> None:
    """One measurement in this (fresh) process: warm-up, timed steps, peak RSS; prints one JSON line."""
    from plain_loop import plain_training

    from mmlexp.data import load_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset("gowalla")
    users, items = (torch.from_numpy(a) for a in data.train_pairs())
    common = (users, items, data.n_users, data.n_items, args.negatives[0], args.batch[0])
    device = {"device": args.device}
    loop, _, variant = args.worker.partition(":")
    if loop == "plain+malloc":
        from mmlexp.allocator import keep_freed_memory

        keep_freed_memory()
    run = (
        (lambda steps: plain_training(*common, steps, **device))
        if loop.startswith("plain")
        else (lambda steps: mmlexp_training(*common, steps, variant=variant, **device))
    )
    run(5)  # warm-up
    start = time.perf_counter()
    seen = run(args.steps)
    rate = seen / (time.perf_counter() - start)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.device.startswith("cuda"):  # the device's peak, not the host's
        rss = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps({"rate": rate, "rss_mib": rss}))


def measure(loop: str, batch: int, n: int, args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        loop,
        "--batch",
        str(batch),
        "--negatives",
        str(n),
        "--steps",
        str(args.steps),
        "--device",
        args.device,
    ] + (["--threads", str(args.threads)] if args.threads else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--negatives", type=int, nargs="+", default=[100, 800])
    parser.add_argument("--batch", type=int, nargs="+", default=[256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--variants", nargs="*", default=[], choices=["shared", "sparse_adam", "bf16", "deferred"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (peak memory is then the GPU's)")
    parser.add_argument("--no-malloc-column", action="store_true", help="skip the plain+malloc loop")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    loops = (
        ["plain"]
        + ([] if args.no_malloc_column else ["plain+malloc"])
        + ["mmlexp"]
        + [f"mmlexp:{v}" for v in args.variants]
    )
    threads = args.threads or torch.get_num_threads()
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{threads} threads"
    print(
        f"torch {torch.__version__}, {args.device}: {where}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}; "
        f"MF + MML on Gowalla, {args.steps} steps per measurement, best of {args.repeats}"
    )
    print(
        f"{'B':>5} {'N':>5} "
        + " ".join(f"{loop:>17}" for loop in loops)
        + "   ratio   peak MiB (per loop; host RSS or GPU)"
    )
    for batch in args.batch:
        for n in args.negatives:
            results = {loop: [] for loop in loops}
            for r in range(args.repeats):
                for loop in loops if r % 2 == 0 else loops[::-1]:
                    results[loop].append(measure(loop, batch, n, args))
            best = {loop: max(x["rate"] for x in results[loop]) for loop in loops}
            rss = {loop: max(x["rss_mib"] for x in results[loop]) for loop in loops}
            print(
                f"{batch:>5} {n:>5} "
                + " ".join(f"{best[loop]:>13,.0f} i/s" for loop in loops)
                + f"  {best['mmlexp'] / best['plain']:>5.2f}x   "
                + " ".join(f"{rss[loop]:.0f}" for loop in loops),
                flush=True,
            )


if __name__ == "__main__":
    main()

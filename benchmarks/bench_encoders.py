"""Per-encoder training speed on Gowalla (MML, uniform N=100, B=256): ms/step, the epoch extrapolated
to its 3,165 steps, one ``all_embeddings()`` call, and the memory the encoder adds.

    MMLEXP_DATA_DIR=... python benchmarks/bench_encoders.py [--steps 50] [--threads 1] [--encoders mf simplex]

Each encoder runs in its own subprocess (a clean peak-memory reading): build (graph/histories),
``--warmup`` steps, ``--steps`` timed steps of ``mmlexp.train.train_step`` (sampling, forward, MML,
backward, L2, clipping, Adam), then one timed ``all_embeddings()``.  A whole epoch is too long to run
for every encoder on a 2-core CPU, hence the extrapolation (steps per epoch = ceil(810,128 / 256)).
On a shared machine use ``--threads 1``: two OpenMP threads competing with other processes for two
cores can make every kernel several times slower.
"""

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

ENCODERS = {
    "mf": ("MatrixFactorization", {}),
    "simplex": (
        "SimpleX",
        dict(aggregator="user_attention", gamma=0.8, net_dropout=0.1, max_history=None, share_history_table=False),
    ),  # RecZoo SimpleX_gowalla_m1
    "simplex_mean": ("SimpleX", dict(aggregator="mean", gamma=0.8, share_history_table=False)),
    "svdpp": ("SVDPlusPlus", {}),
    "lightgcn1": ("LightGCN", dict(n_layers=1)),  # the SSM setting
    "lightgcn": ("LightGCN", dict(n_layers=3)),
    "ngcf": ("NGCF", dict(n_layers=3)),
}


def run_one(name: str, steps: int, warmup: int, negatives: int, batch: int) -> dict:
    import numpy as np
    import psutil
    import torch

    import mmlexp.encoders as encoders
    from mmlexp.data import load_dataset
    from mmlexp.losses import MultiMarginLoss
    from mmlexp.optim import make_optimizer
    from mmlexp.samplers import UniformSampler
    from mmlexp.train import TrainSettings, train_step

    data = load_dataset("gowalla")
    users, items = (torch.from_numpy(a) for a in data.train_pairs())
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    torch.manual_seed(0)
    cls, kwargs = ENCODERS[name]
    t0 = time.perf_counter()
    model = getattr(encoders, cls)(data.n_users, data.n_items, train=data.train, **kwargs).train()
    build_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    sampler = UniformSampler(negatives, data.n_items, generator=gen)
    loss_fn, optimizer = MultiMarginLoss(), make_optimizer(model, 1e-4)
    settings = TrainSettings(batch_size=batch, l2=1e-8)
    order = torch.randperm(users.shape[0], generator=gen)
    history_entries = []
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        rows = order[step * batch : (step + 1) * batch]
        if name.startswith("simplex"):
            history_entries.append(int(model.history(users[rows], items[rows])[2].sum()))
        loss = train_step(model, loss_fn, sampler, optimizer, users[rows], items[rows], settings)
    loss.item()
    ms_step = (time.perf_counter() - start) / steps * 1e3
    model.eval()
    t0 = time.perf_counter()
    model.all_embeddings()
    all_emb_s = time.perf_counter() - t0
    out = {
        "encoder": name,
        "ms_step": ms_step,
        "epoch_min": ms_step * math.ceil(users.shape[0] / batch) / 6e4,
        "all_embeddings_s": all_emb_s,
        "build_s": build_s,
        "params": sum(p.numel() for p in model.parameters()),
        # process peak (ru_maxrss, KiB on Linux) minus the RSS once the data was loaded
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0 / 2**20,
    }
    if history_entries:
        counts = np.diff(data.train.indptr)
        out["history_entries_per_batch"] = float(np.mean(history_entries))
        out["longest_history"] = int(counts.max())
        # what a padded [B, L, d] float32 tensor would take at the global padded length
        out["padded_tensor_mb"] = batch * int(counts.max()) * 64 * 4 / 2**20
        out["packed_tensor_mb"] = float(np.mean(history_entries)) * 64 * 4 / 2**20
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=list(ENCODERS))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--negatives", type=int, default=100)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(run_one(args.only, args.steps, args.warmup, args.negatives, args.batch)))
        return
    import torch

    print(
        f"torch {torch.__version__}, threads {args.threads or torch.get_num_threads()}, {os.cpu_count()} cpus, "
        f"load average {os.getloadavg()[0]:.1f}; Gowalla, MML, uniform N={args.negatives}, B={args.batch}, "
        f"{args.steps} timed steps"
    )
    header = (
        f"{'encoder':<13} {'ms/step':>8} {'epoch (min)':>11} {'all_emb (s)':>11} {'build (s)':>9} "
        f"{'params':>10} {'+peak RSS MB':>12}"
    )
    print(header)
    for name in args.encoders:
        cmd = [
            sys.executable,
            __file__,
            "--only",
            name,
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--negatives",
            str(args.negatives),
            "--batch",
            str(args.batch),
        ]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        r = json.loads(line)
        print(
            f"{name:<13} {r['ms_step']:>8.1f} {r['epoch_min']:>11.1f} {r['all_embeddings_s']:>11.2f} "
            f"{r['build_s']:>9.2f} {r['params']:>10,} {r['peak_rss_mb']:>12.0f}",
            flush=True,
        )
        if "history_entries_per_batch" in r:
            print(
                f"{'':<13} history: longest {r['longest_history']}, packed entries/batch "
                f"{r['history_entries_per_batch']:.0f} ({r['packed_tensor_mb']:.1f} MB per [T, d] tensor) vs "
                f"padded [B, {r['longest_history']}, 64] {r['padded_tensor_mb']:.1f} MB",
                flush=True,
            )


if __name__ == "__main__":
    main()

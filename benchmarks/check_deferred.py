"""Deferred rows against the dense path on Gowalla: the same steps twice, then tables and moments compared.

MF + MML with the paper's settings (lr 1e-4, l2 1e-8, clip 10, init 1e-4, B=256), uniform negatives, the
same seeds for both runs; ``make_optimizer(defer=True)`` against the default (dense).  Prints the largest
difference of each table and moment (0 means bit-identical), and the deferred run's step counts:
deferred, of which with the clip acting, and dense fallbacks.

    python benchmarks/check_deferred.py [--steps 2000] [--negatives 10] [--dataset gowalla]
"""

import argparse
import time

import torch


def run(data, steps: int, negatives: int, defer: bool):
    from mmlexp import train as train_module
    from mmlexp.encoders import MatrixFactorization
    from mmlexp.losses import MultiMarginLoss
    from mmlexp.optim import make_optimizer
    from mmlexp.samplers import UniformSampler

    users, items = (torch.from_numpy(a) for a in data.train_pairs())
    torch.manual_seed(0)
    model = MatrixFactorization(data.n_users, data.n_items)
    optimizer = make_optimizer(model, 1e-4, defer=defer)
    gen = torch.Generator().manual_seed(0)
    sampler = UniformSampler(negatives, data.n_items, generator=gen)
    settings = train_module.TrainSettings(l2=1e-8, clip_grad_norm=10.0)
    start = time.perf_counter()
    order = torch.randperm(users.shape[0], generator=gen)
    for step in range(steps):
        first = (step * 256) % (users.shape[0] - 256)
        rows = order[first : first + 256]
        train_module.train_step(model, MultiMarginLoss(), sampler, optimizer, users[rows], items[rows], settings)
    optimizer.materialize()
    return model, optimizer, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--negatives", type=int, default=10)
    parser.add_argument("--dataset", default="gowalla")
    args = parser.parse_args()
    from mmlexp.data import load_dataset

    data = load_dataset(args.dataset)
    fast, fast_opt, fast_s = run(data, args.steps, args.negatives, True)
    dense, dense_opt, dense_s = run(data, args.steps, args.negatives, False)
    print(
        f"{args.dataset}, {args.steps} steps, N={args.negatives}: deferred {fast_s:.1f} s, dense {dense_s:.1f} s; "
        f"deferred/clip acting/fallback steps {fast_opt.deferred_steps}/{fast_opt.clipped_steps}/"
        f"{fast_opt.fallback_steps}"
    )
    for name in ("user_table", "item_table"):
        a, b = getattr(fast, name), getattr(dense, name)
        diffs = [(a - b).abs().max().item()] + [
            (fast_opt.state[a][key] - dense_opt.state[b][key]).abs().max().item() for key in ("exp_avg", "exp_avg_sq")
        ]
        print(
            f"{name}: max |difference| of table, m, v: "
            + ", ".join(f"{d:.3g}" for d in diffs)
            + (
                "  (bit-identical)"
                if all(
                    torch.equal(x, y)
                    for x, y in [
                        (a, b),
                        (fast_opt.state[a]["exp_avg"], dense_opt.state[b]["exp_avg"]),
                        (fast_opt.state[a]["exp_avg_sq"], dense_opt.state[b]["exp_avg_sq"]),
                    ]
                )
                else ""
            )
        )


if __name__ == "__main__":
    main()

"""Accuracy and speed of the named fast variants against the default (paper-semantics) path.

Each variant trains MF + MML on Gowalla for the same number of epochs from the same seed, in its own
``python -m mmlexp`` process, tracked in MLflow (experiment ``fast-variants``); the table compares
throughput and the best Recall@20 / NDCG@20 with the default's.

    python benchmarks/bench_variants.py [--epochs 3] [--negatives 100] [--threads 1]
                                        [--tracking-uri sqlite:///mlflow.db] [--variants ...]
"""

import argparse
import subprocess
import sys
import time

import mlflow

VARIANTS = {
    "default": [],  # per-row negatives, dense Adam, L2 on the full tables, fp32
    "shared": ["sampler=shared"],  # one set of N negatives for the whole batch
    "sparse_adam": ["trainer.optimizer=sparse_adam"],  # lazy Adam: only touched rows, L2 on them only
    "bf16": ["trainer.precision=bf16"],  # gathered rows and their dots in bfloat16
    # Not variants (the same bits as the default, whichever trainer.defer_rows=auto picks): the two exact paths
    "dense": ["trainer.defer_rows=off"],  # every row of both tables updated at every step
    "deferred": ["trainer.defer_rows=on"],  # rows a step does not read replayed when next read
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--negatives", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dataset", default="gowalla")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--experiment", default="fast-variants")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    tag = time.strftime("%Y%m%d-%H%M%S")
    for name in args.variants:
        cmd = [
            sys.executable,
            "-m",
            "mmlexp",
            f"dataset={args.dataset}",
            f"num_negatives={args.negatives}",
            f"trainer.epochs={args.epochs}",
            f"trainer.num_threads={args.threads}",
            "trainer.progress=false",
            f"tracking.uri={args.tracking_uri}",
            f"tracking.experiment={args.experiment}",
            f"tracking.run_name={name}-{tag}",
            "tracking.save_checkpoint=false",
            *VARIANTS[name],
        ]
        print("$", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    client = mlflow.MlflowClient(args.tracking_uri)
    experiment = client.get_experiment_by_name(args.experiment)
    rows = {}
    for run in client.search_runs([experiment.experiment_id], f"attributes.run_name LIKE '%-{tag}'"):
        name = run.info.run_name.rsplit("-", 2)[0]
        speed = [m.value for m in client.get_metric_history(run.info.run_id, "interactions_per_s")]
        rows[name] = (
            sum(speed) / len(speed),
            run.data.metrics["best/recall_at_20"],
            run.data.metrics["best/ndcg_at_20"],
            run.info.run_id,
        )
    base = rows.get("default")
    print(f"\n{args.dataset}, MF + MML, N={args.negatives}, {args.epochs} epochs, {args.threads} thread(s)")
    print(f"{'variant':<12} {'int/s':>9} {'speed':>6} {'Recall@20':>10} {'Δ':>8} {'NDCG@20':>9} {'Δ':>8}  run")
    for name in args.variants:
        rate, recall, ndcg, run_id = rows[name]
        rel = f"{rate / base[0]:.2f}x" if base else "-"
        d_r = f"{recall - base[1]:+.4f}" if base else "-"
        d_n = f"{ndcg - base[2]:+.4f}" if base else "-"
        print(f"{name:<12} {rate:>9,.0f} {rel:>6} {recall:>10.4f} {d_r:>8} {ndcg:>9.4f} {d_n:>8}  {run_id}")


if __name__ == "__main__":
    main()

"""Pruning on the embedded `sample` dataset: the same seeded Optuna search with and without a pruner.

    .venv/bin/python benchmarks/bench_pruning.py [--trials 20] [--epochs 10] [--pruners none,median] [-- OVERRIDES]

Runs ``python -m mmlexp -m hparams_search=mml_optuna hydra/sweeper/pruner=P`` once per pruner, each in its own
temporary directory (fresh Optuna and MLflow stores), with the same sampler seed, and prints per pruner: finished
trials (complete / pruned), epochs trained (sum over the trials' MLflow runs of their last epoch), the best value
of the study (``trainer.monitor``, recall@20) and the wall time. Extra Hydra overrides after ``--`` go to both.
Basic launcher (one trial at a time), so a pruner's decisions do not depend on timing. Numbers depend on the
machine's load.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def search(cwd: Path, pruner: str, trials: int, epochs: int, extra: list[str]) -> tuple[float, str]:
    cmd = [
        sys.executable,
        "-m",
        "mmlexp",
        "-m",
        "hparams_search=mml_optuna",
        f"hydra/sweeper/pruner={pruner}",
        f"hydra.sweeper.storage=sqlite:///{cwd}/optuna.db",
        f"hydra.sweeper.n_trials={trials}",
        f"tracking.uri=sqlite:///{cwd}/mlflow.db",
        f"tracking.artifact_location={cwd}/artifacts",
        f"trainer.epochs={epochs}",
        "trainer.progress=false",
        *extra,
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start, proc.stdout + proc.stderr


def summarise(cwd: Path) -> dict[str, object]:
    import optuna
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    study = optuna.load_study(study_name="mml_sample", storage=f"sqlite:///{cwd}/optuna.db")
    client = MlflowClient(f"sqlite:///{cwd}/mlflow.db")
    exp = client.get_experiment_by_name("mmlexp")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("sweep.role") != "parent"]
    epochs = sum(max((m.step for m in client.get_metric_history(r.info.run_id, "train_loss")), default=0) for r in runs)
    states = [t.state for t in study.trials]
    pruned_at = sorted(
        int(r.data.tags["optuna.pruned_at_epoch"]) for r in runs if "optuna.pruned_at_epoch" in r.data.tags
    )
    return {
        "complete": states.count(TrialState.COMPLETE),
        "pruned": states.count(TrialState.PRUNED),
        "epochs": epochs,
        "best": study.best_value,
        "best_trial": study.best_trial.number,
        "pruned_at": pruned_at,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--pruners", default="none,median")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for both searches (after --)")
    args = parser.parse_args()
    rows = []
    for pruner in args.pruners.split(","):
        with tempfile.TemporaryDirectory(prefix=f"bench_pruning_{pruner}_") as tmp:
            wall, _ = search(Path(tmp), pruner, args.trials, args.epochs, args.overrides)
            rows.append({"pruner": pruner, "wall_s": wall, **summarise(Path(tmp))})
            print(f"{pruner}: done in {wall:.0f} s", file=sys.stderr, flush=True)
    print(
        f"\n{args.trials} trials x {args.epochs} epochs, hparams_search=mml_optuna on sample, "
        f"overrides {' '.join(args.overrides) or '-'}; {len(os.sched_getaffinity(0))} cores\n"
    )
    print("| pruner | complete | pruned | epochs trained | best recall@20 (trial) | wall time |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['pruner']} | {r['complete']} | {r['pruned']} | {r['epochs']} | {r['best']:.4f} "
            f"({r['best_trial']}) | {r['wall_s']:.0f} s |"
        )
    for r in rows:
        if r["pruned_at"]:
            print(f"\n{r['pruner']}: trials pruned at epochs {r['pruned_at']}")


if __name__ == "__main__":
    main()

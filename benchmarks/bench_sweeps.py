"""Sweep overhead and grid wall time on the embedded `sample` dataset, through the real entrypoint.

    .venv/bin/python benchmarks/bench_sweeps.py [--trials 6] [--epochs 1] [--skip-grid] [--skip-overhead]

1. Overhead per trial with the basic launcher: an Optuna sweep of ``--trials`` tiny trials (3 steps) in one
   process. For each job after the first, overhead = (time from its launch to the next launch, or to the end of
   the sweep) - (its training + evaluation time, ``epoch_time_s + eval_time_s`` from its MLflow run): Hydra job
   setup, config, data, model, MLflow run and artifacts, Optuna ask/tell. The process start (imports, store
   creation) is reported apart, once per sweep.
2. The 6-point negatives grid ``num_negatives=10,50,100,200,400,800`` with 1 worker (basic launcher; torch's
   default threads, then one thread) and 2 workers (joblib, one torch thread each): wall time of the command.

Everything runs in a temporary directory; numbers depend on the machine's load (report the cores).
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from mlflow.tracking import MlflowClient

LAUNCH = re.compile(r"^\[(?P<t>[\d\- :,]+)\]\[HYDRA\]\s+#(?P<job>\d+) :")
DONE = re.compile(r"^\[(?P<t>[\d\- :,]+)\]\[HYDRA\] Study .*: \d+ complete trials")


def stamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def run(cwd: Path, *overrides: str) -> tuple[float, str]:
    cmd = [
        sys.executable,
        "-m",
        "mmlexp",
        "-m",
        f"tracking.uri=sqlite:///{cwd}/mlflow.db",
        f"tracking.artifact_location={cwd}/artifacts",
        "trainer.progress=false",
        *overrides,
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return wall, proc.stdout + proc.stderr


def children(cwd: Path):
    client = MlflowClient(f"sqlite:///{cwd}/mlflow.db")
    exp = client.get_experiment_by_name("mmlexp")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("sweep.role") != "parent"]
    return client, {int(r.data.tags["sweep.job_num"]): r for r in runs}


def work_seconds(client: MlflowClient, run) -> float:
    """Training + evaluation time of a run: the sum over epochs of epoch_time_s and eval_time_s."""
    return sum(
        m.value for key in ("epoch_time_s", "eval_time_s") for m in client.get_metric_history(run.info.run_id, key)
    )


def overhead(trials: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        started = time.time()
        wall, log = run(
            cwd,
            "hparams_search=mml_optuna",
            f"hydra.sweeper.n_trials={trials}",
            f"hydra.sweeper.storage=sqlite:///{cwd}/optuna.db",
            "trainer.epochs=1",
            "trainer.max_steps=3",
            "num_negatives=10",
        )
        launches = {int(m["job"]): stamp(m["t"]) for m in map(LAUNCH.match, log.splitlines()) if m}
        ended = next(stamp(m["t"]) for m in map(DONE.match, log.splitlines()) if m)  # the last trial told
        client, runs = children(cwd)
        assert sorted(launches) == sorted(runs) == list(range(trials)), (launches, list(runs))
        per_job = []
        for job in range(trials):
            until = launches.get(job + 1, ended)
            per_job.append((until - launches[job], work_seconds(client, runs[job])))
        startup = launches[0] - started
        steady = [span - work for span, work in per_job[1:]]
        print(
            f"Optuna sweep, basic launcher, {trials} trials of 3 steps on sample: wall {wall:.1f} s "
            f"(process exit after the last trial: {started + wall - ended:.1f} s)"
        )
        print(f"  process start to first launch (imports, stores, study, parent run): {startup:.2f} s")
        for job, (span, work) in enumerate(per_job):
            print(
                f"  trial {job}: {span:.2f} s, of which training+evaluation {work:.2f} s, "
                f"overhead {span - work:.2f} s{'  (first: warm-up)' if job == 0 else ''}"
            )
        print(f"  overhead per trial after the first: mean {sum(steady) / len(steady):.2f} s, max {max(steady):.2f} s")


def grid(epochs: int) -> None:
    grid_args = ["num_negatives=10,50,100,200,400,800", f"trainer.epochs={epochs}"]
    for label, extra in (
        ("1 worker (basic launcher, torch's default threads)", []),
        ("1 worker (basic launcher, trainer.num_threads=1)", ["trainer.num_threads=1"]),
        ("2 workers (joblib, n_jobs=2: 1 thread each)", ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            wall, _ = run(Path(tmp), *grid_args, *extra)
            client, runs = children(Path(tmp))
            work = sum(work_seconds(client, r) for r in runs.values())
            print(
                f"6-point negatives grid, {epochs} epoch(s) on sample, {label}: wall {wall:.1f} s "
                f"(training+evaluation summed over jobs {work:.1f} s)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=1, help="epochs per job of the negatives grid")
    parser.add_argument("--skip-grid", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    args = parser.parse_args()
    print(
        f"{len(os.sched_getaffinity(0))} cores, python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.1f}"
    )
    if not args.skip_overhead:
        overhead(args.trials)
    if not args.skip_grid:
        grid(args.epochs)


if __name__ == "__main__":
    main()

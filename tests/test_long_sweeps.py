"""Long grids through the real entrypoint, as a user meets them: `kill -9` mid-job then the same command again,
two workers on one grid, a bad point, a diverging point, a fresh start, a storage that cannot be opened."""

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.test_sweeps import mlflow_runs, read_only, store_args, sweep_cli

SLOW_POINTS = ["trainer.epochs=4", "trainer.max_steps=null", "trainer.progress=false", "trainer.num_threads=1"]


def ledger_states(tmp_path: Path) -> dict[int, str]:
    return dict(read_only(tmp_path / "optuna.db", "SELECT idx, state FROM mmlexp_grid_points"))


def start(tmp_path: Path, *overrides: str, log: str = "first.log") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mmlexp", "-m", *store_args(tmp_path), "num_negatives=10", *overrides]
    return subprocess.Popen(
        cmd,
        cwd=tmp_path,
        stdout=open(tmp_path / log, "w"),
        stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300, what: str = "") -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, f"the sweep ended before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def by_point(children) -> dict[int, list]:
    out: dict[int, list] = {}
    for run in children:
        out.setdefault(int(run.data.tags["sweep.job_num"]), []).append(run)
    return out


def test_a_grid_killed_mid_job_resumes_with_the_same_command(tmp_path):
    grid = ["trainer.lr=1e-4,2e-4,3e-4", *SLOW_POINTS]
    proc = start(tmp_path, *grid)
    checkpoint = lambda: any(tmp_path.glob("multirun/*/*/1/checkpoint.pt"))  # noqa: E731
    wait_for(lambda: ledger_states(tmp_path).get(1) == "running" and checkpoint(), proc, what="point 1's checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first_parents, first_children = mlflow_runs(tmp_path)
    first = by_point(first_children)
    assert [r.info.status for r in first[0]] == ["FINISHED"] and [r.info.status for r in first[1]] == ["RUNNING"]

    again = sweep_cli(tmp_path, "num_negatives=10", *grid)
    assert "1 finished, 2 to run" in again.stdout + again.stderr
    parents, children = mlflow_runs(tmp_path)
    assert len(parents) == 1 and parents[0].info.run_id == first_parents[0].info.run_id
    assert parents[0].info.status == "FINISHED"
    points = by_point(children)
    assert sorted(points) == [0, 1, 2]
    for idx, runs in points.items():
        assert [r.info.status for r in runs] == ["FINISHED"], (idx, [r.info.status for r in runs])
    assert points[0][0].info.run_id == first[0][0].info.run_id  # not trained again
    resumed = points[1][0]
    assert resumed.info.run_id == first[1][0].info.run_id  # the interrupted run continued, not a second run
    assert int(resumed.data.tags["resumed_at_epoch"]) >= 1
    assert resumed.data.metrics["best_epoch"] >= 1 and resumed.data.metrics["epoch"] == 4
    assert ledger_states(tmp_path) == {0: "finished", 1: "finished", 2: "finished"}


def test_a_bad_point_is_refused_before_anything_is_written(tmp_path):
    proc = sweep_cli(tmp_path, "num_negatives=10,0,10", check=False)
    assert proc.returncode == 2
    assert "grid point 1 of 3 (" in proc.stderr and "num_negatives=0: must be an integer >= 1" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no multirun/, no MLflow store, no ledger


def test_an_unknown_key_in_one_point_names_that_point(tmp_path):
    proc = sweep_cli(tmp_path, "num_negatives=10,20", "trainer.nonsense=1,2", check=False)
    assert proc.returncode == 2 and "grid point 0 of 4" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "multirun").exists()


def test_a_diverging_point_fails_alone_and_the_grid_carries_on(tmp_path):
    proc = sweep_cli(
        tmp_path, "trainer.lr=1e-3,1e30,1e-3", "encoder.similarity=dot", "loss=mse", "trainer.log_every=1", check=False
    )
    assert proc.returncode == 1
    assert "1 of 3 grid points failed" in proc.stderr and "diverged at epoch 1, step" in proc.stderr
    (parent,), children = mlflow_runs(tmp_path)
    points = by_point(children)
    assert [points[i][0].info.status for i in range(3)] == ["FINISHED", "FAILED", "FINISHED"]
    failure = points[1][0].data.tags["failure"]
    assert failure.startswith("diverged at epoch 1, step ") and "loss" in failure
    assert parent.info.status == "FAILED"
    assert ledger_states(tmp_path) == {0: "finished", 1: "failed", 2: "finished"}


def test_two_workers_split_one_grid_and_run_every_point_once(tmp_path):
    grid = [
        "trainer.lr=1e-4,2e-4,3e-4,4e-4",
        "trainer.epochs=2",
        "trainer.max_steps=null",
        "trainer.progress=false",
        "trainer.num_threads=1",
        "hydra.sweeper.poll_interval=0.5",
    ]
    workers = [start(tmp_path, *grid, log=f"worker{i}.log") for i in range(2)]
    for w in workers:
        assert w.wait(timeout=600) == 0, (tmp_path / "worker0.log").read_text()[-3000:]
    parents, children = mlflow_runs(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    points = by_point(children)
    assert sorted(points) == [0, 1, 2, 3] and all(len(runs) == 1 for runs in points.values())
    assert {r.info.status for r in children} == {"FINISHED"}
    assert len({r.data.tags["mmlexp.pid"] for r in children}) == 2  # both workers ran points
    with contextlib.closing(sqlite3.connect(tmp_path / "optuna.db")) as db:
        assert db.execute("SELECT DISTINCT attempts FROM mmlexp_grid_points").fetchall() == [(1,)]


def test_fresh_runs_the_grid_again_under_a_new_parent(tmp_path):
    sweep_cli(tmp_path, "num_negatives=10,20")
    again = sweep_cli(tmp_path, "num_negatives=10,20")
    assert "2 finished, 0 to run" in again.stdout + again.stderr
    sweep_cli(tmp_path, "num_negatives=10,20", "hydra.sweeper.fresh=true")
    parents, children = mlflow_runs(tmp_path)
    assert len(parents) == 2 and len(children) == 4


def test_a_grid_storage_that_cannot_be_opened_is_refused(tmp_path):
    (tmp_path / "file").write_text("")
    proc = sweep_cli(
        tmp_path, "num_negatives=10,20", f"hydra.sweeper.storage=sqlite:///{tmp_path}/file/x.db", check=False
    )
    assert proc.returncode == 2 and "cannot open the grid ledger" in proc.stderr
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "mlflow.db").exists()

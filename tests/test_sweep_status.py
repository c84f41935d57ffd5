"""`python -m mmlexp.sweep.status`: a real grid killed mid-point, then finished, read back against the ledger and
the MLflow store queried here with sqlite3; stores that are missing or hold no ledger are clear errors."""

import contextlib
import signal
import sqlite3
import statistics
import subprocess
import sys
from pathlib import Path

from mmlexp.sweep.status import main, tracking_uri_of
from tests.test_long_sweeps import SLOW_POINTS, ledger_states, start, wait_for
from tests.test_sweeps import read_only, sweep_cli

GRID = ["trainer.lr=1e-4,2e-4", *SLOW_POINTS]


def logged(tmp_path: Path, point: int, key: str) -> dict[int, float]:
    """step -> value of ``key`` for the run of grid point ``point``, straight from MLflow's tables."""
    rows = read_only(
        tmp_path / "mlflow.db",
        "SELECT m.step, m.value FROM metrics m JOIN tags t ON t.run_uuid = m.run_uuid "
        f"WHERE t.key = 'grid.point' AND t.value = '{point}' AND m.key = '{key}'",
    )
    return dict(rows)


def status(tmp_path: Path, capsys) -> str:
    assert main(["--storage", f"sqlite:///{tmp_path}/optuna.db"]) == 0
    return capsys.readouterr().out


def test_a_killed_then_finished_grid(tmp_path, capsys):
    proc = start(tmp_path, *GRID)
    wait_for(
        lambda: ledger_states(tmp_path).get(0) == "running" and len(logged(tmp_path, 0, "epoch_time_s")) >= 2,
        proc,
        what="two epochs of point 0",
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = status(tmp_path, capsys)
    lines = {line.split()[0]: line for line in out.splitlines() if line.lstrip().startswith("#")}
    epochs = logged(tmp_path, 0, "epoch_time_s")
    evals = logged(tmp_path, 0, "eval_time_s")
    pace = statistics.median(epochs[e] + evals.get(e, 0.0) for e in sorted(epochs)[-5:])
    zero, one = lines["#0"], lines["#1"]
    assert "trainer.lr=0.0001" in zero and "stalled (worker gone" in zero
    assert f"epoch {max(epochs)}/4" in zero and f"{pace:.1f} s/epoch" in zero
    assert f"about {(4 - max(epochs)) * pace:.0f} s left" in zero
    assert "trainer.lr=0.0002" in one and "pending" in one and "epoch" not in one
    assert "2 points: 1 pending, 1 running" in out and "python -m mmlexp -m" in out

    sweep_cli(tmp_path, "num_negatives=10", *GRID)  # the same command resumes and finishes the grid
    out = status(tmp_path, capsys)
    assert ledger_states(tmp_path) == {0: "finished", 1: "finished"}
    assert out.count("finished  epoch 4/4") == 2 and "2 points: 2 finished" in out and "left" not in out


def test_missing_or_foreign_storage_is_a_clear_error_and_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "nope.db"
    assert main(["--storage", f"sqlite:///{missing}"]) == 2
    assert f"{missing}" in capsys.readouterr().err and not missing.exists()
    other = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(other)) as db:
        db.execute("CREATE TABLE t (x)")
    assert main(["--storage", f"sqlite:///{other}"]) == 2
    assert "holds no grid ledger" in capsys.readouterr().err
    assert read_only(other, "SELECT name FROM sqlite_master") == [("t",)]  # nothing added


def test_tracking_uri_is_read_from_escaped_overrides_and_the_cli_runs():
    assert tracking_uri_of(["loss=mml", "tracking.uri=sqlite\\:////w/mlflow.db"]) == "sqlite:////w/mlflow.db"
    assert tracking_uri_of(["loss=mml"]) is None
    proc = subprocess.run(
        [sys.executable, "-m", "mmlexp.sweep.status", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "--storage" in proc.stdout

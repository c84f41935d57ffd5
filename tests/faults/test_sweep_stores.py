"""The sweeps' tracking store (issue 31, loose ends of items 4-5): a grid or a search checks its MLflow store before
it writes anything (``sweep.parent.open_parent`` -> ``tracking.check_store``: exit 2 naming the URI), and closes the
RUNNING runs of dead processes with the setting ``tracking.stale_after_s``, as a single run does."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from mmlexp.sweep import SweepError, open_parent
from mmlexp.sweep.parent import stale_after_s
from mmlexp.tracking import HEARTBEAT_TAG, HOST_TAG, KILLED_TAG, PID_TAG, STALE_AFTER_S
from tests.test_sweeps import TINY, optuna_args


def sweep_cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``python -m mmlexp -m`` in ``tmp_path`` with tiny settings (the tracking store among ``overrides``)."""
    cmd = [sys.executable, "-m", "mmlexp", "-m", f"tracking.artifact_location={tmp_path}/artifacts", *TINY, *overrides]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def config(uri: str, **tracking) -> OmegaConf:
    return OmegaConf.create({"tracking": {"enabled": True, "uri": uri, "experiment": "mmlexp", **tracking}})


def test_open_parent_refuses_a_store_that_is_not_a_database_and_writes_nothing(tmp_path):
    store = tmp_path / "store.db"
    store.write_text("id,name\n1,not a database\n")
    with pytest.raises(SweepError, match=rf"tracking.uri=sqlite:///{store}: {store} is not an SQLite database"):
        open_parent(config(f"sqlite:///{store}"), tmp_path / "sweep", name="n", sweep_id="s", kind="grid", params={})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.db"]


def test_stale_after_s_is_the_tracking_setting():
    assert stale_after_s(config("sqlite:///x.db", stale_after_s=123)) == 123.0
    assert stale_after_s(OmegaConf.create({})) == STALE_AFTER_S  # a config without the key: the default


@pytest.mark.parametrize("kind", ["grid", "optuna"])
def test_a_sweep_with_an_unusable_store_exits_2_before_writing(tmp_path, kind):
    store = tmp_path / "store.db"
    store.write_bytes(b"SQLite format 3\x00" + b"\x07" * 200)  # a header, then garbage
    extra = optuna_args(tmp_path, 1) if kind == "optuna" else ["num_negatives=10,20"]
    proc = sweep_cli(tmp_path, *extra, f"tracking.uri=sqlite:///{store}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"mmlexp: error: tracking.uri=sqlite:///{store}: {store} cannot be read" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.db"]  # no ledger, no study, no multirun/


def other_host_run(client: MlflowClient, experiment_id: str, silent_s: float) -> str:
    """A RUNNING run of another host whose last heartbeat was ``silent_s`` seconds ago."""
    tags = {HOST_TAG: f"not-{socket.gethostname()}", PID_TAG: "1", HEARTBEAT_TAG: f"{time.time() - silent_s:.0f}"}
    return client.create_run(experiment_id, tags=tags).info.run_id


@pytest.mark.parametrize("kind", ["grid", "optuna"])
def test_a_sweep_closes_other_hosts_runs_after_tracking_stale_after_s(tmp_path, kind):
    """Runs silent for 400 s and 40 s; ``tracking.stale_after_s=200``: the sweep closes the first, before any job
    runs (the only point or trial fails loading its data, before its own run would close anything)."""
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("mmlexp", artifact_location=(tmp_path / "artifacts").as_uri())
    old, recent = other_host_run(client, experiment, 400), other_host_run(client, experiment, 40)
    missing = ["dataset=interactions", f"dataset.path={tmp_path}/missing.csv"]
    extra = optuna_args(tmp_path, 1) if kind == "optuna" else ["num_negatives=10,20"]
    uri = f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"
    proc = sweep_cli(tmp_path, *extra, *missing, uri, "tracking.stale_after_s=200")
    assert proc.returncode == 1, proc.stderr[-3000:]  # the job failed; the sweep itself ran
    assert client.get_run(old).info.status == "KILLED"
    assert "grace 200 s" in client.get_run(old).data.tags[KILLED_TAG]
    assert client.get_run(recent).info.status == "RUNNING"
    assert not Path(tmp_path / "missing.csv").exists()

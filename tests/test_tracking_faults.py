"""Tracking that fails fast and clearly (issue 31): a store that cannot be used stops the run before training with
a message naming its URI (password masked) and nothing written; a store that fails mid-run does not stop training,
and what it could not take is kept in the run directory and can be sent later; the other-host staleness limit is
the setting ``tracking.stale_after_s``."""

import os
import socket
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mmlexp import tracking
from mmlexp.checkpoint import BEST_FILE, CHECKPOINT_FILE
from mmlexp.config import ConfigError
from mmlexp.run import train
from mmlexp.tracking import BUFFER_FILE, StoreError, check_store, masked, replay_buffer

TINY = ["num_negatives=10", "trainer.batch_size=8192", "trainer.num_threads=1"]
HTTP_VARS = ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR")


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once it is closed


@pytest.fixture
def own_http_env(monkeypatch):
    """The MLflow HTTP variables a check sets, restored afterwards."""
    for name in HTTP_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(tracking, "_OWN_ENV", set())


@pytest.mark.parametrize(
    "content, says",
    [
        (b"id,name\n1,not a database\n", "is not an SQLite database"),
        (b"SQLite format 3\x00" + b"\x07" * 200, "cannot be read as an SQLite database"),  # a header, then garbage
    ],
    ids=["text", "corrupt"],
)
def test_a_file_that_is_not_a_database_stops_the_run_with_nothing_written(
    make_cfg, tmp_path, monkeypatch, content, says
):
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "store.db"
    store.write_bytes(content)
    cfg = make_cfg(f"tracking.uri=sqlite:///{store}", *TINY)
    with pytest.raises(StoreError, match=says) as err:
        train(cfg)
    assert f"tracking.uri=sqlite:///{store}" in str(err.value)
    assert isinstance(err.value, ConfigError)  # the entrypoint's exit 2
    assert store.read_bytes() == content
    assert files(tmp_path) == ["store.db"]  # no lock file, no run directory


def test_a_server_that_does_not_answer_stops_the_run_within_the_timeout(make_cfg, tmp_path, monkeypatch, own_http_env):
    monkeypatch.chdir(tmp_path)
    uri = f"http://alice:s3cret@127.0.0.1:{closed_port()}"
    cfg = make_cfg(f"tracking.uri={uri}", "tracking.timeout=2", *TINY)
    start = time.monotonic()
    with pytest.raises(StoreError) as err:
        train(cfg)
    assert time.monotonic() - start < 15
    message = str(err.value)
    assert "s3cret" not in message and "alice:***@127.0.0.1" in message, message
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "2"  # MLflow's own requests bounded by tracking.timeout
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == str(tracking.HTTP_RETRIES)
    assert files(tmp_path) == []


def test_http_bounds_keep_what_the_user_set(monkeypatch, own_http_env):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")
    tracking.bound_http_retries(2.5)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "3"


def test_passwords_are_masked():
    assert masked("postgresql://bob:pw@db:5432/mlflow") == "postgresql://bob:***@db:5432/mlflow"
    assert masked("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert masked("sqlite:///mlflow.db") == "sqlite:///mlflow.db"


@pytest.mark.skipif(
    os.geteuid() == 0 and os.access("/proc/sys", os.W_OK),
    reason="running as root (chmod does not stop writes) and /proc/sys is not a read-only mount here",
)
def test_a_store_folder_without_write_permission_stops_the_run(make_cfg, tmp_path, monkeypatch):
    """A folder made read-only (chmod) when not root; as root (chmod does not stop root) a read-only mount."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
    else:
        folder = Path("/proc/sys")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{folder}/sub/mlflow.db"
    try:
        with pytest.raises(StoreError, match=f"cannot create {folder}/sub/mlflow.db: no write permission on {folder}"):
            train(make_cfg(f"tracking.uri={uri}", *TINY))
    finally:
        if folder.is_relative_to(tmp_path):
            folder.chmod(0o755)
    assert [f for f in files(tmp_path) if f != "ro"] == []


def test_an_existing_store_without_write_permission_is_refused(tmp_path, monkeypatch):
    """The store file is a database but may not be written (access(2) as seen by a non-root user)."""
    store = tmp_path / "mlflow.db"
    check_store(f"sqlite:///{store}")  # a store to create: fine
    import sqlite3

    sqlite3.connect(store).close()  # an empty database file
    real_access = os.access
    monkeypatch.setattr(tracking.os, "access", lambda p, mode: False if mode & os.W_OK else real_access(p, mode))
    with pytest.raises(StoreError, match=f"no write permission on {store}"):
        check_store(f"sqlite:///{store}")


class StoreDown:
    """Patches ``MlflowClient`` so every write fails while ``down(epoch)`` holds for the epoch the run is logging
    (the latest ``Tracker.log_metrics`` step)."""

    def __init__(self, monkeypatch, down):
        self.down, self.epoch, self.failed = down, 0, 0
        for name in ("log_batch", "log_text", "log_artifact", "set_terminated"):
            monkeypatch.setattr(MlflowClient, name, self._wrap(getattr(MlflowClient, name)))
        log_metrics = tracking.Tracker.log_metrics

        def logged(tracker, metrics, step):
            self.epoch = max(self.epoch, step)  # the store goes down (or comes back) as the run reaches an epoch
            return log_metrics(tracker, metrics, step)

        monkeypatch.setattr(tracking.Tracker, "log_metrics", logged)

    def _wrap(self, real):
        def call(client, run_id, *args, **kwargs):
            if self.down(self.epoch):
                self.failed += 1
                raise ConnectionError("simulated: the tracking store went away")
            return real(client, run_id, *args, **kwargs)

        return call


def run_dir_of(tmp_path: Path) -> Path:
    (found,) = [p.parent for p in (tmp_path / "outputs").rglob(CHECKPOINT_FILE)]
    return found


def history(uri: str, key: str) -> list[int]:
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("mmlexp").experiment_id])
    return [m.step for m in client.get_metric_history(run.info.run_id, key)]


def test_a_store_down_after_epoch_1_keeps_training_and_buffers_to_the_run_directory(make_cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    store = StoreDown(monkeypatch, down=lambda epoch: epoch >= 2)
    best = train(make_cfg("trainer.epochs=3", *TINY))
    assert best > 0 and store.failed > 0
    run_dir = run_dir_of(tmp_path)
    assert (run_dir / CHECKPOINT_FILE).exists() and (run_dir / BEST_FILE).exists()
    buffer = run_dir / BUFFER_FILE
    assert buffer.exists()
    text = buffer.read_text()
    for what in ('"step": 2', '"step": 3', "best/recall_at_20", '"op": "terminate"', '"status": "FINISHED"'):
        assert what in text, what
    monkeypatch.undo()  # the store is back
    monkeypatch.chdir(tmp_path)
    assert history(uri, "recall_at_20") == [1]
    assert replay_buffer(buffer, uri) > 0 and not buffer.exists()
    assert history(uri, "recall_at_20") == [1, 2, 3]
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("mmlexp").experiment_id])
    assert run.info.status == "FINISHED" and "best/recall_at_20" in run.data.metrics


def test_a_store_down_for_one_epoch_gets_its_buffer_with_the_next(make_cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    StoreDown(monkeypatch, down=lambda epoch: epoch == 2)
    train(make_cfg("trainer.epochs=3", *TINY))
    assert not (run_dir_of(tmp_path) / BUFFER_FILE).exists()  # sent once the store answered again
    assert history(uri, "recall_at_20") == [1, 2, 3]


def test_stale_after_s_is_the_setting_closing_other_hosts_runs(make_cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seen: list[float] = []
    real = tracking.Tracker.close_dead_runs
    monkeypatch.setattr(
        tracking.Tracker, "close_dead_runs", lambda self, grace_s: seen.append(grace_s) or real(self, grace_s)
    )
    train(make_cfg("tracking.stale_after_s=123", "trainer.epochs=1", "trainer.max_steps=1", *TINY))
    assert seen == [123]
    assert tracking.dead_reason({"mmlexp.host": "elsewhere", "mmlexp.pid": "1", "mmlexp.heartbeat": "0"}, 200, 123)


@pytest.mark.parametrize("key", ["tracking.stale_after_s", "tracking.timeout"])
def test_tracking_durations_must_be_positive(make_cfg, key):
    with pytest.raises(ConfigError, match=f"{key}=0: must be a number > 0"):
        train(make_cfg(f"{key}=0"))

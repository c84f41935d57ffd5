"""MLflow run lifecycle: one MLflow run per training run, never left RUNNING.

Every run carries liveness tags: ``mmlexp.host``, ``mmlexp.pid``, ``mmlexp.pid_started`` and a
``mmlexp.heartbeat`` (unix seconds) refreshed every ``HEARTBEAT_S`` by a thread while the run is open.
``close_dead_runs`` (at the start of every run and sweep) marks KILLED, with a ``mmlexp.killed`` tag saying
why, the RUNNING runs whose process is gone: a dead pid on this host, or elsewhere no heartbeat for
``grace_s`` seconds.

Metric names use ``_at_`` (``recall_at_20``): MLflow rejects ``@``.  MLflow is imported only when
tracking is on, so ``tracking.enabled=false`` runs where it is not installed (a bare GPU machine).
"""

import contextlib
import logging
import math
import os
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MAX_PARAM_LENGTH = 6000
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0  # another host's run without a heartbeat for this long is dead
HOST_TAG, PID_TAG, PID_STARTED_TAG, HEARTBEAT_TAG, KILLED_TAG = (
    "mmlexp.host",
    "mmlexp.pid",
    "mmlexp.pid_started",
    "mmlexp.heartbeat",
    "mmlexp.killed",
)

log = logging.getLogger("mmlexp")


def alive_since(pid, started: float | None) -> bool:
    """Is process ``pid`` running and no younger than ``started`` (unix seconds; a reused pid is younger)?"""
    import psutil

    try:
        proc = psutil.Process(int(pid))
        return started is None or proc.create_time() <= float(started) + 1
    except (psutil.Error, TypeError, ValueError):
        return False


def liveness_tags() -> dict[str, str]:
    import psutil

    return {
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(os.getpid()),
        PID_STARTED_TAG: f"{psutil.Process().create_time():.3f}",
        HEARTBEAT_TAG: f"{time.time():.0f}",
    }


def dead_reason(tags: Mapping[str, str], now: float, grace_s: float = STALE_AFTER_S) -> str | None:
    """Why the process behind a RUNNING run with these tags is dead; None if it may be alive.
    Runs without liveness tags (another tool's) are left alone."""
    host, pid = tags.get(HOST_TAG), tags.get(PID_TAG)
    if host is None or pid is None:
        return None
    if host == socket.gethostname():
        started = tags.get(PID_STARTED_TAG)
        if not alive_since(pid, None if started is None else float(started)):
            return f"process {pid} on {host} is gone"
        return None
    beat = float(tags.get(HEARTBEAT_TAG) or 0)
    if now - beat > grace_s:
        return f"no heartbeat from {host} (pid {pid}) for {now - beat:.0f} s (grace {grace_s:.0f} s)"
    return None


def close_dead_runs(client, grace_s: float = STALE_AFTER_S) -> list[str]:
    """Mark KILLED every RUNNING run of the store whose process is dead (``dead_reason``); returns their ids."""
    from mlflow.entities import RunTag, ViewType

    closed: list[str] = []
    now = time.time()
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    if not experiments:
        return closed
    for run in client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'", max_results=5000):
        reason = dead_reason(run.data.tags, now, grace_s)
        if reason is None:
            continue
        with contextlib.suppress(Exception):
            client.log_batch(
                run.info.run_id,
                tags=[RunTag(KILLED_TAG, f"left RUNNING: {reason}; closed by pid {os.getpid()} at {time.ctime(now)}")],
            )
            client.set_terminated(run.info.run_id, status="KILLED")
            closed.append(run.info.run_id)
            log.warning(
                f"MLflow run {run.info.run_id} ({run.info.run_name}) was left RUNNING ({reason}): marked KILLED"
            )
    return closed


def mlflow_key(name: str) -> str:
    """``recall@20`` -> ``recall_at_20`` (MLflow refuses ``@`` in metric names)."""
    return name.replace("@", "_at_")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"trainer.lr": "0.0001", ...}`` (lists kept as their repr)."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:MAX_PARAM_LENGTH]
    return out


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _sqlite_parent(uri: str) -> None:
    """Create the folder of a ``sqlite:///path`` store so a first run just works."""
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def _store_lock(uri: str):
    """An exclusive lock on ``<db>.lock`` beside a ``sqlite:///`` store while it is opened (POSIX; a no-op
    for other stores, whose servers serialise their own migrations)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    path = Path(uri[len("sqlite:///") :]).expanduser().resolve()
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class Tracker:
    """Thin wrapper over ``MlflowClient`` for one run. ``enabled=False`` turns every call into a no-op."""

    def __init__(self, uri: str, experiment: str, artifact_location: str | None = None, enabled: bool = True):
        self.enabled = enabled
        self.run_id: str = ""  # set by start() or reopen()
        self._beat_stop: threading.Event | None = None
        if not enabled:
            return
        from mlflow.tracking import MlflowClient

        _sqlite_parent(uri)
        self.uri = uri
        with _store_lock(uri):  # processes that open a new SQLite store at once would race to create its tables
            self.client = MlflowClient(tracking_uri=uri)
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                location = Path(artifact_location).resolve().as_uri() if artifact_location else None
                try:
                    self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
                except Exception:  # created by a parallel job in between
                    found = self.client.get_experiment_by_name(experiment)
                    if found is None:
                        raise
                    self.experiment_id = found.experiment_id
            else:
                self.experiment_id = exp.experiment_id

    def close_dead_runs(self, grace_s: float = STALE_AFTER_S) -> list[str]:
        """``close_dead_runs`` on this store (a no-op without tracking)."""
        return close_dead_runs(self.client, grace_s) if self.enabled else []

    def _start_heartbeat(self) -> None:
        stop, client, run_id = threading.Event(), self.client, self.run_id

        def beat():
            from mlflow.entities import RunTag

            while not stop.wait(HEARTBEAT_S):
                with contextlib.suppress(Exception):
                    client.log_batch(run_id, tags=[RunTag(HEARTBEAT_TAG, f"{time.time():.0f}")])

        self._beat_stop = stop
        threading.Thread(target=beat, name="mlflow-heartbeat", daemon=True).start()

    def start(self, run_name: str, params: Mapping[str, str], tags: Mapping[str, str]) -> str | None:
        if not self.enabled:
            return None
        tags = {**tags, **liveness_tags()}
        run = self.client.create_run(
            self.experiment_id, run_name=run_name, tags={k: str(v) for k, v in tags.items() if v is not None}
        )
        self.run_id = run.info.run_id
        self._start_heartbeat()
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100], synchronous=True)
        return self.run_id

    def reopen(self, run_id: str) -> bool:
        """Continue an existing run of this experiment (a resumed sweep's parent): RUNNING again.
        False when the run is not in this store and experiment."""
        if not self.enabled:
            return False
        try:
            run = self.client.get_run(run_id)
        except Exception:
            return False
        if run.info.experiment_id != self.experiment_id or run.info.lifecycle_stage != "active":
            return False
        self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        self.set_tags(liveness_tags())
        self._start_heartbeat()
        return True

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(mlflow_key(k), float(v), now, step)
            for k, v in metrics.items()
            if v is not None and math.isfinite(float(v))
        ]
        self.client.log_batch(self.run_id, metrics=batch, synchronous=True)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.enabled:
            from mlflow.entities import RunTag

            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_text(self, text: str, name: str) -> None:
        if self.enabled:
            self.client.log_text(self.run_id, text, name)

    def log_artifact(self, path: str | os.PathLike) -> None:
        if self.enabled:
            self.client.log_artifact(self.run_id, str(path))

    def stop_heartbeat(self) -> None:
        if self._beat_stop is not None:
            self._beat_stop.set()

    def finish(self, status: str = "FINISHED") -> None:
        """End the run as FINISHED, FAILED or KILLED."""
        self.stop_heartbeat()
        if self.enabled and self.run_id:
            self.client.set_terminated(self.run_id, status=status)

    @property
    def where(self) -> str:
        if not self.enabled:
            return "nowhere (tracking.enabled=false)"
        return f"{self.uri} (experiment id {self.experiment_id}, run id {self.run_id})"

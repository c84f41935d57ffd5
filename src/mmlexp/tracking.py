"""MLflow run lifecycle: one MLflow run per training run, never left RUNNING.

Every run carries liveness tags: ``mmlexp.host``, ``mmlexp.pid``, ``mmlexp.pid_started`` and a
``mmlexp.heartbeat`` (unix seconds) refreshed every ``HEARTBEAT_S`` by a thread while the run is open.
``close_dead_runs`` (at the start of every run and sweep) marks KILLED, with a ``mmlexp.killed`` tag saying
why, the RUNNING runs whose process is gone: a dead pid on this host, or elsewhere no heartbeat for
``grace_s`` seconds.

Before a run, ``check_store`` refuses (``StoreError``, exit 2) a store that cannot be used: an SQLite file that is
not a database, unreadable or without write permission, a server or database that does not answer within
``tracking.timeout`` seconds (MLflow's HTTP timeout and retries are bounded by it too), each named by its URI with
any password masked.  During a run a failing store does not stop training: ``Tracker`` buffers what it could not
log, sends it with the next call once the store answers, and keeps it in ``<run dir>/tracking_buffer.jsonl``
while the store is down (``replay_buffer`` sends that file later).

A reopened training run (``Tracker.reopen``: a resumed run) does not log a metric again at a step the store already
holds for it: a run killed after logging epoch k but before its checkpoint trains epoch k again (bit-identical) and
would log it twice.  Sweep parents, which log summaries at one step again and again, are left as they were.

Metric names use ``_at_`` (``recall_at_20``): MLflow rejects ``@``.  MLflow is imported only when
tracking is on, so ``tracking.enabled=false`` runs where it is not installed (a bare GPU machine).
"""

import contextlib
import json
import logging
import math
import os
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from mmlexp import faults
from mmlexp.config import ConfigError

MAX_PARAM_LENGTH = 6000
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0  # another host's run without a heartbeat this long is dead (tracking.stale_after_s)
DEFAULT_TIMEOUT_S = 10.0  # default of tracking.timeout
HTTP_RETRIES = 2  # MLflow's HTTP retries per request (MLFLOW_HTTP_REQUEST_MAX_RETRIES) unless set in the environment
BUFFER_FILE = "tracking_buffer.jsonl"  # in the run directory: what a failing store could not take
SQLITE_HEADER = b"SQLite format 3\x00"
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
    path = sqlite_path(uri)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


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


class StoreError(ConfigError):
    """The tracking store cannot be used (exit 2 before training, like a bad config value)."""


def masked(uri: str) -> str:
    """``uri`` with the password of its ``user:password@`` part replaced by ``***``."""
    try:
        parts = urlsplit(uri)
        password = parts.password
    except ValueError:
        return uri
    if not password:
        return uri
    user, host = parts.netloc.rsplit("@", 1)[0].split(":", 1)[0], parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _scrubbed(text: str, uri: str) -> str:
    """``text`` (an error) without the URI's password; its first line only."""
    with contextlib.suppress(ValueError):
        if password := urlsplit(uri).password:
            text = text.replace(password, "***")
    return (text.strip().splitlines() or ["?"])[0][:500]


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///path`` store (relative to the working directory), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :].split("?", 1)[0]).expanduser().resolve()


_OWN_ENV: set[str] = set()


def bound_http_retries(timeout: float) -> None:
    """Bound MLflow's HTTP requests by ``timeout`` s each, ``HTTP_RETRIES`` retries with a short backoff (MLflow's
    defaults retry for minutes); variables the user set in the environment are kept."""
    wanted = {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(timeout))),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(HTTP_RETRIES),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    }
    for name, value in wanted.items():
        if name not in os.environ or name in _OWN_ENV:
            os.environ[name] = value
            _OWN_ENV.add(name)


def _within(timeout: float, fn: Callable[[], Any]) -> tuple[bool, BaseException | None]:
    """Run ``fn`` in a daemon thread: (finished in time, its error)."""
    box: dict[str, BaseException] = {}

    def target() -> None:
        try:
            fn()
        except BaseException as err:  # handed to the caller
            box["err"] = err

    thread = threading.Thread(target=target, name="mlflow-store-check", daemon=True)
    thread.start()
    thread.join(timeout)
    return not thread.is_alive(), box.get("err")


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_sqlite_file(uri: str, path: Path, timeout: float) -> None:
    """An existing SQLite store: readable, a database, not locked past ``timeout``; opened read-only."""
    name = f"tracking.uri={masked(uri)}"
    if path.is_dir():
        raise StoreError(f"{name}: {path} is a directory, not an SQLite database file")
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except OSError as err:
        raise StoreError(f"{name}: cannot read {path} ({err.strerror or err})") from err
    if head and head != SQLITE_HEADER:  # an empty file is a new database to SQLite
        raise StoreError(f"{name}: {path} is not an SQLite database (it starts with {head[:16]!r}); use another file")
    try:
        con = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=timeout)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            con.close()
    except sqlite3.Error as err:
        if "locked" in str(err):
            raise StoreError(
                f"{name}: {path} is locked by another process ({err}, waited tracking.timeout={timeout} s); "
                "let it finish, or raise tracking.timeout"
            ) from err
        raise StoreError(f"{name}: {path} cannot be read as an SQLite database ({err})") from err


def _check_writable(uri: str, path: Path, beside: bool = True) -> None:
    """The store (and its folder with ``beside``: SQLite writes a journal there), or the folder to create it in,
    can be written."""
    name = f"tracking.uri={masked(uri)}"
    if path.exists():
        for target in (path, path.parent) if beside else (path,):
            if not os.access(target, os.W_OK):
                raise StoreError(f"{name}: no write permission on {target}")
        return
    base = _nearest_existing(path.parent)
    if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
        raise StoreError(f"{name}: cannot create {path}: no write permission on {base}")


def _probe(uri: str) -> Callable[[], Any]:
    """A read-only call that needs the store: a query on a database URI, else a search through MLflow."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme in ("postgresql", "postgres", "mysql", "mssql"):

        def query() -> None:
            import sqlalchemy as sa

            engine = sa.create_engine(uri)
            try:
                with engine.connect() as con:
                    con.execute(sa.text("SELECT 1"))
            finally:
                engine.dispose()

        return query

    def search() -> None:
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)

    return search


def check_store(uri: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
    """Raise ``StoreError`` when the tracking store ``uri`` cannot be used; writes nothing.

    SQLite: the file is a readable database (or can be created) with write permission. A server or database:
    it answers a read within ``timeout`` s. Also bounds MLflow's HTTP timeout and retries by ``timeout``."""
    if uri.startswith(("http://", "https://", "databricks")):
        bound_http_retries(timeout)
    path = sqlite_path(uri)
    if path is not None:
        if path.exists():
            _check_sqlite_file(uri, path, timeout)
        _check_writable(uri, path)
        return
    if "://" not in uri or uri.startswith("file:"):  # a local folder (MLflow's file store)
        _check_writable(uri, Path(uri.removeprefix("file://")).expanduser().resolve(), beside=False)
        return
    done, err = _within(timeout, _probe(uri))
    if not done:
        raise StoreError(
            f"tracking.uri={masked(uri)}: the tracking server did not answer within tracking.timeout={timeout} s; "
            "start it, check the address, or raise tracking.timeout (or tracking.enabled=false)"
        )
    if err is not None:
        raise StoreError(f"tracking.uri={masked(uri)}: the store refused a first read: {_scrubbed(str(err), uri)}")


class Tracker:
    """Thin wrapper over ``MlflowClient`` for one run. ``enabled=False`` turns every call into a no-op."""

    def __init__(self, uri: str, experiment: str, artifact_location: str | None = None, enabled: bool = True):
        self.enabled = enabled
        self.run_id: str = ""  # set by start() or reopen()
        self._beat_stop: threading.Event | None = None
        self.buffer_file: Path | None = None  # where operations the store refused are kept (the run directory's)
        self._pending: list[dict[str, Any]] = []  # operations not yet taken by the store, oldest first
        self._failures = 0  # failed sends since the store last answered
        self._logged: dict[str, int] = {}  # a reopened run: the last step of each metric the store holds
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

    def reopen(self, run_id: str, skip_logged: bool | None = None) -> bool:
        """Continue an existing run of this experiment (a resumed run, a resumed sweep's parent): RUNNING again.
        With ``skip_logged`` (default: unless the run is a sweep parent) metrics at steps the store holds are not
        logged again. False when the run is not in this store and experiment."""
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
        skip = run.data.tags.get("sweep.role") != "parent" if skip_logged is None else skip_logged
        self._logged = last_steps(self.client, run) if skip else {}
        if self._logged:
            log.info(f"MLflow run {run_id} holds metrics up to step {max(self._logged.values())}: not logged again")
        self.set_tags(liveness_tags())
        self._start_heartbeat()
        return True

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log the finite ``metrics`` at ``step`` (buffered while the store fails); in a reopened run not those
        the store already holds at ``step`` or later."""
        batch = {mlflow_key(k): float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        if self._logged:
            batch = {k: v for k, v in batch.items() if k not in self._logged or int(step) > self._logged[k]}
        if batch:
            self._submit({"op": "metrics", "metrics": batch, "step": int(step), "time": int(time.time() * 1000)})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._submit({"op": "tags", "tags": {k: str(v) for k, v in tags.items()}})

    def log_text(self, text: str, name: str) -> None:
        self._submit({"op": "text", "text": text, "name": name})

    def log_artifact(self, path: str | os.PathLike) -> None:
        self._submit({"op": "artifact", "path": str(Path(path).resolve())})

    def _submit(self, op: dict[str, Any]) -> None:
        """Send ``op`` after whatever is buffered; while the store fails, keep it (training goes on)."""
        if self.enabled:
            self._pending.append({"run_id": self.run_id, **op})
            self.flush()

    def flush(self) -> bool:
        """Send the buffered operations in order; False when the store still fails (they stay buffered, and in
        ``buffer_file``)."""
        sent = 0
        while self._pending:
            try:
                faults.hit("mlflow")  # fault injection (tests/faults): a no-op unless MMLEXP_FAULT is set
                send(self.client, self._pending[0])
            except Exception as err:  # the store is down or refuses: keep the rest for the next call
                self._store_failed(err)
                return False
            self._pending.pop(0)
            sent += 1
        if self._failures:
            log.warning(f"MLflow store {masked(self.uri)} answers again: {sent} buffered operations logged")
            self._failures = 0
            if self.buffer_file is not None:
                self.buffer_file.unlink(missing_ok=True)
        return True

    def _store_failed(self, err: Exception) -> None:
        self._failures += 1
        if self._failures == 1:
            kept = f", kept in {self.buffer_file}" if self.buffer_file is not None else ""
            log.warning(
                f"MLflow store {masked(self.uri)} failed ({type(err).__name__}: {_scrubbed(str(err), self.uri)}); "
                f"training goes on, {len(self._pending)} operations buffered{kept} and retried with the next one"
            )
        if self.buffer_file is not None:
            try:
                write_buffer(self.buffer_file, self._pending)
            except OSError as write_err:
                log.warning(f"cannot write the tracking buffer {self.buffer_file}: {write_err}")

    def stop_heartbeat(self) -> None:
        if self._beat_stop is not None:
            self._beat_stop.set()

    def finish(self, status: str = "FINISHED") -> None:
        """End the run as FINISHED, FAILED or KILLED (buffered, like the rest, while the store fails)."""
        self.stop_heartbeat()
        if self.enabled and self.run_id:
            self._submit({"op": "terminate", "status": status, "time": int(time.time() * 1000)})
        if self._pending:
            where = f"kept in {self.buffer_file}" if self.buffer_file is not None else "lost (no buffer file)"
            log.warning(
                f"MLflow store {masked(self.uri)} still fails: {len(self._pending)} operations not logged, {where}; "
                "send them later with mmlexp.tracking.replay_buffer(<file>, <tracking uri>)"
            )

    @property
    def where(self) -> str:
        if not self.enabled:
            return "nowhere (tracking.enabled=false)"
        pending = f"; {len(self._pending)} operations not logged, in {self.buffer_file}" if self._pending else ""
        return f"{masked(self.uri)} (experiment id {self.experiment_id}, run id {self.run_id}){pending}"


def last_steps(client, run) -> dict[str, int]:
    """The last step of each metric of ``run`` in the store (read once, as a run is reopened; {} when the store
    fails: the metrics are then logged again, as before)."""
    try:
        history = client.get_metric_history
        return {key: max((m.step for m in history(run.info.run_id, key)), default=-1) for key in run.data.metrics}
    except Exception as err:  # the store is flaky: at-least-once logging rather than none
        log.warning(f"cannot read the metric history of MLflow run {run.info.run_id} ({type(err).__name__}): "
                    "epochs trained again are logged again")  # fmt: skip
        return {}


def send(client, op: Mapping[str, Any]) -> None:
    """Perform one operation of a tracker's buffer (``{"op": "metrics" | "tags" | "text" | "artifact" |
    "terminate", "run_id": ..., ...}``) on ``client``."""
    from mlflow.entities import Metric, RunTag

    run_id, kind = op["run_id"], op["op"]
    if kind == "metrics":
        batch = [Metric(k, float(v), int(op["time"]), int(op["step"])) for k, v in op["metrics"].items()]
        client.log_batch(run_id, metrics=batch, synchronous=True)
    elif kind == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in op["tags"].items()])
    elif kind == "text":
        client.log_text(run_id, op["text"], op["name"])
    elif kind == "artifact":
        client.log_artifact(run_id, op["path"])
    elif kind == "terminate":
        client.set_terminated(run_id, status=op["status"], end_time=int(op["time"]))
    else:
        raise ValueError(f"unknown tracking operation {kind!r}")


def write_buffer(path: Path, ops: list[dict[str, Any]]) -> None:
    """``ops`` as JSON lines in ``path`` (atomic: a partial file never replaces a whole one)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(op) + "\n" for op in ops))
    os.replace(tmp, path)


def replay_buffer(path: str | os.PathLike, uri: str) -> int:
    """Send the operations a run kept in its ``tracking_buffer.jsonl`` to the store ``uri``; the file is removed
    once all are sent (what is left stays in it on an error). Returns how many were sent."""
    from mlflow.tracking import MlflowClient

    path = Path(path)
    ops = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    client = MlflowClient(tracking_uri=uri)
    for i, op in enumerate(ops):
        try:
            send(client, op)
        except Exception:
            write_buffer(path, ops[i:])
            raise
    path.unlink()
    return len(ops)

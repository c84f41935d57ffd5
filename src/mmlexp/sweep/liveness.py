"""Liveness: is the process behind a RUNNING trial, grid point or run still there? Optuna heartbeats while a
batch runs.  (MLflow runs left RUNNING by dead processes are closed by ``mmlexp.tracking.close_dead_runs``.)"""

import contextlib
import threading
from typing import Any

from mmlexp.tracking import alive_since


def alive(pid: Any, started: Any) -> bool:
    """Is the process that ran a trial (started at the datetime ``started``) still running? (pid reuse aware)"""
    return alive_since(pid, None if started is None else started.timestamp() + 1)


@contextlib.contextmanager
def heartbeats(storage: Any, trial_ids: list[int], interval: int | None):
    """Record Optuna heartbeats for ``trial_ids`` every ``interval`` s while the batch runs."""
    if not interval or storage is None:
        yield
        return
    stop = threading.Event()

    def beat():
        while True:
            for trial_id in trial_ids:
                with contextlib.suppress(Exception):
                    storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name="optuna-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()

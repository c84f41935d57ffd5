"""Liveness: is the process behind a RUNNING trial or run still there? Optuna heartbeats while a batch runs."""

import contextlib
import threading
from typing import Any


def alive(pid: Any, started: Any) -> bool:
    """Is the process that ran a trial (started at ``started``) still running? (pid reuse aware)"""
    import psutil

    try:
        proc = psutil.Process(int(pid))
        return started is None or proc.create_time() <= started.timestamp() + 1
    except (psutil.Error, TypeError, ValueError):
        return False


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


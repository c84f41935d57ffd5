"""The parent MLflow run of a sweep (its jobs are child runs) and ``SweepCallback``, registered in
``hydra.callbacks`` (conf/config.yaml): SIGTERM as Ctrl-C for the whole sweep, torch threads per job.

Before a sweep writes anything its tracking store (``check_tracking``: ``mmlexp.tracking.check_store``) and its
``hydra.sweep.dir`` are checked (both: ``check_before_writing``; an unusable one is a ``SweepError``, exit 2);
RUNNING runs of dead processes are closed with the setting ``tracking.stale_after_s`` (``stale_after_s``), as a
single run does.
"""

import contextlib
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mmlexp.sweep.errors import SweepError
from mmlexp.sweep.jobs import MAX_TAG, threads_per_job, write_sweep_file


def _tracking(config: DictConfig) -> dict[str, Any] | None:
    tracking = config.get("tracking")
    if tracking is None or not tracking.get("enabled", True):
        return None
    return {
        "uri": tracking.uri,
        "experiment": tracking.experiment,
        "artifact_location": tracking.get("artifact_location"),
    }


def check_tracking(config: DictConfig) -> None:
    """Refuse (``SweepError``) a tracking store that cannot be used (``mmlexp.tracking.check_store``: not a
    database, no write permission, a server that does not answer within ``tracking.timeout``); writes nothing."""
    tracking = _tracking(config)
    if tracking is None:
        return
    from mmlexp.tracking import DEFAULT_TIMEOUT_S, StoreError, check_store

    try:
        check_store(str(tracking["uri"]), float(OmegaConf.select(config, "tracking.timeout") or DEFAULT_TIMEOUT_S))
    except StoreError as err:
        raise SweepError(str(err)) from err


def check_before_writing(config: DictConfig) -> None:
    """What a sweep checks before it opens a ledger, a study or a parent run (``SweepError``; writes nothing): its
    tracking store (``check_tracking``) and its ``hydra.sweep.dir``, which must be creatable wherever it was set
    (the command line, an experiment, a user config)."""
    from mmlexp.config import run_dir_error

    check_tracking(config)
    if error := run_dir_error(config, "sweep"):
        raise SweepError(error)


def stale_after_s(config: DictConfig) -> float:
    """Seconds without a heartbeat after which another host's RUNNING MLflow run is dead: ``tracking.stale_after_s``."""
    from mmlexp.tracking import STALE_AFTER_S

    return float(OmegaConf.select(config, "tracking.stale_after_s") or STALE_AFTER_S)


def open_parent(
    config: DictConfig,
    sweep_dir: Path,
    *,
    name: str,
    sweep_id: str,
    kind: str,
    params: dict[str, Any],
    reuse: str | None = None,
    **info: Any,
):
    """Create (or reopen ``reuse``) the sweep's parent MLflow run and write ``sweep.json``; None: no tracking.
    The store is checked first (``check_tracking``: ``SweepError``, nothing written)."""
    from mmlexp.tracking import Tracker, git_commit

    tracking = _tracking(config)
    if tracking is None:
        return None
    check_tracking(config)
    tracker = Tracker(tracking["uri"], tracking["experiment"], tracking["artifact_location"])
    if not (reuse and tracker.reopen(reuse)):
        tags = {
            "sweep.role": "parent",
            "sweep.kind": kind,
            "sweep.id": sweep_id,
            "sweep.dir": str(sweep_dir.resolve()),
            "sweep.command": command_line()[:MAX_TAG],
            "host": socket.gethostname(),
            "git_commit": git_commit() or "",
        }
        tracker.start(name, {k: str(v)[:MAX_TAG] for k, v in params.items()}, tags)
    write_sweep_file(
        sweep_dir, {"parent_run_id": tracker.run_id, "sweep_id": sweep_id, "tracking_uri": tracking["uri"], **info}
    )
    return tracker


def command_line() -> str:
    argv = list(sys.argv)
    if argv and argv[0].endswith("__main__.py"):
        argv[0] = "python -m mmlexp"
    return " ".join(argv)


def exit_status() -> str:
    """The status of a run ended in a ``finally``: FINISHED, KILLED (Ctrl-C, SIGTERM) or FAILED."""
    error = sys.exc_info()[1]
    return "FINISHED" if error is None else "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"


def summarise(parent, config: DictConfig) -> None:
    """The best finished job of the sweep, on its parent run (by the selection metric, never test under
    eval.selection=valid)."""
    from mmlexp.tracking import mlflow_key

    # the selection metric: on the validation slice under eval.selection=valid (never tune on test)
    prefix = "valid/" if OmegaConf.select(config, "eval.selection") == "valid" else ""
    client, metric = parent.client, f"best/{prefix}{mlflow_key(str(config.trainer.monitor))}"
    jobs = client.search_runs([parent.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.run_id}'")
    done = [r for r in jobs if r.info.status == "FINISHED" and metric in r.data.metrics]
    if done:
        best = max(done, key=lambda r: r.data.metrics[metric])
        parent.log_metrics({"best_value": best.data.metrics[metric], "finished_jobs": len(done)}, step=0)
        parent.set_tags(
            {
                "best.run_id": best.info.run_id,
                "best.job_num": best.data.tags.get("sweep.job_num"),
                "best.overrides": best.data.tags.get("sweep.overrides", ""),
            }
        )


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


class SweepCallback(Callback):
    """Parent MLflow run of a grid sweep; SIGTERM as Ctrl-C for the whole sweep; threads per job."""

    def __init__(self) -> None:
        self.parent: Any = None
        self._sigterm: Any = None

    def __getstate__(self) -> dict[str, Any]:  # jobs in other processes (joblib, submitit) need no parent run
        return {**self.__dict__, "parent": None, "_sigterm": None}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if threading.current_thread() is threading.main_thread():
            self._sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
        if str(OmegaConf.select(config, "hydra.sweeper._target_")).startswith("mmlexp.sweep."):
            return  # mmlexp's sweepers open their parent run themselves, after checking their inputs
        from hydra.core.override_parser.overrides_parser import OverridesParser

        sweep_dir = Path(str(config.hydra.sweep.dir))
        overrides = list(config.hydra.overrides.task)
        swept = [
            str(o.input_line) for o in OverridesParser.create().parse_overrides(overrides) if o.is_sweep_override()
        ]
        try:
            check_before_writing(config)
            self.parent = open_parent(
                config,
                sweep_dir,
                name=f"grid {' '.join(swept) or sweep_dir}"[:250],
                sweep_id=str(sweep_dir),
                kind="grid",
                params={"sweep.overrides": " ".join(overrides)},
            )
        except SweepError as err:  # an unusable tracking store or sweep dir: a clear message, exit 2, nothing written
            print(f"mmlexp: error: {err}", file=sys.stderr)
            sys.exit(2)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent is not None:
            status = exit_status()
            with contextlib.suppress(Exception):  # the best job on the parent (best effort)
                summarise(self.parent, config)
            self.parent.finish(status)
        if self._sigterm is not None:
            signal.signal(signal.SIGTERM, self._sigterm)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        threads = threads_per_job(config.hydra)
        if threads and OmegaConf.select(config, "trainer.num_threads") is None:
            import torch

            torch.set_num_threads(threads)

"""The job side of a sweep: what a job adds to its MLflow run, and its torch threads.

The sweep writes ``sweep.json`` in its sweep directory; jobs read it (any launcher: in process, joblib
workers, submitit on a shared disk).  ``job_tags`` reaches ``mmlexp.run`` through ``mmlexp.hooks``.
"""

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig

from mmlexp.hooks import POINT_ENV, TRIAL_ENV, in_multirun

SWEEP_FILE = "sweep.json"
MAX_TAG = 5000
__all__ = [
    "SWEEP_FILE",
    "MAX_TAG",
    "POINT_ENV",
    "TRIAL_ENV",
    "job_tags",
    "read_sweep_file",
    "write_sweep_file",
    "threads_per_job",
]


def _sweep_dir(hydra_cfg: Any) -> Path:
    path = Path(str(hydra_cfg.sweep.dir))
    return path if path.is_absolute() else Path(str(hydra_cfg.runtime.cwd)) / path


def read_sweep_file(sweep_dir: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        return json.loads((Path(sweep_dir) / SWEEP_FILE).read_text())
    return {}


def write_sweep_file(sweep_dir: Path, info: dict[str, Any]) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    tmp = sweep_dir / f".{SWEEP_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(info, indent=1))
    tmp.replace(sweep_dir / SWEEP_FILE)


def job_tags(tracking_uri: str) -> dict[str, str]:
    """Tags linking a multirun job's MLflow run to its sweep; ``{}`` outside a multirun."""
    if not in_multirun():  # a single run, or not under Hydra (a notebook)
        return {}
    hc = HydraConfig.get()
    sweep_dir = _sweep_dir(hc)
    tags = {
        "sweep.dir": str(sweep_dir),
        "sweep.job_num": str(hc.job.num),
        "sweep.overrides": " ".join(hc.overrides.task)[:MAX_TAG],
    }
    if os.environ.get(POINT_ENV) is not None:  # a grid point keeps its index across resumed sweeps
        tags |= {"sweep.job_num": os.environ[POINT_ENV], "grid.point": os.environ[POINT_ENV]}
    info = read_sweep_file(sweep_dir)
    if info.get("parent_run_id") and info.get("tracking_uri") == tracking_uri:
        tags |= {"mlflow.parentRunId": info["parent_run_id"], "sweep.id": info["sweep_id"]}
    if os.environ.get(TRIAL_ENV) is not None:  # an Optuna trial runs in <sweep dir>/<trial number>
        tags["sweep.job_num"] = os.environ[TRIAL_ENV]
        if info.get("study"):
            tags |= {"optuna.study": info["study"], "optuna.trial_number": os.environ[TRIAL_ENV]}
    if "torch" in sys.modules:  # set by SweepCallback.on_job_start when jobs run side by side
        tags["torch.num_threads"] = str(sys.modules["torch"].get_num_threads())
    return tags


def threads_per_job(hydra_cfg: Any, cores: int | None = None) -> int | None:
    """Torch threads for one job when a launcher runs jobs side by side on this machine; None: leave as is.

    submitit: the job's ``cpus_per_task``. joblib: cores // n_jobs (n_jobs=-1: one per core). submitit_local
    without cpus_per_task: cores // the sweeper's batch size. The basic launcher runs one job at a time.
    """
    cores = cores or len(os.sched_getaffinity(0))
    launcher = hydra_cfg.get("launcher") or {}
    target = str(launcher.get("_target_", ""))
    cpus = launcher.get("cpus_per_task")
    if cpus:
        return int(cpus)
    parallel = launcher.get("n_jobs")
    if parallel is None and target.endswith("LocalLauncher") and "submitit" in target:
        sweeper = hydra_cfg.get("sweeper") or {}
        parallel = sweeper.get("n_jobs") or sweeper.get("max_batch_size")
    if not parallel or parallel == 1:
        return None
    if parallel < 0:  # joblib: -1 all cores, -2 all but one...
        parallel = max(1, cores + 1 + parallel)
    return max(1, cores // parallel)

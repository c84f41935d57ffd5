"""Where a sweep plugs into the runs it launches, so that ``mmlexp.run`` never imports ``mmlexp.sweep``.

``mmlexp.sweep`` registers its job side here when it is imported (Hydra imports it in every process it starts:
it holds the sweepers and ``SweepCallback``): the MLflow tags that link a job to its sweep and the Optuna trial's
epoch reporter. A single run, or a notebook, finds nothing registered and needs nothing.
"""

import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

TRIAL_ENV = "MMLEXP_OPTUNA_TRIAL"  # the trial number, set per job by OptunaSweeper
POINT_ENV = "MMLEXP_GRID_POINT"  # the grid point's index, set per job by GridSweeper
PRUNED_TAG = "optuna.pruned_at_epoch"  # on the MLflow run of a pruned trial

Reporter = Callable[[int, dict[str, float]], None]

log = logging.getLogger("mmlexp")
_registered: dict[str, Callable[..., Any]] = {}


def register(*, job_tags: Callable[[str], dict[str, str]], trial_reporter: Callable[[Any], Reporter | None]) -> None:
    """Called by ``mmlexp.sweep`` on import: ``job_tags(tracking_uri)``, ``trial_reporter(cfg)``."""
    _registered.update(job_tags=job_tags, trial_reporter=trial_reporter)


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (``-m``); False outside Hydra."""
    with contextlib.suppress(Exception):
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    return False


def _hook(name: str) -> Callable[..., Any] | None:
    hook = _registered.get(name)
    if hook is None:
        log.warning(f"mmlexp.sweep is not loaded in this sweep job: no {name.replace('_', ' ')}")
    return hook


def job_tags(tracking_uri: str) -> dict[str, str]:
    """A multirun job's tags linking its MLflow run to its sweep (parent run, sweep id, job number); ``{}``
    in a single run."""
    if not in_multirun():
        return {}
    hook = _hook("job_tags")
    return hook(tracking_uri) if hook is not None else {}


def trial_reporter(cfg: Any) -> Reporter | None:
    """``report(epoch, record)`` for the Optuna trial this job runs (it may raise ``optuna.TrialPruned``);
    None outside an Optuna search or without a pruner."""
    if os.environ.get(TRIAL_ENV) is None:
        return None
    hook = _hook("trial_reporter")
    return hook(cfg) if hook is not None else None

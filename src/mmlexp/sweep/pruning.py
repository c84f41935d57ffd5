"""Pruning of Optuna trials (``hydra/sweeper/pruner=median|hyperband|none``), the job side.

A job of an Optuna search finds its trial through the storage: the study (``hydra.sweeper.storage`` and
``study_name`` of the job's own Hydra config) and the trial number (``TRIAL_ENV``, set per job by
``OptunaSweeper``). It needs nothing from the sweeper's process, so it works with every launcher (basic,
joblib, submitit local or SLURM) as long as the storage is reachable from where the job runs.

Each evaluated epoch reports ``trainer.monitor`` to the trial (``trial.report(value, epoch)``); when the
configured pruner says so the reporter raises ``optuna.TrialPruned``. ``mmlexp.run`` tags the MLflow run
``optuna.pruned_at_epoch``, ends it KILLED and re-raises; the sweeper then tells the trial PRUNED.

``trial_reporter`` reaches ``mmlexp.run`` through ``mmlexp.hooks`` (asked only when ``TRIAL_ENV`` is set).
"""

import logging
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mmlexp.hooks import PRUNED_TAG, TRIAL_ENV, Reporter

log = logging.getLogger(__name__)

PRUNER_GROUP = "hydra/sweeper/pruner"
PRUNER_TARGETS = ("optuna.pruners.*",)
__all__ = [
    "PRUNED_TAG",
    "PRUNER_GROUP",
    "Reporter",
    "build_pruner",
    "monitor_key",
    "trial_reporter",
    "make_reporter",
    "is_pruned",
    "pruner_names",
    "check_pruner_argv",
    "chosen_sweeper",
]


def build_pruner(node: Any):
    """The optuna pruner of a ``hydra.sweeper.pruner`` node; None (or ``_target_: null``) means no pruning."""
    if node is None or (isinstance(node, DictConfig) and node.get("_target_") is None):
        return None
    from hydra.utils import execution_whitelist, instantiate

    return instantiate(node, _execution_whitelist_=execution_whitelist(PRUNER_TARGETS, reset=True))


def monitor_key(cfg: DictConfig) -> str:
    """The record key that ``fit`` selects on: ``valid/<monitor>`` under ``eval.selection=valid``."""
    monitor = str(cfg.trainer.monitor)
    return f"valid/{monitor}" if OmegaConf.select(cfg, "eval.selection") == "valid" else monitor


def trial_reporter(cfg: DictConfig) -> Reporter | None:
    """``report(epoch, record)`` for the Optuna trial this job runs, or None: not in a search, or no pruner.

    ``report`` sends the record's monitored metric (epochs that were not evaluated have none and are skipped)
    and raises ``optuna.TrialPruned`` when the configured pruner prunes the trial.
    """
    number = os.environ.get(TRIAL_ENV)
    if number is None:
        return None
    try:
        from hydra.core.hydra_config import HydraConfig

        sweeper = HydraConfig.get().sweeper
    except ValueError:  # not under Hydra
        return None
    pruner = build_pruner(sweeper.get("pruner"))
    if pruner is None or not sweeper.get("storage") or not sweeper.get("study_name"):
        return None  # pruner=none: the job never touches the storage
    import optuna

    url = str(sweeper.storage)
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).is_absolute():
        url = "sqlite:///" + str(Path(str(HydraConfig.get().runtime.cwd)) / url[len("sqlite:///") :])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.load_study(
            study_name=str(sweeper.study_name), storage=url, pruner=pruner, sampler=optuna.samplers.RandomSampler()
        )  # the job never samples
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, int(number))
    trial = optuna.trial.Trial(study, trial_id)
    return make_reporter(trial, monitor_key(cfg))


def make_reporter(trial, monitor: str) -> Reporter:
    """The reporter of an open ``optuna.trial.Trial`` (unit tests build one directly)."""
    import optuna

    def report(epoch: int, record: dict[str, float]) -> None:
        value = record.get(monitor)
        if value is None or not math.isfinite(float(value)):
            return  # not evaluated this epoch (eval_every), or diverged (the run itself fails on it)
        with warnings.catch_warnings():  # a resumed run reports its first epochs again: ignored by Optuna
            warnings.simplefilter("ignore", UserWarning)
            trial.report(float(value), epoch)
        if trial.should_prune():
            log.info(f"Trial {trial.number} pruned at epoch {epoch} ({monitor} {float(value):.4f})")
            pruned = optuna.TrialPruned(f"pruned at epoch {epoch} ({monitor} {float(value):.4g})")
            pruned.epoch = epoch  # type: ignore[attr-defined]  # mmlexp.run tags the MLflow run with it
            raise pruned

    return report


def is_pruned(error: Any) -> bool:
    """``optuna.TrialPruned`` without importing optuna (a single run never loads it); also Hydra's stand-in
    for an exception that came back from another process unpickled (``RuntimeError("Remote optuna...")``)."""
    if not isinstance(error, BaseException):
        return False
    kind = type(error)
    return (kind.__name__ == "TrialPruned" and kind.__module__.startswith("optuna")) or (
        isinstance(error, RuntimeError) and str(error).startswith("Remote optuna.exceptions.TrialPruned")
    )


def pruner_names(config_dir: str | os.PathLike) -> list[str]:
    return sorted(p.stem for p in (Path(config_dir) / PRUNER_GROUP).glob("*.yaml"))


def check_pruner_argv(argv: list[str], config_dir: str | os.PathLike) -> str | None:
    """An error message for ``hydra/sweeper/pruner=NAME`` on the command line when NAME has no config file, or
    when the command runs no Optuna search (checked before Hydra starts: nothing is written); None when it is
    fine or absent."""
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if sep and key == PRUNER_GROUP:
            names = pruner_names(config_dir)
            if names and value not in names:
                return f"{PRUNER_GROUP}={value!r}: no such pruner; choose one of {', '.join(names)}"
            return _pruner_without_search(arg, argv, Path(config_dir))
    return None


def _pruner_without_search(arg: str, argv: list[str], config_dir: Path) -> str | None:
    """The message for a pruner given to a command whose sweeper has no pruner (not an Optuna search)."""
    sweeper = chosen_sweeper(argv, config_dir)
    if sweeper is None or _has_pruner(config_dir / "hydra" / "sweeper" / f"{sweeper}.yaml"):
        return None
    searches = [p.stem for p in sorted((config_dir / "hparams_search").glob("*.yaml")) if _has_pruner_sweeper(p)]
    return (
        f"{arg}: a pruner stops poor trials of an Optuna search, and this command runs none "
        f"(hydra/sweeper={sweeper}); allowed only with -m and an Optuna search: hparams_search="
        f"{'|'.join(searches)}, or hydra/sweeper=mmlexp_optuna; else leave it out"
    )


def chosen_sweeper(argv: list[str], config_dir: Path) -> str | None:
    """The ``hydra/sweeper`` option the command line picks: its own ``hydra/sweeper=NAME``, else one set by a
    config group file it picks (``hparams_search=mml_optuna``), else ``basic``. None when it cannot tell (another
    config dir, a search path, a group option that is not a file of ``config_dir``)."""
    explicit, picked = None, "basic"
    for arg in argv:
        if arg.startswith(("-cd", "--config-dir", "-cp", "--config-path", "hydra.searchpath", "+hydra.searchpath")):
            return None
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or "." in key:
            continue
        if key == "hydra/sweeper":
            explicit = value
        elif (config_dir / key).is_dir():
            files = [config_dir / key / f"{option}.yaml" for option in value.split(",") if option]
            if not all(f.is_file() for f in files):
                return None
            picked = next((s for s in map(_sweeper_override, files) if s), picked)
    return explicit or picked


def _sweeper_override(path: Path) -> str | None:
    match = re.search(r"^\s*-\s*(?:override\s+)?/?hydra/sweeper\s*:\s*(\w+)", path.read_text(), re.MULTILINE)
    return match.group(1) if match else None


def _has_pruner(path: Path) -> bool:
    """Whether the sweeper config ``path`` has a pruner in its defaults (``mmlexp_optuna``)."""
    return path.is_file() and re.search(r"^\s*-\s*pruner\s*:", path.read_text(), re.MULTILINE) is not None


def _has_pruner_sweeper(path: Path) -> bool:
    sweeper = _sweeper_override(path)
    return sweeper is not None and _has_pruner(path.parent.parent / "hydra" / "sweeper" / f"{sweeper}.yaml")

"""Optuna trials that resume like grid points: a trial left RUNNING by a dead sweep (or interrupted by Ctrl-C or
SIGTERM) is failed and taken over by a new trial with the same parameters, which continues from the dead trial's
last checkpoint.

Each trial runs in ``<sweep dir>/<trial number>`` (its ``job_dir``, recorded in the trial's ``worker`` user
attribute), so no two trials ever share a run directory.  When the sweeper launches a takeover trial it copies the
dead trial's ``checkpoint.pt`` into the new trial's directory (``trainer.resume=auto`` continues from it, and the
job reopens the dead trial's MLflow run, retagged with the new trial number).

Several workers may find the same dead trial D; exactly one takeover survives:

1. enqueue a WAITING trial N with D's parameters and the user attribute ``takes_over=D``;
2. set D's user attribute ``taken_over_by=N`` while D is still RUNNING (the last writer wins);
3. fail D (the first worker wins; the others find it finished);
4. re-read D: N is the takeover when D is FAIL and names N; otherwise N is failed unrun (``skipped``).

A popped takeover trial is checked again (``is_valid``): one enqueued by a worker that died between steps 1 and 3
is failed unrun.  Light imports only: this package is a Hydra plugin.
"""

import contextlib
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TAKES_OVER = "takes_over"  # user attribute of a takeover trial: the number of the trial it continues
TAKEN_OVER_BY = "taken_over_by"  # user attribute of a failed trial: the number of the trial that continues it
TAKES_OVER_TAG = "optuna.takes_over"  # MLflow tag of a run continued by a takeover: the dead trial's number
SKIPPED = "skipped"  # user attribute of a trial failed before it ran: why
JOB_ONLY = ("+hydra.job.env_set.", "hydra.sweep.subdir=")  # per-trial overrides that do not change the run


def backend(study: Any) -> Any:
    """The study's storage without Optuna's cache (the protocol must read what other workers wrote)."""
    return getattr(study._storage, "_backend", study._storage)


def take_over(study: Any, dead: Any) -> int | None:
    """Fail the RUNNING trial ``dead`` and enqueue the trial that continues it (steps 1-4 of the module docstring).
    Returns the new trial's number; None when another worker took it over first or it finished meanwhile."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState, create_trial

    storage = backend(study)
    template = create_trial(
        state=TrialState.WAITING, system_attrs={"fixed_params": dict(dead.params)}, user_attrs={TAKES_OVER: dead.number}
    )
    new_id = storage.create_new_trial(study._study_id, template_trial=template)
    number = storage.get_trial_number_from_id(new_id)
    with contextlib.suppress(UpdateFinishedTrialError):
        storage.set_trial_user_attr(dead._trial_id, TAKEN_OVER_BY, number)
        storage.set_trial_state_values(dead._trial_id, state=TrialState.FAIL)
    if is_valid(study, storage.get_trial(new_id)):
        return number
    skip(study, new_id, f"trial {dead.number} was taken over by another worker, or it finished")
    return None


def is_valid(study: Any, trial: Any) -> bool:
    """Whether ``trial`` may run: any trial that takes over none, or the one takeover its dead trial names."""
    from optuna.trial import TrialState

    dead_number = trial.user_attrs.get(TAKES_OVER)
    if dead_number is None:
        return True
    storage = backend(study)
    dead = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study._study_id, int(dead_number)))
    return dead.state == TrialState.FAIL and dead.user_attrs.get(TAKEN_OVER_BY) == trial.number


def skip(study: Any, trial_id: int, reason: str) -> None:
    """Fail a trial that must not run (it has not started), saying why."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = backend(study)
    with contextlib.suppress(UpdateFinishedTrialError):
        storage.set_trial_user_attr(trial_id, SKIPPED, reason)
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)


def run_key(line: list[str], command: list[str]) -> str:
    """A digest of what a trial's job runs: its overrides (less the per-trial directory and number) and the
    command's own. A takeover continues the dead trial's checkpoint only when the two digests agree."""
    kept = sorted(o for o in line if not o.startswith(JOB_ONLY)) + sorted(command)
    return hashlib.sha256(json.dumps(kept).encode()).hexdigest()[:16]


def copy_checkpoint(source_dir: str | os.PathLike, job_dir: Path) -> Path | None:
    """Copy ``checkpoint.pt`` of ``source_dir`` into ``job_dir`` (atomically; an existing one is kept).
    Returns the copy, None when there is nothing to copy."""
    from mmlexp.checkpoint import CHECKPOINT_FILE

    source, target = Path(source_dir) / CHECKPOINT_FILE, job_dir / CHECKPOINT_FILE
    if not source.is_file() or target.exists() or source.resolve() == target.resolve():
        return None
    job_dir.mkdir(parents=True, exist_ok=True)
    partial = job_dir / f".{CHECKPOINT_FILE}.{os.getpid()}.partial"
    shutil.copyfile(source, partial)
    partial.replace(target)
    return target


def copy_reports(study: Any, dead: Any, trial: Any) -> None:
    """The dead trial's reported epochs, on its takeover (what a pruner compares; the job reports the rest)."""
    storage = study._storage
    for step, value in sorted(dead.intermediate_values.items()):
        with contextlib.suppress(Exception):
            storage.set_trial_intermediate_value(trial._trial_id, step, value)

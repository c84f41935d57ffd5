"""Sweeps: long grids and searches that survive crashes, shared between workers, tracked in MLflow.

* ``jobs``: the job side (MLflow tags linking a job to its sweep, torch threads per parallel job).
* ``parent``: the sweep's parent MLflow run and ``SweepCallback`` (``hydra.callbacks`` in conf/config.yaml).
* ``optuna_sweeper``: ``OptunaSweeper`` (``hydra/sweeper=mmlexp_optuna``), a resumable Optuna search
  (its input checks: ``optuna_checks``; ``takeover``: a trial left RUNNING by a dead sweep is continued from its
  checkpoint by a new trial with its parameters).
* ``grid`` / ``ledger``: ``GridSweeper``, the default for ``-m``, and its ledger of points; ``status``: how far
  along the grids of a ledger are (``python -m mmlexp.sweep.status``).
* ``liveness``: is the process behind a RUNNING trial or run still alive; Optuna heartbeats.
* ``errors``: ``SweepError``, what a sweep refuses before it writes anything.

This package is a Hydra plugin (entry point in pyproject.toml), imported at every Hydra start: keep
module-level imports light (no torch, no optuna, no mlflow).  On import it registers the job side (``job_tags``,
``pruning.trial_reporter``) in ``mmlexp.hooks``, where ``mmlexp.run`` finds it: this package sits above ``run``.
"""

import mmlexp.slurm_logging  # noqa: F401  (submitit's sacct errors, said once: no SLURM accounting)
from mmlexp import hooks
from mmlexp.sweep.errors import SweepError
from mmlexp.sweep.jobs import SWEEP_FILE, TRIAL_ENV, job_tags, read_sweep_file, threads_per_job
from mmlexp.sweep.optuna_sweeper import OptunaSweeper
from mmlexp.sweep.parent import SweepCallback, open_parent
from mmlexp.sweep.pruning import trial_reporter

hooks.register(job_tags=job_tags, trial_reporter=trial_reporter)

__all__ = [
    "SweepCallback",
    "OptunaSweeper",
    "SweepError",
    "job_tags",
    "threads_per_job",
    "open_parent",
    "read_sweep_file",
    "SWEEP_FILE",
    "TRIAL_ENV",
]

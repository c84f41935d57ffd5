"""``OptunaSweeper`` (``hydra/sweeper=mmlexp_optuna``, used by conf/hparams_search/*): hydra-optuna-sweeper's
ask/launch/tell loop with a study-level budget. ``n_trials`` is the number of finished trials (COMPLETE, or PRUNED by
``hydra/sweeper/pruner``: a pruned trial uses up its slot, else a pruner would make the search run on and on) the
study must end with, so re-running the same command resumes the study and runs only the missing trials. A job that
raised ``optuna.TrialPruned`` (``mmlexp.sweep.pruning``) is told PRUNED, not FAIL. Trials left RUNNING by a
killed sweep (a dead process on this host, or Optuna heartbeats from any host) or interrupted by Ctrl-C are failed
and taken over by new trials with the same parameters, which continue from their checkpoints
(``mmlexp.sweep.takeover``): each trial runs in ``<sweep dir>/<trial number>``. Every input is checked before the
study or the MLflow store is touched. The parent MLflow run belongs to the study (a resumed study keeps its
parent). The input checks are in ``mmlexp.sweep.optuna_checks``.
"""

import contextlib
import json
import logging
import math
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from mmlexp import faults
from mmlexp.sweep.errors import SweepError, mask_url
from mmlexp.sweep.jobs import MAX_TAG, TRIAL_ENV
from mmlexp.sweep.liveness import alive, heartbeats
from mmlexp.sweep.optuna_checks import checked_search
from mmlexp.sweep.parent import check_before_writing, open_parent, stale_after_s
from mmlexp.sweep.pruning import is_pruned
from mmlexp.sweep.takeover import (
    TAKES_OVER,
    TAKES_OVER_TAG,
    backend,
    copy_checkpoint,
    copy_reports,
    is_valid,
    run_key,
    skip,
    take_over,
)

log = logging.getLogger(__name__)

PARENT_ATTR = "mlflow_parent_run_id"  # study user attribute: the study's parent MLflow run
WORKER_ATTR = "worker"  # trial user attribute: host, pid, sweep_dir, job_num, job_dir of its sweeper
RUN_KEY_ATTR = "run_key"  # trial user attribute: the digest of its job's settings (takeover.run_key)


class OptunaSweeper(Sweeper):
    """hydra-optuna-sweeper with a study-level budget (resume), input checks first, an MLflow parent run.

    Same settings as ``hydra/sweeper=optuna`` plus ``space`` (``mmlexp.search_space.MarginSpace``: constrained
    margins/weights), ``heartbeat_interval``/``grace_period`` (seconds; stale trials of dead hosts) and
    ``poll_interval`` (seconds between checks while other workers finish the last trials).
    """

    def __init__(
        self,
        sampler: Any,
        direction: Any,
        storage: str | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float = 0.0,
        custom_search_space: str | None = None,
        params: DictConfig | None = None,
        space: DictConfig | None = None,
        heartbeat_interval: int | None = 60,
        grace_period: int | None = None,
        poll_interval: float | None = None,
        pruner: Any = None,
    ) -> None:
        from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as StockSweeper

        self.impl: Any = StockSweeper(
            sampler, direction, storage, study_name, n_trials, n_jobs, max_failure_rate, custom_search_space, params
        ).sweeper
        self.sampler_config = sampler
        self.pruner_config = pruner
        self.pruner = None  # built by _plan (hydra/sweeper/pruner)
        self.custom_search_space = custom_search_space
        self.space: Any = OmegaConf.to_container(space, resolve=True) if isinstance(space, DictConfig) else space
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.poll_interval = poll_interval or min(heartbeat_interval or 5, 5)
        self.parent = None
        self.config: Any = None  # the sweep's config, set by setup()
        self.search: tuple = ({}, {}, [])  # (distributions, fixed, fixed_overrides), set by sweep()

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.config = config

    # ---- checks: nothing is written before they pass
    def _plan(self, arguments: list[str]):
        """(distributions, fixed, fixed_overrides) of the sweep, every input checked (``optuna_checks``)."""
        return checked_search(self, arguments)

    def _open_study(self):
        import optuna

        impl = self.impl
        url, storage = impl.storage, None
        if url:
            try:
                if str(url).startswith("sqlite:///"):
                    Path(str(url)[len("sqlite:///") :]).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
                with warnings.catch_warnings():  # heartbeats are "experimental" (stable since Optuna 2.9)
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    storage = optuna.storages.RDBStorage(
                        str(url),
                        heartbeat_interval=self.heartbeat_interval or None,
                        grace_period=self.grace_period if self.heartbeat_interval else None,
                    )  # (stale trials: _fail_stale, not Optuna's callback, which fails them before they are taken over)
            except Exception as err:
                reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise SweepError(
                    f"hydra.sweeper.storage={mask_url(str(url))!r}: cannot open the Optuna storage "
                    f"({type(err).__name__}: {reason})"
                ) from err
        try:
            return optuna.create_study(
                study_name=impl.study_name,
                storage=storage,
                sampler=impl.sampler,
                pruner=self.pruner or optuna.pruners.NopPruner(),
                directions=impl._get_directions(),
                load_if_exists=True,
            )
        except ValueError as err:
            raise SweepError(f"hydra.sweeper.study_name={impl.study_name!r}: {err}") from err

    # ---- the loop
    def sweep(self, arguments: list[str]) -> None:
        from mmlexp.search_space import OVERRIDES_ATTR

        try:
            self.search = self._plan(arguments)
            check_before_writing(self.config)  # an unusable store or sweep dir: stopped before the study is written
            study = self._open_study()
        except SweepError as err:  # a clear message, no traceback; nothing was written
            print(f"mmlexp: error: {err}", file=sys.stderr)
            sys.exit(2)
        config, impl = self.config, self.impl
        sweep_dir = Path(str(config.hydra.sweep.dir))
        name = study.study_name
        params = {
            "study_name": name,
            "storage": mask_url(impl.storage),
            "direction": impl._get_directions()[0],
            "sampler": type(impl.sampler).__name__,
            "n_trials": impl.n_trials,
            "search.params": json.dumps({k: str(v) for k, v in (impl.params or {}).items()}),
            "search.space": json.dumps(self.space),
        }
        self.parent = open_parent(
            config,
            sweep_dir,
            name=f"optuna {name}",
            sweep_id=f"optuna/{name}",
            kind="optuna",
            params=params,
            reuse=study.user_attrs.get(PARENT_ATTR),
            study=name,
            storage=mask_url(impl.storage),
        )
        if self.parent is not None:
            self.parent.close_dead_runs(stale_after_s(config))  # tracking.stale_after_s, as a single run
        if self.parent is not None and study.user_attrs.get(PARENT_ATTR) != self.parent.run_id:
            study.set_user_attr(PARENT_ATTR, self.parent.run_id)
        status = "FAILED"
        try:
            self._loop(study, sweep_dir)
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            try:
                self._report(study, sweep_dir, OVERRIDES_ATTR)
            except Exception as err:  # never hide the sweep's own outcome
                log.warning(f"Could not report the study's results: {err}")
            if self.parent is not None:
                self.parent.finish(status)

    def _counts(self, study) -> tuple[int, int]:
        """Finished trials (COMPLETE or PRUNED: both count toward n_trials) and RUNNING ones."""
        from optuna.trial import TrialState

        states = [t.state for t in study.get_trials(deepcopy=False)]
        return sum(states.count(s) for s in _finished_states()), states.count(TrialState.RUNNING)

    def _loop(self, study, sweep_dir: Path) -> None:
        """Ask, launch and tell batches of trials until the study has ``n_trials`` finished ones."""
        impl = self.impl
        n_jobs = impl.n_jobs if impl.n_jobs > 0 else max(1, len(os.sched_getaffinity(0)) + 1 + impl.n_jobs)
        launched = failed = job_idx = 0
        while True:
            self._fail_stale(study)
            complete, running = self._counts(study)
            todo = impl.n_trials - complete - running
            if todo <= 0:
                if running == 0 or not self.heartbeat_interval:  # (without heartbeats a dead host never goes stale)
                    self._log_done(study, complete, running)
                    return
                time.sleep(self.poll_interval)  # other workers run the last trials (or they go stale)
                continue
            batch, overrides = self._claim(study, min(todo, n_jobs), sweep_dir, job_idx)
            if not batch:
                continue
            returns, errors = self._run_batch(study, batch, overrides, job_idx)
            job_idx += len(returns)
            launched, failed = launched + len(returns), failed + len(errors)
            if errors and failed / launched > impl.max_failure_rate:
                log.error(f"{failed} of {launched} trials failed (max_failure_rate={impl.max_failure_rate})")
                _ = errors[0].return_value  # raises the job's exception, with its traceback

    def _run_batch(self, study, batch: list, overrides: list[list[str]], job_idx: int) -> tuple[list, list]:
        """Launch the batch's jobs (heartbeats meanwhile) and tell their outcomes: (returns, failed jobs).
        Ctrl-C (SIGTERM): the untold trials are taken over, to continue from their checkpoints on the next call;
        a launcher error: they are failed. Never left RUNNING."""
        told: set[int] = set()
        interrupted = False
        try:
            with heartbeats(study._storage, [t._trial_id for t in batch], self.heartbeat_interval):
                returns = self.impl.launcher.launch(overrides, initial_job_idx=job_idx)
            return returns, self._tell(study, batch, returns, told)
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            for trial in (t for t in batch if t.number not in told):
                self._end_untold(study, trial, interrupted)

    def _log_done(self, study, complete: int, running: int) -> None:
        from optuna.trial import TrialState

        pruned = len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
        log.info(
            f"Study {study.study_name}: {complete - pruned} complete trials, {pruned} pruned, "
            f"{running} running (n_trials={self.impl.n_trials})"
        )

    def _claim(self, study, n: int, sweep_dir: Path, job_idx: int) -> tuple[list, list[list[str]]]:
        """Ask for ``n`` trials, keep those this worker may run, mark each with this worker and its job directory
        (``<sweep dir>/<trial number>``) at once (a trial left RUNNING must say by whom), then with the key of
        its settings; a takeover gets its dead trial's checkpoint. Returns (trials, their overrides)."""
        with warnings.catch_warnings():  # "heartbeat ... with Study.optimize": we beat ourselves
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            asked = [study.ask() for _ in range(n)]
        batch = self._take(study, asked)
        for i, trial in enumerate(batch):
            worker = {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "sweep_dir": str(sweep_dir),
                "job_num": job_idx + i,
                "job_dir": str((sweep_dir / str(trial.number)).resolve()),
            }
            trial.set_user_attr(WORKER_ATTR, worker)  # one write each (a storage round trip per attribute)
        lines = [self._overrides(study, trial) for trial in batch]
        command = [str(o) for o in OmegaConf.select(self.config, "hydra.overrides.task", default=[]) or []]
        for trial, line in zip(batch, lines, strict=True):
            trial.set_user_attr(RUN_KEY_ATTR, run_key(line, command))
            self._adopt(study, trial)
        return batch, lines

    def _adopt(self, study, trial) -> None:
        """A takeover trial: the dead trial's reported epochs, and its checkpoint in this trial's job directory
        when both ran the same settings (its MLflow run, which the job reopens, is retagged with this trial)."""
        dead_number = trial.user_attrs.get(TAKES_OVER)
        if dead_number is None:
            return
        storage = backend(study)
        dead = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study._study_id, int(dead_number)))
        copy_reports(study, dead, trial)
        theirs, worker = dead.user_attrs.get(WORKER_ATTR) or {}, trial.user_attrs[WORKER_ATTR]
        same = theirs.get("job_dir") and dead.user_attrs.get(RUN_KEY_ATTR) == trial.user_attrs[RUN_KEY_ATTR]
        copied = copy_checkpoint(theirs["job_dir"], Path(worker["job_dir"])) if same else None
        if copied is None:
            why = "it has no checkpoint" if same else "the settings differ"
            log.info(f"Trial {trial.number} takes over trial {dead_number} from the start ({why}): {trial.params}")
            return
        log.info(
            f"Trial {trial.number} takes over trial {dead_number} (interrupted before): it continues from its "
            f"checkpoint, copied to {copied}"
        )
        self._retag_run(study, int(dead_number), trial.number, worker)

    def _retag_run(self, study, dead_number: int, number: int, worker: dict) -> None:
        """The MLflow run of trial ``dead_number``, which its takeover ``number`` reopens, now names the takeover."""
        if self.parent is None:
            return
        from mlflow.entities import RunTag

        tags = {
            "optuna.trial_number": number,
            TAKES_OVER_TAG: dead_number,
            "sweep.job_num": number,
            "sweep.dir": str(Path(worker["sweep_dir"]).resolve()),
        }
        query = f"tags.`optuna.study` = '{study.study_name}' and tags.`optuna.trial_number` = '{dead_number}'"
        with contextlib.suppress(Exception):
            client = self.parent.client
            for run in client.search_runs([self.parent.experiment_id], filter_string=query):
                client.log_batch(run.info.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def _overrides(self, study, trial) -> list[str]:
        """The Hydra overrides of ``trial``'s job (its sampled values, the fixed ones, its directory and number)."""
        from mmlexp.search_space import DRAW_PREFIX, OVERRIDES_ATTR, format_override

        distributions, fixed, fixed_overrides = self.search
        study.sampler = self._sampler(trial.number)
        # fixed overrides added here rather than by _configure_trials, which stores each one as a
        # user attribute of every trial (a storage write each; the job's MLflow run has them)
        (line,) = self.impl._configure_trials([trial], distributions, {}, fixed_overrides)
        line = [o for o in line if not o.startswith(DRAW_PREFIX)]
        line += [f"{k}={v}" for k, v in fixed.items()]
        line += [format_override(k, v) for k, v in trial.user_attrs.get(OVERRIDES_ATTR, {}).items()]
        return line + [f"hydra.sweep.subdir={trial.number}", f"+hydra.job.env_set.{TRIAL_ENV}={trial.number}"]

    @staticmethod
    def _tell(study, batch: list, returns: list, told: set[int]) -> list:
        """Tell the study each job's outcome (pruned, its value, or failed); returns the failed jobs."""
        from optuna.trial import TrialState

        errors = []
        for trial, ret in zip(batch, returns, strict=True):
            faults.hit("ledger")  # fault injection (tests/faults): a no-op unless MMLEXP_FAULT is set
            if is_pruned(ret._return_value):  # the job's reporter stopped it (mmlexp.sweep.pruning)
                study.tell(trial, state=TrialState.PRUNED)
                log.info(f"Trial {trial.number} pruned: {ret._return_value}")
                told.add(trial.number)
                continue
            try:
                value = float(ret.return_value)  # re-raises the job's exception
                if not math.isfinite(value):
                    raise ValueError(f"the objective is {value}")
                study.tell(trial, value)
            except Exception as err:
                study.tell(trial, state=TrialState.FAIL)
                log.warning(f"Trial {trial.number} failed: {err}")
                errors.append(ret)
            told.add(trial.number)
        return errors

    def _sampler(self, number: int):
        """The sampler for trial ``number``: seeded with seed + number, so a resumed study or a second worker
        does not replay the first trials' random draws (TPE's startup trials), and each trial is reproducible."""
        seed = OmegaConf.select(self.sampler_config, "seed") if isinstance(self.sampler_config, DictConfig) else None
        if seed is None:
            return self.impl.sampler
        from hydra.utils import execution_whitelist, instantiate

        targets = ("hydra_plugins.hydra_optuna_sweeper.*", "optuna.samplers.*")
        return instantiate(
            self.sampler_config, seed=int(seed) + number, _execution_whitelist_=execution_whitelist(targets, reset=True)
        )

    def _take(self, study, asked: list) -> list:
        """Keep the asked trials that fit the budget: concurrent workers may race for the last slots
        (lower trial numbers win); a surplus trial, or a takeover that lost its race, is failed before it runs."""
        from optuna.trial import TrialState

        states = (*_finished_states(), TrialState.RUNNING)
        live = sorted(t.number for t in study.get_trials(deepcopy=False, states=states))
        keep = []
        for trial in asked:
            if not is_valid(study, trial):
                skip(study, trial._trial_id, f"trial {trial.user_attrs[TAKES_OVER]} was taken over by another trial")
            elif live.index(trial.number) >= self.impl.n_trials:
                skip(study, trial._trial_id, "the study already had n_trials complete or running trials")
            else:
                keep.append(trial)
        return keep

    def _fail_stale(self, study) -> None:
        """Take over the RUNNING trials whose sweeper died: a dead pid on this host, or no Optuna heartbeat for
        ``grace_period`` s (RDB storage, any host). Each is failed and its MLflow run marked KILLED."""
        from optuna.trial import TrialState

        stale = set(_stale_trial_ids(study))
        host = socket.gethostname()
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            attrs = trial.user_attrs.get(WORKER_ATTR) or {}
            if attrs.get("host") == host and attrs.get("pid") and not alive(attrs["pid"], trial.datetime_start):
                self._replace(study, trial, f"a dead sweep (pid {attrs['pid']})")
            elif trial._trial_id in stale:
                self._replace(study, trial, f"a sweep without a heartbeat for {self.grace_period} s ({attrs})")

    def _replace(self, study, trial, why: str) -> None:
        """Fail ``trial`` (left running by ``why``), close its MLflow run and enqueue its takeover."""
        number = take_over(study, trial)
        if number is None:  # another worker did, or the trial ended meanwhile
            return
        log.warning(
            f"Trial {trial.number} was left running by {why}: marked FAIL; trial {number} takes it over "
            "(the same parameters, from its last checkpoint)"
        )
        self._close_trial_run(study, trial)

    def _end_untold(self, study, trial, interrupted: bool) -> None:
        """A trial of the batch that was not told (Ctrl-C, a launcher error): taken over after Ctrl-C (the next
        call continues it), else failed."""
        from optuna.trial import TrialState

        with contextlib.suppress(Exception):
            if interrupted and take_over(study, trial) is not None:
                log.warning(f"Trial {trial.number} interrupted: re-run the command to continue it")
            else:
                study.tell(trial, state=TrialState.FAIL)

    def _close_trial_run(self, study, trial) -> None:
        """Mark the MLflow run of a stale trial KILLED (best effort)."""
        if self.parent is None:
            return
        with contextlib.suppress(Exception):
            client = self.parent.client
            query = (
                f"tags.`optuna.study` = '{study.study_name}' and tags.`optuna.trial_number` = '{trial.number}'"
                " and attributes.status = 'RUNNING'"
            )
            for run in client.search_runs([self.parent.experiment_id], filter_string=query):
                client.set_terminated(run.info.run_id, status="KILLED")

    def _report(self, study, sweep_dir: Path, overrides_attr: str) -> None:
        """``optimization_results.yaml`` in the sweep dir; best value and trial on the parent run."""
        from optuna.trial import TrialState

        from mmlexp.search_space import DRAW_PREFIX

        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not complete:
            return
        best = study.best_trial
        overrides = {k: v for k, v in best.params.items() if not k.startswith(DRAW_PREFIX)}
        overrides |= best.user_attrs.get(overrides_attr, {})
        results = {
            "name": "optuna",
            "study_name": study.study_name,
            "complete_trials": len(complete),
            "best_trial": best.number,
            "best_value": best.value,
            "best_params": best.params,
            "best_overrides": overrides,
        }
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        log.info(f"Best trial {best.number}: value {best.value} with {overrides}")
        if self.parent is not None:
            with contextlib.suppress(Exception):
                self.parent.log_metrics(
                    {"best_value": best.value, "complete_trials": len(complete)}, step=len(complete)
                )
                self.parent.set_tags(
                    {"best.trial_number": best.number, "best.overrides": json.dumps(overrides)[:MAX_TAG]}
                )


def _finished_states() -> tuple:
    from optuna.trial import TrialState

    return TrialState.COMPLETE, TrialState.PRUNED


def _stale_trial_ids(study) -> list[int]:
    """Ids of the RUNNING trials without an Optuna heartbeat for the grace period (none without heartbeats)."""
    storage = study._storage
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    return list(storage._get_stale_trial_ids(study._study_id)) if interval else []

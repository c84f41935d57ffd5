"""Sweeps: one MLflow parent run per sweep with its jobs as child runs, and a resumable Optuna sweeper.

* ``SweepCallback`` (``hydra.callbacks`` in conf/config.yaml). For a grid
  (``python -m mmlexp -m num_negatives=10,50``) it opens the parent MLflow run when the multirun starts and
  ends it FINISHED, FAILED or KILLED (Ctrl-C, SIGTERM) when it ends. It limits torch threads per job when a
  launcher runs jobs side by side (``threads_per_job``).
* ``OptunaSweeper`` (``hydra/sweeper=mmlexp_optuna``, used by conf/hparams_search/*): hydra-optuna-sweeper's
  ask/launch/tell loop with a study-level budget: ``n_trials`` is the number of COMPLETE trials the study must
  end with, so re-running the same command resumes the study and runs only the missing trials. Trials left
  RUNNING by a killed sweep are failed (a dead process on this host, or Optuna heartbeats from any host) and
  their MLflow runs marked KILLED. Every input is checked before the study or the MLflow store is touched.
  The parent MLflow run belongs to the study (a resumed study keeps its parent).
* ``job_tags()``: what a job adds to its MLflow run: ``mlflow.parentRunId``, ``sweep.id``, ``sweep.job_num``,
  ``sweep.overrides`` (and ``optuna.study`` / ``optuna.trial_number``). The sweep writes ``sweep.json`` in its
  sweep directory; jobs read it (any launcher: in process, joblib workers, submitit on a shared disk).

This module is a Hydra plugin (entry point in pyproject.toml), imported at every Hydra start: keep
module-level imports light (no torch, no optuna, no mlflow).
"""

import contextlib
import difflib
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, RunMode, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# conf/config.yaml registers SweepCallback (and mml_optuna names mmlexp.search.custom_search_space); Hydra 1.4
# instantiates both without an execution whitelist and warns on every run. This module is imported (entry point)
# before that happens: silence the warning for these two targets only. The lasting fix is
# @hydra.main(execution_whitelist=[...]) in __main__.py.
warnings.filterwarnings("ignore", category=UserWarning, message=r"hydra\.utils\.instantiate\(\) resolved "
                        r"_target_='mmlexp\.(sweep\.SweepCallback|search\.custom_search_space)' with no")

SWEEP_FILE = "sweep.json"
TRIAL_ENV = "MMLEXP_OPTUNA_TRIAL"          # the trial number, set per job by OptunaSweeper
PARENT_ATTR = "mlflow_parent_run_id"       # study user attribute: the study's parent MLflow run
WORKER_ATTR = "worker"                     # trial user attribute: host, pid, sweep_dir, job_num of its sweeper
MAX_TAG = 5000


class SweepError(ValueError):
    """A sweep that cannot start: the message names the key, the value and what is allowed."""


# --------------------------------------------------------------------------------------------- job side

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
    try:
        hc = HydraConfig.get()
    except ValueError:  # not under Hydra (a notebook)
        return {}
    if hc.mode != RunMode.MULTIRUN:
        return {}
    sweep_dir = _sweep_dir(hc)
    tags = {"sweep.dir": str(sweep_dir), "sweep.job_num": str(hc.job.num),
            "sweep.overrides": " ".join(hc.overrides.task)[:MAX_TAG]}
    info = read_sweep_file(sweep_dir)
    if info.get("parent_run_id") and info.get("tracking_uri") == tracking_uri:
        tags |= {"mlflow.parentRunId": info["parent_run_id"], "sweep.id": info["sweep_id"]}
    if os.environ.get(TRIAL_ENV) is not None and info.get("study"):
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
    if launcher.get("cpus_per_task"):
        return int(launcher.get("cpus_per_task"))
    parallel = launcher.get("n_jobs")
    if parallel is None and target.endswith("LocalLauncher") and "submitit" in target:
        sweeper = hydra_cfg.get("sweeper") or {}
        parallel = sweeper.get("n_jobs") or sweeper.get("max_batch_size")
    if not parallel or parallel == 1:
        return None
    if parallel < 0:  # joblib: -1 all cores, -2 all but one...
        parallel = max(1, cores + 1 + parallel)
    return max(1, cores // parallel)


# ------------------------------------------------------------------------------------------ parent run

def _tracking(config: DictConfig) -> dict[str, Any] | None:
    tracking = config.get("tracking")
    if tracking is None or not tracking.get("enabled", True):
        return None
    return {"uri": tracking.uri, "experiment": tracking.experiment,
            "artifact_location": tracking.get("artifact_location")}


def open_parent(config: DictConfig, sweep_dir: Path, *, name: str, sweep_id: str, kind: str,
                params: dict[str, Any], reuse: str | None = None, **info: Any):
    """Create (or reopen ``reuse``) the sweep's parent MLflow run and write ``sweep.json``; None: no tracking."""
    from mmlexp.tracking import Tracker, git_commit

    tracking = _tracking(config)
    if tracking is None:
        return None
    tracker = Tracker(tracking["uri"], tracking["experiment"], tracking["artifact_location"])
    if not (reuse and tracker.reopen(reuse)):
        tags = {"sweep.role": "parent", "sweep.kind": kind, "sweep.id": sweep_id,
                "sweep.dir": str(sweep_dir.resolve()), "sweep.command": _command()[:MAX_TAG],
                "host": socket.gethostname(), "git_commit": git_commit()}
        tracker.start(name, {k: str(v)[:MAX_TAG] for k, v in params.items()}, tags)
    write_sweep_file(sweep_dir, {"parent_run_id": tracker.run_id, "sweep_id": sweep_id,
                                 "tracking_uri": tracking["uri"], **info})
    return tracker


def _command() -> str:
    argv = list(sys.argv)
    if argv and argv[0].endswith("__main__.py"):
        argv[0] = "python -m mmlexp"
    return " ".join(argv)


def exit_status() -> str:
    """The status of a run ended in a ``finally``: FINISHED, KILLED (Ctrl-C, SIGTERM) or FAILED."""
    error = sys.exc_info()[1]
    return "FINISHED" if error is None else "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


class SweepCallback(Callback):
    """Parent MLflow run of a grid sweep; SIGTERM as Ctrl-C for the whole sweep; threads per job."""

    def __init__(self) -> None:
        self.parent = None
        self._sigterm = None

    def __getstate__(self) -> dict[str, Any]:  # jobs in other processes (joblib, submitit) need no parent run
        return {**self.__dict__, "parent": None, "_sigterm": None}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if threading.current_thread() is threading.main_thread():
            self._sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
        if OmegaConf.select(config, "hydra.sweeper._target_") == f"{__name__}.{OptunaSweeper.__name__}":
            return  # OptunaSweeper opens its parent run itself, after checking its inputs
        from hydra.core.override_parser.overrides_parser import OverridesParser

        sweep_dir = Path(str(config.hydra.sweep.dir))
        overrides = list(config.hydra.overrides.task)
        swept = [o.input_line for o in OverridesParser.create().parse_overrides(overrides) if o.is_sweep_override()]
        self.parent = open_parent(config, sweep_dir, name=f"grid {' '.join(swept) or sweep_dir}"[:250],
                                  sweep_id=str(sweep_dir), kind="grid", params={"sweep.overrides": " ".join(overrides)})

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent is not None:
            status = exit_status()
            with contextlib.suppress(Exception):  # the best job on the parent (best effort)
                self._summarise(config)
            self.parent.finish(status)
        if self._sigterm is not None:
            signal.signal(signal.SIGTERM, self._sigterm)

    def _summarise(self, config: DictConfig) -> None:
        from mmlexp.tracking import mlflow_key

        # the selection metric: on the validation slice under eval.selection=valid (never tune on test)
        prefix = "valid/" if OmegaConf.select(config, "eval.selection") == "valid" else ""
        client, metric = self.parent.client, f"best/{prefix}{mlflow_key(str(config.trainer.monitor))}"
        jobs = client.search_runs([self.parent.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{self.parent.run_id}'")
        done = [r for r in jobs if r.info.status == "FINISHED" and metric in r.data.metrics]
        if done:
            best = max(done, key=lambda r: r.data.metrics[metric])
            self.parent.log_metrics({"best_value": best.data.metrics[metric], "finished_jobs": len(done)}, step=0)
            self.parent.set_tags({"best.run_id": best.info.run_id, "best.job_num": best.data.tags.get("sweep.job_num"),
                                  "best.overrides": best.data.tags.get("sweep.overrides", "")})

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        threads = threads_per_job(config.hydra)
        if threads and OmegaConf.select(config, "trainer.num_threads") is None:
            import torch

            torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------- Optuna sweeper

def _mask(url: str | None) -> str | None:
    with contextlib.suppress(Exception):
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    return url


def _alive(pid: Any, started: Any) -> bool:
    """Is the process that ran a trial (started at ``started``) still running? (pid reuse aware)"""
    import psutil

    try:
        proc = psutil.Process(int(pid))
        return started is None or proc.create_time() <= started.timestamp() + 1
    except (psutil.Error, TypeError, ValueError):
        return False


@contextlib.contextmanager
def _heartbeats(storage: Any, trial_ids: list[int], interval: int | None):
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


class OptunaSweeper(Sweeper):
    """hydra-optuna-sweeper with a study-level budget (resume), input checks first, an MLflow parent run.

    Same settings as ``hydra/sweeper=optuna`` plus ``space`` (``mmlexp.search.MarginSpace``: constrained
    margins/weights), ``heartbeat_interval``/``grace_period`` (seconds; stale trials of dead hosts) and
    ``poll_interval`` (seconds between checks while other workers finish the last trials).
    """

    def __init__(self, sampler: Any, direction: Any, storage: str | None, study_name: str | None, n_trials: int,
                 n_jobs: int, max_failure_rate: float = 0.0, custom_search_space: str | None = None,
                 params: DictConfig | None = None, space: DictConfig | None = None,
                 heartbeat_interval: int | None = 60, grace_period: int | None = None,
                 poll_interval: float | None = None) -> None:
        from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as StockSweeper

        self.impl = StockSweeper(sampler, direction, storage, study_name, n_trials, n_jobs, max_failure_rate,
                                 custom_search_space, params).sweeper
        self.sampler_config = sampler
        self.custom_search_space = custom_search_space
        self.space = OmegaConf.to_container(space, resolve=True) if isinstance(space, DictConfig) else space
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.poll_interval = poll_interval or min(heartbeat_interval or 5, 5)
        self.parent = None
        self.config: DictConfig | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.config = config

    # ---- checks: nothing is written before they pass
    def _plan(self, arguments: list[str]):
        from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

        from mmlexp.search import MarginSpace

        impl = self.impl
        n = impl.n_trials
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise SweepError(f"hydra.sweeper.n_trials={n!r}: must be an integer >= 1 "
                             "(the number of complete trials the study must have)")
        if not isinstance(impl.n_jobs, int) or impl.n_jobs == 0:
            raise SweepError(f"hydra.sweeper.n_jobs={impl.n_jobs!r}: must be an integer >= 1 "
                             "(trials launched together), or -1 for one per core")
        impl._process_searchspace_config()
        try:
            distributions, fixed, fixed_overrides = create_params_from_overrides(
                impl._parse_sweeper_params_config() + list(arguments))
        except Exception as err:  # a malformed sweep expression
            raise SweepError(f"hydra.sweeper.params: {err}") from err
        for name in fixed:
            distributions.pop(name, None)
        derived: list[str] = []
        if self.space is not None or self.custom_search_space == "mmlexp.search.custom_search_space":
            if self.custom_search_space != "mmlexp.search.custom_search_space":
                raise SweepError("hydra.sweeper.space is set but hydra.sweeper.custom_search_space is "
                                 f"{self.custom_search_space!r}: set it to mmlexp.search.custom_search_space")
            try:
                derived = MarginSpace.from_config(self.space).keys()
            except (TypeError, ValueError) as err:
                raise SweepError(str(err)) from err
        for name in derived:
            if name in distributions or name in fixed:
                raise SweepError(f"hydra.sweeper.params.{name}: also set by hydra.sweeper.space; remove one")
        self._check_keys(list(distributions), "unknown search space key {name!r} (hydra.sweeper.params or a "
                         "command-line sweep): it is not in the config")
        self._check_keys(derived, "hydra.sweeper.space writes {name!r}, which is not in the config")
        if not distributions and not derived and not impl.custom_search_space_extender:
            raise SweepError("hydra.sweeper.params is empty: nothing to search")
        return distributions, fixed, fixed_overrides

    def _check_keys(self, names: list[str], message: str) -> None:
        config = self.config
        choices = set(config.hydra.runtime.choices.keys())
        job = OmegaConf.masked_copy(config, [k for k in config.keys() if k != "hydra"])
        known = _leaf_keys(OmegaConf.to_container(job, resolve=False))
        for name in names:
            if name[:1] in "+~" or "/" in name or name in choices:
                continue
            if OmegaConf.select(config, name, default=_ABSENT) is _ABSENT:
                close = difflib.get_close_matches(name, known, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                loss = config.hydra.runtime.choices.get("loss")
                raise SweepError(message.format(name=name) + f" (loss={loss}){hint}")

    def _open_study(self):
        import optuna

        impl = self.impl
        url, storage = impl.storage, None
        if url:
            try:
                if str(url).startswith("sqlite:///"):
                    Path(str(url)[len("sqlite:///"):]).expanduser().resolve().parent.mkdir(parents=True,
                                                                                         exist_ok=True)
                with warnings.catch_warnings():  # heartbeats are "experimental" (stable since Optuna 2.9)
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    storage = optuna.storages.RDBStorage(
                        str(url), heartbeat_interval=self.heartbeat_interval or None,
                        grace_period=self.grace_period if self.heartbeat_interval else None,
                        heartbeat_stale_trial_callback=lambda study, trial: self._close_trial_run(study, trial))
            except Exception as err:
                reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise SweepError(f"hydra.sweeper.storage={_mask(str(url))!r}: cannot open the Optuna storage "
                                 f"({type(err).__name__}: {reason})") from err
        try:
            return optuna.create_study(study_name=impl.study_name, storage=storage, sampler=impl.sampler,
                                       directions=impl._get_directions(), load_if_exists=True)
        except ValueError as err:
            raise SweepError(f"hydra.sweeper.study_name={impl.study_name!r}: {err}") from err

    # ---- the loop
    def sweep(self, arguments: list[str]) -> None:
        from mmlexp.search import OVERRIDES_ATTR

        try:
            distributions, fixed, fixed_overrides = self._plan(arguments)
            study = self._open_study()
        except SweepError as err:  # a clear message, no traceback; nothing was written
            print(f"mmlexp: error: {err}", file=sys.stderr)
            sys.exit(2)
        config, impl = self.config, self.impl
        sweep_dir = Path(str(config.hydra.sweep.dir))
        name = study.study_name
        params = {"study_name": name, "storage": _mask(impl.storage), "direction": impl._get_directions()[0],
                  "sampler": type(impl.sampler).__name__, "n_trials": impl.n_trials,
                  "search.params": json.dumps({k: str(v) for k, v in (impl.params or {}).items()}),
                  "search.space": json.dumps(self.space)}
        self.parent = open_parent(config, sweep_dir, name=f"optuna {name}", sweep_id=f"optuna/{name}",
                                  kind="optuna", params=params, reuse=study.user_attrs.get(PARENT_ATTR),
                                  study=name, storage=_mask(impl.storage))
        if self.parent is not None and study.user_attrs.get(PARENT_ATTR) != self.parent.run_id:
            study.set_user_attr(PARENT_ATTR, self.parent.run_id)
        status = "FAILED"
        try:
            self._loop(study, distributions, fixed, fixed_overrides, sweep_dir, OVERRIDES_ATTR)
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
        from optuna.trial import TrialState

        states = [t.state for t in study.get_trials(deepcopy=False)]
        return states.count(TrialState.COMPLETE), states.count(TrialState.RUNNING)

    def _loop(self, study, distributions, fixed, fixed_overrides, sweep_dir: Path, overrides_attr: str) -> None:
        from optuna.trial import TrialState

        from mmlexp.search import DRAW_PREFIX, format_override

        impl = self.impl
        n_jobs = impl.n_jobs if impl.n_jobs > 0 else max(1, len(os.sched_getaffinity(0)) + 1 + impl.n_jobs)
        launched = failed = job_idx = 0
        while True:
            self._fail_stale(study)
            complete, running = self._counts(study)
            todo = impl.n_trials - complete - running
            if todo <= 0:
                if running == 0 or not self.heartbeat_interval:  # (without heartbeats a dead host never goes stale)
                    log.info(f"Study {study.study_name}: {complete} complete trials, {running} running "
                             f"(n_trials={impl.n_trials})")
                    return
                time.sleep(self.poll_interval)  # other workers run the last trials (or they go stale)
                continue
            with warnings.catch_warnings():  # "heartbeat ... with Study.optimize": we beat ourselves
                warnings.filterwarnings("ignore", message="Heartbeat of storage")
                asked = [study.ask() for _ in range(min(todo, n_jobs))]
            batch = self._take(study, asked)
            if not batch:
                continue
            for i, trial in enumerate(batch):  # one write each (a storage round trip per attribute)
                trial.set_user_attr(WORKER_ATTR, {"host": socket.gethostname(), "pid": os.getpid(),
                                                  "sweep_dir": str(sweep_dir), "job_num": job_idx + i})
            told: set[int] = set()
            try:
                overrides = []
                for trial in batch:
                    study.sampler = self._sampler(trial.number)
                    # fixed overrides added here rather than by _configure_trials, which stores each one as a
                    # user attribute of every trial (a storage write each; the job's MLflow run has them)
                    line, = impl._configure_trials([trial], distributions, {}, fixed_overrides)
                    line = [o for o in line if not o.startswith(DRAW_PREFIX)]
                    line += [f"{k}={v}" for k, v in fixed.items()]
                    line += [format_override(k, v) for k, v in trial.user_attrs.get(overrides_attr, {}).items()]
                    overrides.append(line + [f"+hydra.job.env_set.{TRIAL_ENV}={trial.number}"])
                with _heartbeats(study._storage, [t._trial_id for t in batch], self.heartbeat_interval):
                    returns = impl.launcher.launch(overrides, initial_job_idx=job_idx)
                job_idx += len(returns)
                errors = []
                for trial, ret in zip(batch, returns):
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
            finally:  # Ctrl-C / an error in the launcher: the batch's trials are not left RUNNING
                for trial in batch:
                    if trial.number not in told:
                        with contextlib.suppress(Exception):
                            study.tell(trial, state=TrialState.FAIL)
            launched, failed = launched + len(returns), failed + len(errors)
            if errors and failed / launched > impl.max_failure_rate:
                log.error(f"{failed} of {launched} trials failed (max_failure_rate={impl.max_failure_rate})")
                errors[0].return_value  # raises the job's exception, with its traceback

    def _sampler(self, number: int):
        """The sampler for trial ``number``: seeded with seed + number, so a resumed study or a second worker
        does not replay the first trials' random draws (TPE's startup trials), and each trial is reproducible."""
        seed = OmegaConf.select(self.sampler_config, "seed") if isinstance(self.sampler_config, DictConfig) else None
        if seed is None:
            return self.impl.sampler
        from hydra.utils import instantiate

        return instantiate(self.sampler_config, seed=int(seed) + number, _execution_whitelist_=(
            "hydra_plugins.hydra_optuna_sweeper.*", "optuna.samplers.*"))

    def _take(self, study, asked: list) -> list:
        """Keep the asked trials that fit the budget: concurrent workers may race for the last slots
        (lower trial numbers win); a surplus trial is failed before anything runs."""
        from optuna.trial import TrialState

        live = sorted(t.number for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                                                   TrialState.RUNNING)))
        keep = []
        for trial in asked:
            if live.index(trial.number) < self.impl.n_trials:
                keep.append(trial)
            else:
                trial.set_user_attr("skipped", "the study already had n_trials complete or running trials")
                study.tell(trial, state=TrialState.FAIL)
        return keep

    def _fail_stale(self, study) -> None:
        """Fail RUNNING trials whose sweeper died: a dead pid on this host, or no heartbeat (RDB storage)."""
        import optuna
        from optuna.trial import TrialState

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # calls _close_trial_run for each
        host = socket.gethostname()
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            attrs = trial.user_attrs.get(WORKER_ATTR) or {}
            if attrs.get("host") == host and attrs.get("pid") and not _alive(attrs["pid"], trial.datetime_start):
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    if study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                        log.warning(f"Trial {trial.number} was left running by a dead sweep (pid {attrs['pid']}): "
                                    "marked FAIL; it will be run again")
                        self._close_trial_run(study, trial)

    def _close_trial_run(self, study, trial) -> None:
        """Mark the MLflow run of a stale trial KILLED (best effort)."""
        if self.parent is None:
            return
        with contextlib.suppress(Exception):
            client = self.parent.client
            query = (f"tags.`optuna.study` = '{study.study_name}' and tags.`optuna.trial_number` = '{trial.number}'"
                     " and attributes.status = 'RUNNING'")
            for run in client.search_runs([self.parent.experiment_id], filter_string=query):
                client.set_terminated(run.info.run_id, status="KILLED")

    def _report(self, study, sweep_dir: Path, overrides_attr: str) -> None:
        """``optimization_results.yaml`` in the sweep dir; best value and trial on the parent run."""
        from optuna.trial import TrialState

        from mmlexp.search import DRAW_PREFIX

        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not complete:
            return
        best = study.best_trial
        overrides = {k: v for k, v in best.params.items() if not k.startswith(DRAW_PREFIX)}
        overrides |= best.user_attrs.get(overrides_attr, {})
        results = {"name": "optuna", "study_name": study.study_name, "complete_trials": len(complete),
                   "best_trial": best.number, "best_value": best.value, "best_params": best.params,
                   "best_overrides": overrides}
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        log.info(f"Best trial {best.number}: value {best.value} with {overrides}")
        if self.parent is not None:
            with contextlib.suppress(Exception):
                self.parent.log_metrics({"best_value": best.value, "complete_trials": len(complete)},
                                        step=len(complete))
                self.parent.set_tags({"best.trial_number": best.number,
                                      "best.overrides": json.dumps(overrides)[:MAX_TAG]})


_ABSENT = object()


def _leaf_keys(tree: Any, prefix: str = "") -> list[str]:
    if not isinstance(tree, dict):
        return [prefix[:-1]] if prefix else []
    out = [prefix[:-1]] if prefix else []
    for key, value in tree.items():
        out += _leaf_keys(value, f"{prefix}{key}.")
    return out


__all__ = ["SweepCallback", "OptunaSweeper", "SweepError", "job_tags", "threads_per_job", "open_parent",
           "read_sweep_file", "SWEEP_FILE", "TRIAL_ENV"]

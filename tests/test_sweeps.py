"""Sweeps through the real entrypoint (`python -m mmlexp -m ...`) on the embedded sample, tiny settings:
grids as child runs of one parent run, Optuna searches that resume after `kill -9`, parallel launchers,
and bad input refused before anything is written."""

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from optuna.trial import TrialState

from mmlexp.sweep import job_tags, threads_per_job

NO_WHITELIST_IS_AN_ERROR = "error:hydra.utils.instantiate() resolved"
TINY = ["trainer.epochs=1", "trainer.max_steps=3", "trainer.progress=false", "num_negatives=10"]


def store_args(tmp_path: Path) -> list[str]:
    return [f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifact_location={tmp_path}/artifacts"]


def optuna_args(tmp_path: Path, n_trials: int, *extra: str) -> list[str]:
    return [
        "hparams_search=mml_optuna",
        f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db",
        f"hydra.sweeper.n_trials={n_trials}",
        *extra,
    ]


def sweep_cmd(tmp_path: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "mmlexp", "-m", *store_args(tmp_path), *TINY, *overrides]


def sweep_cli(tmp_path: Path, *overrides: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a sweep in ``tmp_path`` (so ``multirun/`` lands there). Hydra's warning that it instantiated a target
    with no execution whitelist (an error from Hydra 1.5) is an error here, in the sweep and in its jobs."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONWARNINGS=NO_WHITELIST_IS_AN_ERROR)
    proc = subprocess.run(
        sweep_cmd(tmp_path, *overrides), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def mlflow_runs(tmp_path: Path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("mmlexp")
    runs = client.search_runs([exp.experiment_id]) if exp else []
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("sweep.role") != "parent"]
    return parents, children


def load_study(tmp_path: Path, name: str = "mml_sample") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/optuna.db")


def read_only(db: Path, sql: str) -> list:
    """Rows of ``sql`` on the SQLite file ``db``, opened read-only; [] while the file or its tables do not exist
    yet (a running sweep owns the stores: opening them through Optuna or MLflow would race it to create them)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            return conn.execute(sql).fetchall()
    except sqlite3.Error:
        return []


def peek(tmp_path: Path) -> tuple[dict[int, str], set[str]]:
    """Trial states and the trial numbers of RUNNING MLflow runs, read-only (``read_only``)."""
    trials = dict(read_only(tmp_path / "optuna.db", "SELECT number, state FROM trials"))
    live = {
        v
        for (v,) in read_only(
            tmp_path / "mlflow.db",
            "SELECT t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE t.key = 'optuna.trial_number' AND r.status = 'RUNNING'",
        )
    }
    return trials, live


def check_trials_match_runs(study: optuna.Study, parent, children) -> None:
    """Every COMPLETE trial has exactly one FINISHED child run of the parent, logged with its value."""
    complete = {t.number: t for t in study.trials if t.state == TrialState.COMPLETE}
    finished = [r for r in children if r.info.status == "FINISHED"]
    numbers = sorted(int(r.data.tags["optuna.trial_number"]) for r in finished)
    assert numbers == sorted(complete), (numbers, sorted(complete))  # none lost, none duplicated
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["optuna.study"] == study.study_name
    for run in finished:
        trial = complete[int(run.data.tags["optuna.trial_number"])]
        assert run.data.metrics["best/recall_at_20"] == pytest.approx(trial.value)
        assert run.data.params["loss.margins"] == str(trial.user_attrs["overrides"]["loss.margins"])


# ------------------------------------------------------------------------------------------------ grids


def test_grid_jobs_are_child_runs_of_one_parent_run(tmp_path):
    sweep_cli(tmp_path, "loss=mml,ccl")
    (parent,), children = mlflow_runs(tmp_path)
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.kind"] == "grid"
    assert parent.info.run_name == "grid loss=mml,ccl"
    assert "loss=mml,ccl" in parent.data.params["sweep.overrides"]
    assert len(children) == 2 and {r.info.status for r in children} == {"FINISHED"}
    by_job = {r.data.tags["sweep.job_num"]: r for r in children}
    assert sorted(by_job) == ["0", "1"]
    for job, loss in (("0", "mml"), ("1", "ccl")):
        tags = by_job[job].data.tags
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["sweep.id"] == parent.data.tags["sweep.id"]
        assert f"loss={loss}" in tags["sweep.overrides"].split() and tags["choice.loss"] == loss
        assert "best/recall_at_20" in by_job[job].data.metrics
    best = max(children, key=lambda r: r.data.metrics["best/recall_at_20"])
    assert parent.data.metrics["best_value"] == best.data.metrics["best/recall_at_20"]
    assert parent.data.tags["best.run_id"] == best.info.run_id
    sweep_dir = Path(tmp_path, parent.data.tags["sweep.dir"])
    assert sweep_dir.parent.parent.name == "multirun" and (sweep_dir / "0" / "best.pt").exists()


def test_a_grid_point_whose_run_was_deleted_trains_again(tmp_path):
    """Re-running a grid skips its finished points, except one whose run was deleted from the store (withdrawn in
    the MLflow UI): that point trains again, in a fresh run directory (the old one moved aside, not resumed)."""
    sweep_cli(tmp_path, "loss=mml,ccl")
    (parent,), children = mlflow_runs(tmp_path)
    by_loss = {r.data.tags["choice.loss"]: r for r in children}
    MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").delete_run(by_loss["mml"].info.run_id)
    proc = sweep_cli(tmp_path, "loss=mml,ccl")
    assert "Grid points [0]: their runs were deleted from the MLflow store" in proc.stderr + proc.stdout
    (again,), now = mlflow_runs(tmp_path)
    assert again.info.run_id == parent.info.run_id  # the same grid, its parent reopened
    losses = sorted(r.data.tags["choice.loss"] for r in now)
    assert losses == ["ccl", "mml"] and all(r.info.status == "FINISHED" for r in now)
    new_mml = next(r for r in now if r.data.tags["choice.loss"] == "mml")
    assert new_mml.info.run_id != by_loss["mml"].info.run_id and "resumed_from" not in new_mml.data.tags
    assert next(r for r in now if r.data.tags["choice.loss"] == "ccl").info.run_id == by_loss["ccl"].info.run_id
    sweep_dir = Path(tmp_path, parent.data.tags["sweep.dir"])
    assert (sweep_dir / "0" / "best.pt").exists() and len(list(sweep_dir.glob("0.withdrawn-*"))) == 1
    proc = sweep_cli(tmp_path, "loss=mml,ccl")  # nothing withdrawn now: nothing trains
    assert len(mlflow_runs(tmp_path)[1]) == 2 and "deleted from the MLflow store" not in proc.stderr + proc.stdout


def test_a_grid_without_tracking_asks_no_store_when_it_is_run_again(tmp_path):
    """With tracking off, re-running a finished grid skips its points without opening (so creating) an MLflow
    store to look for withdrawn runs."""
    sweep_cli(tmp_path, "tracking.enabled=false", "loss=mml,ccl")
    proc = sweep_cli(tmp_path, "tracking.enabled=false", "loss=mml,ccl")
    assert "2 finished, 0 to run" in proc.stderr + proc.stdout
    assert not (tmp_path / "mlflow.db").exists()


def test_a_failed_job_fails_the_grid_parent(tmp_path):
    # a diverging job fails after its child run started
    proc = sweep_cli(
        tmp_path, "trainer.lr=1e30", "encoder.similarity=dot", "loss=mse", "trainer.log_every=1", check=False
    )
    assert proc.returncode != 0
    (parent,), (child,) = mlflow_runs(tmp_path)
    assert parent.info.status == "FAILED" and child.info.status == "FAILED"


def test_job_tags_are_empty_outside_a_sweep():
    assert job_tags("sqlite:///x.db") == {}


@pytest.mark.parametrize(
    "launcher, sweeper, cores, expected",
    [
        ({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, {}, 8, None),
        ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}, {}, 8, 4),
        ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": -1}, {}, 8, 1),
        ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 3}, {}, 2, 1),
        (
            {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", "cpus_per_task": 6},
            {},
            2,
            6,
        ),
        (
            {
                "_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
                "cpus_per_task": None,
            },
            {"n_jobs": 2},
            2,
            1,
        ),
    ],
)
def test_threads_per_job_do_not_oversubscribe_the_cores(launcher, sweeper, cores, expected):
    hydra_cfg = OmegaConf.create({"launcher": launcher, "sweeper": sweeper})
    assert threads_per_job(hydra_cfg, cores=cores) == expected


# ----------------------------------------------------------------------------------------------- Optuna


def test_optuna_study_resumes_after_kill_9_and_runs_only_the_missing_trials(tmp_path):
    """Start a 3-trial study, `kill -9` the sweep in the middle of a trial, re-run the same command.
    Each trial trains 2 full epochs on `sample` (about a second), so the 0.2 s poll sees one running."""
    args = optuna_args(tmp_path, 3, "trainer.max_steps=null", "trainer.epochs=2")
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(
            sweep_cmd(tmp_path, *args), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    killed, before = None, {}
    try:
        deadline = time.time() + 300
        while killed is None and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
            trials, live = peek(tmp_path)
            complete = [n for n, state in trials.items() if state == "COMPLETE"]
            running = [n for n, state in trials.items() if state == "RUNNING"]
            if complete and running and str(running[0]) in live:  # training, its MLflow run open
                os.killpg(proc.pid, signal.SIGKILL)
                killed = running[0]
    finally:
        if proc.poll() is None and killed is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert killed is not None, (tmp_path / "first.log").read_text()[-3000:]
    before = {t.number: t.value for t in load_study(tmp_path).trials if t.state == TrialState.COMPLETE}
    assert before
    before_runs = {r.data.tags["optuna.trial_number"]: r.info.run_id for r in mlflow_runs(tmp_path)[1]}

    proc = sweep_cli(tmp_path, *args)  # the same command
    study = load_study(tmp_path)
    states = {t.number: t.state for t in study.trials}
    assert states[killed] == TrialState.FAIL  # the interrupted trial is not counted complete...
    takeover = study.trials[killed].user_attrs["taken_over_by"]  # ...a trial with its parameters took it over
    assert states[takeover] == TrialState.COMPLETE and study.trials[takeover].params == study.trials[killed].params
    assert study.trials[takeover].user_attrs["takes_over"] == killed
    assert sum(s == TrialState.COMPLETE for s in states.values()) == 3
    assert len(states) == 4  # 3 complete + the killed one: only the missing trials ran
    for number, value in before.items():  # completed trials survived
        assert states[number] == TrialState.COMPLETE and study.trials[number].value == value
    (parent,), children = mlflow_runs(tmp_path)
    assert parent.info.status == "FINISHED" and parent.data.metrics["complete_trials"] == 3
    status = {r.data.tags["optuna.trial_number"]: r.info.status for r in children}
    # killed before its first checkpoint: its MLflow run is closed (KILLED); after: the takeover continued it
    resumed = (tmp_path / "multirun").glob(f"*/*/{killed}/checkpoint.pt")
    assert status.get(str(killed)) == (None if any(resumed) else "KILLED")
    for number in before:
        assert status[str(number)] == "FINISHED"
        assert before_runs[str(number)] in {r.info.run_id for r in children}  # the very same runs
    check_trials_match_runs(study, parent, children)
    # a third call with the study complete runs nothing
    sweep_cli(tmp_path, *args)
    assert len(load_study(tmp_path).trials) == 4 and len(mlflow_runs(tmp_path)[1]) == len(children)


def test_parallel_joblib_workers_lose_and_duplicate_no_trial(tmp_path):
    sweep_cli(tmp_path, *optuna_args(tmp_path, 4, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"))
    study = load_study(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert len({tuple(t.params.items()) for t in study.trials}) == 4  # four distinct suggestions
    (parent,), children = mlflow_runs(tmp_path)
    assert len(children) == 4
    check_trials_match_runs(study, parent, children)
    threads = str(max(1, len(os.sched_getaffinity(0)) // 2))  # the cores shared by the two workers
    assert {r.data.tags["torch.num_threads"] for r in children} == {threads}
    assert sorted(r.data.tags["sweep.job_num"] for r in children) == ["0", "1", "2", "3"]


def test_submitit_local_launcher_runs_the_trials(tmp_path):
    sweep_cli(
        tmp_path,
        *optuna_args(
            tmp_path, 2, "hydra/launcher=submitit_local", "hydra.sweeper.n_jobs=2", "hydra.launcher.timeout_min=10"
        ),
    )
    study = load_study(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    (parent,), children = mlflow_runs(tmp_path)
    check_trials_match_runs(study, parent, children)


def bare_sweeper(tmp_path: Path, n_trials: int = 2, heartbeat: int | None = 1):
    from mmlexp.sweep import OptunaSweeper

    sampler = OmegaConf.create({"_target_": "optuna.samplers.RandomSampler", "seed": 0})
    return OptunaSweeper(
        sampler,
        "maximize",
        f"sqlite:///{tmp_path}/optuna.db",
        "s",
        n_trials,
        1,
        heartbeat_interval=heartbeat,
        grace_period=heartbeat,
    )


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_stale_trials_are_failed_dead_local_process_at_once_other_hosts_after_the_grace_period(tmp_path):
    sweeper = bare_sweeper(tmp_path)
    study = sweeper._open_study()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    trials = {name: study.ask() for name in ("dead", "alive", "remote")}
    trials["dead"].set_user_attr("worker", {"host": socket.gethostname(), "pid": int(dead.stdout)})
    trials["alive"].set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
    trials["remote"].set_user_attr("worker", {"host": "elsewhere", "pid": 1})
    for trial in trials.values():
        study._storage.record_heartbeat(trial._trial_id)
    sweeper._fail_stale(study)
    state = lambda name: study._storage.get_trial(trials[name]._trial_id).state  # noqa: E731
    assert [state(n) for n in trials] == [TrialState.FAIL, TrialState.RUNNING, TrialState.RUNNING]
    study._storage.record_heartbeat(trials["alive"]._trial_id)
    time.sleep(2.5)  # grace period 1 s without heartbeat: stale, whatever the host
    sweeper._fail_stale(study)
    assert state("remote") == TrialState.FAIL


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_concurrent_workers_never_exceed_n_trials(tmp_path):
    """Two workers raced for the last slot: the lower trial number runs, the other is refused unrun."""
    sweeper = bare_sweeper(tmp_path, n_trials=2)
    study = sweeper._open_study()
    study.tell(study.ask(), 0.5)
    mine, theirs = study.ask(), study.ask()  # both saw one slot left
    assert sweeper._take(study, [theirs]) == [] and sweeper._take(study, [mine]) == [mine]
    refused = study._storage.get_trial(theirs._trial_id)
    assert refused.state == TrialState.FAIL and "skipped" in refused.user_attrs and not refused.params


# -------------------------------------------------------------------------------------------- bad input


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def store_template(tmp_path_factory):
    """A study with one complete trial and an MLflow store with one run, made once without the CLI."""
    path = tmp_path_factory.mktemp("stores")
    study = optuna.create_study(study_name="mml_sample", storage=f"sqlite:///{path}/optuna.db", direction="maximize")
    study.enqueue_trial({"loss.neg_weight": 100.0})
    study.optimize(lambda t: t.suggest_float("loss.neg_weight", 10, 2000, log=True) / 1e4, n_trials=1)
    client = MlflowClient(f"sqlite:///{path}/mlflow.db")
    exp = client.create_experiment("mmlexp", artifact_location=(path / "artifacts").as_uri())
    client.set_terminated(client.create_run(exp).info.run_id)
    return path


@pytest.fixture
def existing_stores(tmp_path, store_template):
    files = [shutil.copy(store_template / name, tmp_path / name) for name in ("optuna.db", "mlflow.db")]
    return {Path(p): _digest(Path(p)) for p in files}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["loss.neg_wieght=interval(1,2)"], "unknown search space key 'loss.neg_wieght'"),
        (["+hydra.sweeper.space.kk=3"], "hydra.sweeper.space.kk: unknown key"),
        (["loss=ccl"], "hydra.sweeper.space writes 'loss.margins', which is not in the config (loss=ccl)"),
        (["hydra.sweeper.space.k=20", "hydra.sweeper.space.min_gap=0.05"], "cannot be sorted inside (0.0, 1.0)"),
        (["hydra.sweeper.space.low=0.9", "hydra.sweeper.space.high=0.5"], "low=0.9, high=0.5"),
        (["hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0: must be an integer >= 1"),
        (
            ["hydra.sweeper.storage=postgresql+psycopg2://me:secret@127.0.0.1:1/db"],
            "hydra.sweeper.storage='postgresql+psycopg2://me:***@127.0.0.1:1/db': cannot open the Optuna storage",
        ),
        (["hydra.sweeper.storage=sqlite:////proc/no/such/dir/optuna.db"], "cannot open the Optuna storage"),
    ],
    ids=[
        "unknown-key",
        "unknown-space-key",
        "space-of-another-loss",
        "margins-do-not-fit",
        "low-above-high",
        "n-trials-0",
        "storage-refused",
        "storage-unwritable",
    ],
)
def test_bad_input_is_refused_before_anything_is_written(tmp_path, existing_stores, overrides, message):
    keys = {o.split("=")[0] for o in overrides}
    base = [o for o in optuna_args(tmp_path, 3) if o.split("=")[0] not in keys]
    proc = sweep_cli(tmp_path, *base, *overrides, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for path, digest in existing_stores.items():  # nothing in the study or the MLflow store changed
        assert _digest(path) == digest, path
    assert not (tmp_path / "multirun").exists()  # no trial started

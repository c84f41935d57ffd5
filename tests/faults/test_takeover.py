"""The takeover of Optuna trials left RUNNING by a dead sweep (``mmlexp.sweep.takeover``), without training:
a dead trial is failed and taken over exactly once, its takeover asks the same parameters and gets its
checkpoint, a takeover that lost its race never runs."""

import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

from mmlexp.sweep.optuna_sweeper import RUN_KEY_ATTR, WORKER_ATTR, OptunaSweeper
from mmlexp.sweep.takeover import SKIPPED, TAKEN_OVER_BY, TAKES_OVER, copy_checkpoint, is_valid, run_key, take_over

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage", "ignore::optuna.exceptions.ExperimentalWarning")


def sweeper(tmp_path: Path, n_trials: int = 3) -> OptunaSweeper:
    sampler = OmegaConf.create({"_target_": "optuna.samplers.RandomSampler", "seed": 0})
    return OptunaSweeper(
        sampler, "maximize", f"sqlite:///{tmp_path}/optuna.db", "s", n_trials, 1, heartbeat_interval=1, grace_period=1
    )


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def running_trial(study: optuna.Study, job_dir: Path, pid: int, key: str = "k") -> optuna.Trial:
    """A RUNNING trial with a parameter, run by ``pid`` on this host in ``job_dir`` (holding a checkpoint)."""
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    trial.set_user_attr(WORKER_ATTR, {"host": socket.gethostname(), "pid": pid, "job_dir": str(job_dir)})
    trial.set_user_attr(RUN_KEY_ATTR, key)
    job_dir.mkdir(parents=True)
    (job_dir / "checkpoint.pt").write_bytes(b"epoch 2")
    return trial


def mark(trial: optuna.Trial, sweep_dir: Path, key: str) -> None:
    """What ``OptunaSweeper._claim`` records on a trial it runs."""
    trial.set_user_attr(WORKER_ATTR, {"job_dir": str(sweep_dir / str(trial.number)), "sweep_dir": str(sweep_dir)})
    trial.set_user_attr(RUN_KEY_ATTR, key)


def test_a_dead_trial_is_failed_and_taken_over_with_its_parameters(tmp_path):
    sw = sweeper(tmp_path)
    study = sw._open_study()
    dead = running_trial(study, tmp_path / "sweep" / "0", dead_pid())
    dead.report(0.25, 1)
    sw._fail_stale(study)
    failed = study._storage.get_trial(dead._trial_id)
    assert failed.state == TrialState.FAIL and failed.user_attrs[TAKEN_OVER_BY] == 1
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    assert waiting.number == 1 and waiting.user_attrs[TAKES_OVER] == 0
    new = study.ask()  # the takeover is asked first, with the dead trial's parameter
    assert new.number == 1 and new.suggest_float("x", 0.0, 1.0) == failed.params["x"]
    mark(new, tmp_path / "sweep", "k")
    sw._adopt(study, new)
    assert (tmp_path / "sweep" / "1" / "checkpoint.pt").read_bytes() == b"epoch 2"
    assert study._storage.get_trial(new._trial_id).intermediate_values == {1: 0.25}  # for a pruner
    sw._fail_stale(study)  # nothing left to take over
    assert len(study.trials) == 2


def test_other_settings_start_the_takeover_from_scratch(tmp_path):
    sw = sweeper(tmp_path)
    study = sw._open_study()
    running_trial(study, tmp_path / "sweep" / "0", dead_pid(), key="before")
    sw._fail_stale(study)
    new = study.ask()
    mark(new, tmp_path / "sweep", "after")
    sw._adopt(study, new)
    assert not (tmp_path / "sweep" / "1").exists()


def test_two_workers_that_find_one_dead_trial_leave_one_takeover(tmp_path):
    sw = sweeper(tmp_path)
    study = sw._open_study()
    other = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/optuna.db")
    dead = running_trial(study, tmp_path / "sweep" / "0", dead_pid())
    frozen = study._storage.get_trial(dead._trial_id)
    assert take_over(study, frozen) == 1
    assert take_over(other, frozen) is None  # the trial was already failed: the second takeover is skipped
    states = {t.number: (t.state, t.user_attrs.get(SKIPPED)) for t in study.trials}
    assert states[1] == (TrialState.WAITING, None) and states[2][0] == TrialState.FAIL and states[2][1]


def test_a_takeover_that_lost_its_race_never_runs(tmp_path):
    """Worker A enqueued a takeover and died before it failed the dead trial; worker B took it over since."""
    sw = sweeper(tmp_path)
    study = sw._open_study()
    dead = running_trial(study, tmp_path / "sweep" / "0", dead_pid())
    orphan = study.enqueue_trial({"x": dead.params["x"]}, user_attrs={TAKES_OVER: 0})  # A's step 1
    assert orphan is None
    sw._fail_stale(study)  # B: takes over trial 0 with trial 2
    assert study._storage.get_trial(dead._trial_id).user_attrs[TAKEN_OVER_BY] == 2
    asked = [study.ask(), study.ask()]  # the orphan (1) and B's takeover (2), in that order
    assert [t.number for t in asked] == [1, 2] and [is_valid(study, t) for t in asked] == [False, True]
    assert [t.number for t in sw._take(study, asked)] == [2]
    assert study._storage.get_trial(asked[0]._trial_id).state == TrialState.FAIL


def test_copy_checkpoint_is_atomic_and_keeps_an_existing_one(tmp_path):
    (tmp_path / "a").mkdir()
    assert copy_checkpoint(tmp_path / "a", tmp_path / "b") is None  # nothing to copy
    (tmp_path / "a" / "checkpoint.pt").write_bytes(b"1")
    assert copy_checkpoint(tmp_path / "a", tmp_path / "b") == tmp_path / "b" / "checkpoint.pt"
    (tmp_path / "a" / "checkpoint.pt").write_bytes(b"2")
    assert copy_checkpoint(tmp_path / "a", tmp_path / "b") is None
    assert (tmp_path / "b" / "checkpoint.pt").read_bytes() == b"1"
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["checkpoint.pt"]


def test_run_key_ignores_the_trials_directory_and_number_only():
    line = ["loss.neg_weight=12.5", "hydra.sweep.subdir=3", "+hydra.job.env_set.MMLEXP_OPTUNA_TRIAL=3"]
    same = ["hydra.sweep.subdir=7", "loss.neg_weight=12.5", "+hydra.job.env_set.MMLEXP_OPTUNA_TRIAL=7"]
    assert run_key(line, ["trainer.epochs=4"]) == run_key(same, ["trainer.epochs=4"])
    assert run_key(line, ["trainer.epochs=4"]) != run_key(line, ["trainer.epochs=5"])
    assert run_key(line, []) != run_key(["loss.neg_weight=12.6"], [])


class Interrupted:
    """A launcher whose jobs are interrupted (Ctrl-C, or SIGTERM turned into KeyboardInterrupt)."""

    def launch(self, overrides, initial_job_idx):
        raise KeyboardInterrupt


class Broken:
    def launch(self, overrides, initial_job_idx):
        raise RuntimeError("the launcher failed")


def test_trials_interrupted_by_ctrl_c_are_taken_over_and_a_launcher_error_fails_them(tmp_path):
    sw = sweeper(tmp_path)
    study = sw._open_study()
    sw.impl.launcher = Interrupted()
    trial = running_trial(study, tmp_path / "sweep" / "0", dead_pid())
    with pytest.raises(KeyboardInterrupt):
        sw._run_batch(study, [trial], [["x=1"]], 0)
    assert study._storage.get_trial(trial._trial_id).user_attrs[TAKEN_OVER_BY] == 1  # the next call continues it
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]
    sw.impl.launcher = Broken()
    other = study.ask()
    with pytest.raises(RuntimeError):
        sw._run_batch(study, [other], [["x=1"]], 0)
    assert study._storage.get_trial(other._trial_id).state == TrialState.FAIL
    assert TAKEN_OVER_BY not in study._storage.get_trial(other._trial_id).user_attrs

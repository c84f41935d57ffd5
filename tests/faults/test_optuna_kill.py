"""`kill -9` an Optuna search while trial 2 trains (after its first checkpoint), then re-run the same command, as a
user would: every trial finishes exactly once, the killed trial ends FAIL naming the trial that took it over, the
study has n_trials complete trials, the takeover continued from the killed trial's checkpoint and ends
bit-identical to an uninterrupted run of the same parameters, and no MLflow run is left RUNNING.
With the basic launcher (in process) and the joblib one (two trials side by side)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from mmlexp.search_space import DRAW_PREFIX, OVERRIDES_ATTR, format_override
from tests.test_sweeps import read_only

N_TRIALS = 4
KILLED = 2
SETTINGS = ["num_negatives=10", "trainer.epochs=6", "trainer.progress=false", "trainer.num_threads=1"]
LAUNCHERS = {"basic": [], "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]}
TIMINGS = ("epoch_time_s", "eval_time_s", "interactions_per_s", "wall_time_s")  # not numerics: never compared


def search_cmd(tmp_path: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mmlexp",
        "-m",
        "hparams_search=mml_optuna",
        f"hydra.sweeper.n_trials={N_TRIALS}",
        f"hydra.sweeper.storage=sqlite:///{tmp_path}/s.db",
        f"hydra.sweep.dir={tmp_path}/sweep",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        f"tracking.artifact_location={tmp_path}/artifacts",
        *SETTINGS,
        *extra,
    ]


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def kill_during_trial(tmp_path: Path, cmd: list[str], number: int) -> None:
    """Start ``cmd`` and `kill -9` its process group once trial ``number`` runs and has written a checkpoint."""
    checkpoint = tmp_path / "sweep" / str(number) / "checkpoint.pt"
    running = lambda: (number, "RUNNING") in read_only(tmp_path / "s.db", "SELECT number, state FROM trials")  # noqa: E731
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=dict(os.environ)
        )
    try:
        deadline = time.time() + 600
        while not (checkpoint.exists() and running()):
            assert proc.poll() is None, "the search ended before trial 2's first checkpoint"
            assert time.time() < deadline, "timed out waiting for trial 2's first checkpoint"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


def mlflow_children(uri: str) -> list:
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("mmlexp").experiment_id])
    return [r for r in runs if r.data.tags.get("sweep.role") != "parent"]


def reference(tmp_path: Path, trial) -> tuple[dict, dict]:
    """An uninterrupted single run of ``trial``'s parameters: (its final metrics, its recall@20 per epoch)."""
    overrides = [f"{k}={v}" for k, v in trial.params.items() if not k.startswith(DRAW_PREFIX)]
    overrides += [format_override(k, v) for k, v in trial.user_attrs[OVERRIDES_ATTR].items()]
    uri = f"sqlite:///{tmp_path}/reference.db"
    cmd = [sys.executable, "-m", "mmlexp", "loss=mml", *SETTINGS, *overrides, f"hydra.run.dir={tmp_path}/reference"]
    run(cmd + [f"tracking.uri={uri}", f"tracking.artifact_location={tmp_path}/reference-artifacts"], tmp_path)
    (ref,) = mlflow_children(uri)
    return metrics_of(uri, ref)


def metrics_of(uri: str, run) -> tuple[dict, dict]:
    history = MlflowClient(uri).get_metric_history(run.info.run_id, "recall_at_20")
    final = {k: v for k, v in run.data.metrics.items() if k not in TIMINGS}
    return final, {m.step: m.value for m in history}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_a_search_killed_mid_trial_continues_it_from_its_checkpoint(tmp_path, launcher):
    cmd = search_cmd(tmp_path, *LAUNCHERS[launcher])
    kill_during_trial(tmp_path, cmd, KILLED)
    again = run(cmd, tmp_path)  # the same command
    assert (
        f"takes over trial {KILLED} (interrupted before): it continues from its checkpoint"
        in again.stdout + again.stderr
    )

    study = optuna.load_study(study_name="mml_sample", storage=f"sqlite:///{tmp_path}/s.db")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == N_TRIALS and not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    assert len({json.dumps(t.params, sort_keys=True) for t in complete}) == N_TRIALS  # every trial exactly once
    for dead in study.get_trials(states=(TrialState.FAIL,)):  # each killed trial, taken over by a complete one
        takeover = study.trials[dead.user_attrs["taken_over_by"]]
        assert takeover.state == TrialState.COMPLETE and takeover.user_attrs["takes_over"] == dead.number
        assert takeover.params == dead.params
    takeover = study.trials[study.trials[KILLED].user_attrs["taken_over_by"]]

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    children = mlflow_children(uri)
    assert not [r.info.run_id for r in children if r.info.status == "RUNNING"]
    by_trial = {int(r.data.tags["optuna.trial_number"]): r for r in children if r.info.status == "FINISHED"}
    assert sorted(by_trial) == sorted(t.number for t in complete)  # one run each; the killed one was continued
    for child in (r for r in children if r.info.status != "FINISHED"):  # killed before their first checkpoint
        number = int(child.data.tags["optuna.trial_number"])
        assert child.info.status == "KILLED" and study.trials[number].state == TrialState.FAIL
    assert str(KILLED) not in {r.data.tags["optuna.trial_number"] for r in children}  # its run is its takeover's
    resumed = by_trial[takeover.number]
    assert resumed.data.tags["optuna.takes_over"] == str(KILLED) and int(resumed.data.tags["resumed_at_epoch"]) >= 1
    assert (tmp_path / "sweep" / str(takeover.number) / "checkpoint.pt").exists()

    final, history = metrics_of(uri, resumed)
    ref_final, ref_history = reference(tmp_path, takeover)
    assert history == ref_history and sorted(history) == list(range(1, 7))  # every epoch, bit-identical
    assert final == ref_final
    assert takeover.value == ref_final["best/recall_at_20"]

"""Pruning of Optuna trials (hydra/sweeper/pruner=median|hyperband|none): the job-side reporter against a real
SQLite study, one pruned search through the real entrypoint, and a bad pruner name refused before Hydra starts."""

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from mmlexp.sweep.jobs import TRIAL_ENV
from mmlexp.sweep.pruning import check_pruner_argv, is_pruned, make_reporter, pruner_names, trial_reporter

CONF = Path(__file__).resolve().parents[1] / "conf"
TINY = ["trainer.progress=false", "num_negatives=10"]


def hydra_job_config(tmp_path: Path, *overrides: str):
    """The composed config of a job of ``hparams_search=mml_optuna`` (with its ``hydra`` node), as a job sees it."""
    with initialize_config_dir(config_dir=str(CONF)):
        cfg = compose(
            "config",
            return_hydra_config=True,
            overrides=[
                "hparams_search=mml_optuna",
                f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db",
                *overrides,
            ],
        )
    HydraConfig.instance().set_config(cfg)
    return cfg


def finished_study(tmp_path: Path, pruner) -> optuna.Study:
    """Three complete trials whose recall@20 was 0.10, 0.20, 0.30 at every epoch: the median is 0.20."""
    study = optuna.create_study(
        study_name="mml_sample", storage=f"sqlite:///{tmp_path}/optuna.db", direction="maximize", pruner=pruner
    )
    for value in (0.1, 0.2, 0.3):
        trial = study.ask()
        for epoch in (1, 2, 3):
            trial.report(value, epoch)
        study.tell(trial, value)
    return study


@pytest.mark.parametrize("pruner", ["median", "hyperband", "none"])
def test_pruner_configs_compose_and_build(tmp_path, pruner):
    from mmlexp.sweep.pruning import build_pruner

    cfg = hydra_job_config(tmp_path, f"hydra/sweeper/pruner={pruner}")
    built = build_pruner(cfg.hydra.sweeper.pruner)
    expected = {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner}.get(pruner)
    assert (built is None) if expected is None else isinstance(built, expected)
    assert sorted(pruner_names(CONF)) == ["hyperband", "median", "none"]


def test_reporter_prunes_a_trial_below_the_median_and_keeps_one_above(tmp_path, monkeypatch):
    study = finished_study(tmp_path, optuna.pruners.NopPruner())
    cfg = hydra_job_config(
        tmp_path,
        "hydra/sweeper/pruner=median",
        "hydra.sweeper.pruner.n_startup_trials=1",
        "hydra.sweeper.pruner.n_warmup_steps=2",
    )
    good, bad = study.ask(), study.ask()  # RUNNING, as the sweeper leaves them while the jobs train

    monkeypatch.setenv(TRIAL_ENV, str(good.number))
    report = trial_reporter(cfg)
    for epoch in (1, 2, 3):
        report(epoch, {"epoch": epoch, "recall@20": 0.25})  # above the median: never pruned
    report(4, {"epoch": 4, "train_loss": 1.0})  # an epoch without evaluation: nothing reported

    monkeypatch.setenv(TRIAL_ENV, str(bad.number))
    report = trial_reporter(cfg)
    report(1, {"recall@20": 0.01})  # below the median, but steps are epochs from 1: no pruning before step 2
    with pytest.raises(optuna.TrialPruned) as pruned:
        report(2, {"recall@20": 0.02})
    assert pruned.value.epoch == 2 and is_pruned(pruned.value)
    trials = {
        t.number: t
        for t in optuna.load_study(study_name="mml_sample", storage=f"sqlite:///{tmp_path}/optuna.db").trials
    }
    assert trials[good.number].intermediate_values == {1: 0.25, 2: 0.25, 3: 0.25}
    assert trials[bad.number].intermediate_values == {1: 0.01, 2: 0.02}


def test_reporter_uses_the_configured_pruner_not_the_one_stored_with_the_study(tmp_path, monkeypatch):
    """The study was created without a pruner; the job's hydra config names median: the job prunes."""
    study = finished_study(tmp_path, optuna.pruners.NopPruner())
    cfg = hydra_job_config(
        tmp_path,
        "hydra/sweeper/pruner=median",
        "hydra.sweeper.pruner.n_startup_trials=1",
        "hydra.sweeper.pruner.n_warmup_steps=0",
    )
    monkeypatch.setenv(TRIAL_ENV, str(study.ask().number))
    with pytest.raises(optuna.TrialPruned):
        trial_reporter(cfg)(1, {"recall@20": 0.0})


def test_no_reporter_outside_a_trial_or_without_a_pruner(tmp_path, monkeypatch):
    cfg = hydra_job_config(tmp_path, "hydra/sweeper/pruner=median")
    monkeypatch.delenv(TRIAL_ENV, raising=False)
    assert trial_reporter(cfg) is None  # a single run, or a grid
    monkeypatch.setenv(TRIAL_ENV, "0")
    assert trial_reporter(hydra_job_config(tmp_path)) is None  # pruner=none (the default): storage untouched
    assert not (tmp_path / "optuna.db").exists()


def test_valid_selection_reports_the_validation_metric(tmp_path, monkeypatch):
    study = finished_study(tmp_path, optuna.pruners.NopPruner())
    cfg = hydra_job_config(tmp_path, "hydra/sweeper/pruner=median", "eval.selection=valid")
    trial = study.ask()
    monkeypatch.setenv(TRIAL_ENV, str(trial.number))
    trial_reporter(cfg)(1, {"recall@20": 0.9, "valid/recall@20": 0.4})
    assert study._storage.get_trial(trial._trial_id).intermediate_values == {1: 0.4}


def test_make_reporter_on_an_in_memory_study():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.5))
    report = make_reporter(study.ask(), "recall@20")
    report(1, {"recall@20": 0.6})
    with pytest.raises(optuna.TrialPruned):
        report(2, {"recall@20": 0.4})


def test_is_pruned_knows_hydras_remote_stand_in():
    assert is_pruned(optuna.TrialPruned("x"))
    assert is_pruned(RuntimeError("Remote optuna.exceptions.TrialPruned: pruned at epoch 2"))
    assert not is_pruned(RuntimeError("boom")) and not is_pruned(0.5) and not is_pruned(None)


def test_check_pruner_argv():
    assert check_pruner_argv(["hparams_search=mml_optuna", "hydra/sweeper/pruner=median"], CONF) is None
    assert check_pruner_argv(["trainer.epochs=3"], CONF) is None
    assert check_pruner_argv(["+hydra/sweeper/pruner=medain"], CONF) == (
        "hydra/sweeper/pruner='medain': no such pruner; choose one of hyperband, median, none"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["hydra/sweeper/pruner=median"],
        ["-m", "num_negatives=10,100", "hydra/sweeper/pruner=hyperband"],
        ["+experiment=table2", "hydra/sweeper/pruner=median"],
        ["hparams_search=mml_optuna", "hydra/sweeper=basic", "hydra/sweeper/pruner=median"],
    ],
)
def test_a_pruner_without_an_optuna_search_names_the_override_and_what_is_allowed(argv):
    pruner = argv[-1]
    assert check_pruner_argv(argv, CONF) == (
        f"{pruner}: a pruner stops poor trials of an Optuna search, and this command runs none (hydra/sweeper=basic); "
        "allowed only with -m and an Optuna search: hparams_search=bsl_optuna|ccl_optuna|mml_optuna, or "
        "hydra/sweeper=mmlexp_optuna; else leave it out"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["hydra/sweeper=mmlexp_optuna", "hydra/sweeper/pruner=median"],
        ["+hparams_search=ccl_optuna", "hydra/sweeper/pruner=median"],
        ["--config-dir", "mine", "hydra/sweeper/pruner=median"],  # another config dir: Hydra decides
        ["hparams_search=my_search", "hydra/sweeper/pruner=median"],  # not one of ours: Hydra decides
    ],
)
def test_a_pruner_with_a_search_or_a_config_we_do_not_know_passes(argv):
    assert check_pruner_argv(argv, CONF) is None


def test_a_pruner_without_a_search_exits_2_before_anything_is_written(tmp_path):
    cmd = [sys.executable, "-m", "mmlexp", "hydra/sweeper/pruner=median", f"tracking.uri=sqlite:///{tmp_path}/m.db"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "mmlexp: error: hydra/sweeper/pruner=median: a pruner stops poor trials of an Optuna search" in proc.stderr
    assert "Traceback" not in proc.stderr and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------- the real entrypoint


def cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "mmlexp",
        "-m",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        f"tracking.artifact_location={tmp_path}/artifacts",
        "hparams_search=mml_optuna",
        f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db",
        *TINY,
        *overrides,
    ]
    return subprocess.run(
        cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONUNBUFFERED="1")
    )


def check_pruned_runs(tmp_path: Path, proc: subprocess.CompletedProcess, n_trials: int) -> dict[int, int]:
    """Every trial COMPLETE or PRUNED (pruned ones count toward n_trials); each pruned trial's MLflow run KILLED
    and tagged with its last reported epoch, the others FINISHED. Returns {pruned trial: epoch}."""
    assert proc.returncode == 0, proc.stderr[-4000:]
    study = optuna.load_study(study_name="mml_sample", storage=f"sqlite:///{tmp_path}/optuna.db")
    states = [t.state for t in study.trials]
    assert len(states) == n_trials and set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}
    pruned = {t.number: max(t.intermediate_values) for t in study.trials if t.state == TrialState.PRUNED}
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("mmlexp").experiment_id])
    jobs = {int(r.data.tags["optuna.trial_number"]): r for r in runs if "optuna.trial_number" in r.data.tags}
    assert sorted(jobs) == list(range(n_trials))
    for number, run in jobs.items():
        if number in pruned:
            assert run.info.status == "KILLED"
            assert run.data.tags["optuna.pruned_at_epoch"] == str(pruned[number])
        else:
            assert run.info.status == "FINISHED" and "optuna.pruned_at_epoch" not in run.data.tags
    assert "Error executing job" not in proc.stderr  # a pruned trial is not reported as a failure
    return pruned


SHORT = ["trainer.epochs=2", "trainer.batch_size=2048"]  # short epochs


def test_a_median_pruned_search_ends_with_pruned_trials_tagged_in_mlflow(tmp_path):
    proc = cli(
        tmp_path,
        "hydra/sweeper/pruner=median",
        "hydra.sweeper.pruner.n_startup_trials=1",
        "hydra.sweeper.pruner.n_warmup_steps=0",
        "hydra.sweeper.n_trials=4",
        *SHORT,
    )
    assert check_pruned_runs(tmp_path, proc, 4), "no trial pruned"


@pytest.mark.parametrize(
    "launcher",
    [
        ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        ["hydra/launcher=submitit_local", "hydra.sweeper.n_jobs=2", "hydra.launcher.timeout_min=10"],
    ],
    ids=["joblib", "submitit_local"],
)
def test_jobs_of_other_processes_find_their_trial_through_the_storage(tmp_path, launcher):
    """A pruner that prunes every trial at its first report (optuna's ThresholdPruner, recall@20 < 0.9)."""
    proc = cli(
        tmp_path,
        "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
        "+hydra.sweeper.pruner.lower=0.9",
        "hydra.sweeper.n_trials=3",
        *SHORT,
        *launcher,
    )
    assert check_pruned_runs(tmp_path, proc, 3) == {0: 1, 1: 1, 2: 1}


def test_an_unknown_pruner_exits_2_before_anything_is_written(tmp_path):
    proc = cli(tmp_path, "hydra/sweeper/pruner=medain", "hydra.sweeper.n_trials=1")
    assert proc.returncode == 2
    assert (
        "mmlexp: error: hydra/sweeper/pruner='medain': no such pruner; choose one of hyperband, median, none"
        in proc.stderr
    )
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # no multirun/, no Optuna or MLflow store


def test_a_pruner_without_storage_exits_2(tmp_path):
    proc = cli(tmp_path, "hydra/sweeper/pruner=median", "hydra.sweeper.storage=null", "hydra.sweeper.n_trials=1")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "hydra.sweeper.pruner (MedianPruner) needs hydra.sweeper.storage" in proc.stderr
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "mlflow.db").exists()

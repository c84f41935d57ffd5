"""Twin runs (mmlexp.reproduce.twins): a plan's pending run whose exact config finished in another experiment of the
store is copied into the plan's experiment, not trained again; a run that differs in what it trains, or a deleted
twin, is trained. One real tiny run on ``sample`` (a plan of checks) is the twin."""

import shutil

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from mmlexp.reproduce import twins
from mmlexp.reproduce.__main__ import main
from mmlexp.reproduce.plan import load_plan
from mmlexp.reproduce.state import DONE, plan_state
from mmlexp.reproduce.stores import Stores

STEP = "  - {loss: mml, negatives: 10, overrides: [trainer.batch_size=8192, tracking.save_checkpoint=false%s]}\n"


def plan(tmp_path, experiment: str, extra: str = "") -> str:
    path = tmp_path / f"{experiment}.yaml"
    path.write_text(f"dataset: sample\nexperiment: {experiment}\nrun: {{epochs: 2}}\nsteps:\n" + STEP % extra)
    return str(path)


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    """A store holding one finished run of the plan of checks (experiment ``checks``)."""
    tmp = tmp_path_factory.mktemp("twins")
    runs = tmp / "stores"
    assert (
        main(["run", plan(tmp, "checks"), "--runs", str(runs), "--results", str(tmp / "results"), "--threads", "1"])
        == 0
    )
    return runs


def training(runs, experiment):
    client = MlflowClient(f"sqlite:///{runs}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return client, []
    return client, [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("sweep.role") != "parent"]


def no_training(monkeypatch):
    import mmlexp.reproduce.__main__ as runner

    calls = []
    monkeypatch.setattr(runner.subprocess, "call", lambda cmd, cwd: calls.append(cmd) or 0)
    return calls


def test_the_same_config_is_copied_not_trained(checked, tmp_path, monkeypatch, capsys):
    runs = tmp_path / "stores"
    shutil.copytree(checked, runs)
    calls = no_training(monkeypatch)
    paper = plan(tmp_path, "paper")
    assert main(["run", paper, "--runs", str(runs), "--results", str(tmp_path / "results"), "--threads", "1"]) == 0
    assert calls == [] and "copied run" in capsys.readouterr().out
    client, (twin,) = training(runs, "checks")
    _, (copy,) = training(runs, "paper")
    assert copy.info.status == "FINISHED" and copy.info.run_id != twin.info.run_id
    assert (
        copy.data.tags["mmlexp.copy_of"] == twin.info.run_id and copy.data.tags["mmlexp.copy_of_experiment"] == "checks"
    )
    assert copy.data.params == twin.data.params and copy.data.metrics == twin.data.metrics
    assert copy.data.tags["sweep.overrides"] == twin.data.tags["sweep.overrides"]  # how it was trained
    assert "sweep.id" not in copy.data.tags and "mlflow.parentRunId" not in copy.data.tags  # the twin's grid
    for key in ("recall_at_20", "ndcg_at_20", "epoch_time_s"):
        history = [(m.step, m.value) for m in client.get_metric_history(twin.info.run_id, key)]
        assert [(m.step, m.value) for m in client.get_metric_history(copy.info.run_id, key)] == history
        assert len(history) == 2  # both epochs
    names = {a.path for a in client.list_artifacts(copy.info.run_id)}
    assert names == {a.path for a in client.list_artifacts(twin.info.run_id)} and "per_user.csv.gz" in names
    local = client.download_artifacts(copy.info.run_id, "per_user.csv.gz", str(tmp_path / "dl"))
    original = client.download_artifacts(twin.info.run_id, "per_user.csv.gz", str(tmp_path / "dl0"))
    pd.testing.assert_frame_equal(pd.read_csv(local), pd.read_csv(original))
    (state,) = plan_state(load_plan(paper), Stores(runs), tmp_path / "results")
    assert (state.state, state.source) == (DONE, copy.info.run_id)  # done: nothing runs again
    assert main(["run", paper, "--runs", str(runs), "--results", str(tmp_path / "results"), "--threads", "1"]) == 0
    assert calls == [] and len(training(runs, "paper")[1]) == 1


def test_the_status_prices_a_twin_at_no_training(checked, tmp_path, capsys):
    """``status`` names the run a pending run will copy and counts no time for it; at other threads it has none."""
    paper = plan(tmp_path, "paper")
    _, (twin,) = training(checked, "checks")
    args = ["status", paper, "--runs", str(checked), "--results", str(tmp_path / "results")]
    assert main([*args, "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert f"pending, copies finished run {twin.info.run_id[:8]}" in out and "time left: ~0 s for 1 run(s)" in out
    assert main([*args, "--threads", "2"]) == 0
    out = capsys.readouterr().out
    assert "copies finished run" not in out and "time left: ~0 s" not in out
    assert training(checked, "paper")[1] == []  # the status copied nothing


def test_a_refused_config_has_no_twin_and_the_status_names_it(checked, tmp_path, capsys):
    """With candidates in the store, a step whose config does not compose is still named by the status (exit 2),
    not a traceback from the twin search."""
    paper = plan(tmp_path, "paper", ", trainer.batchsize=64")
    assert twins.find_twin(load_plan(paper).runs[0], load_plan(paper), Stores(checked), 1) is None
    args = ["status", paper, "--runs", str(checked), "--results", str(tmp_path / "results"), "--threads", "1"]
    assert main(args) == 2 and "Could not override 'trainer.batchsize'" in capsys.readouterr().err


@pytest.mark.parametrize("change", ["another config", "a deleted twin", "other threads"])
def test_a_run_that_is_not_a_twin_is_trained(checked, tmp_path, monkeypatch, change):
    """A learning rate of its own, a twin taken out by MLflow's soft delete, or another thread count (it moves the
    float summation order): the run trains."""
    runs = tmp_path / "stores"
    shutil.copytree(checked, runs)
    client, (twin,) = training(runs, "checks")
    if change == "a deleted twin":
        client.delete_run(twin.info.run_id)
    paper = plan(tmp_path, "paper", ", trainer.lr=0.01" if change == "another config" else "")
    threads = "2" if change == "other threads" else "1"
    assert twins.find_twin(load_plan(paper).runs[0], load_plan(paper), Stores(runs), int(threads)) is None
    calls = no_training(monkeypatch)
    assert main(["run", paper, "--runs", str(runs), "--results", str(tmp_path / "results"), "--threads", threads]) == 0
    assert len(calls) == 1 and training(runs, "paper")[1] == []

"""Reproduction plans (mmlexp.reproduce): the shipped plans, bad plans, the time estimate, and the runner on a
tiny plan over `sample` (runs what is missing once; a second call runs nothing)."""

import dataclasses
import math
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from mmlexp.report.export import cell_id
from mmlexp.reproduce import estimate as est
from mmlexp.reproduce.__main__ import main
from mmlexp.reproduce.plan import PlanError, load_plan
from mmlexp.reproduce.state import DONE, PENDING, plan_state
from mmlexp.reproduce.stores import RUNS_ENV, Stores, default_runs_dir
from tests.conftest import REPO

RESULTS = REPO / "results"


def test_gowalla_plan_finds_the_committed_runs_done(tmp_path):
    plan = load_plan("gowalla")
    committed = pd.read_csv(RESULTS / "gowalla" / "runs.csv")
    states = plan_state(plan, Stores(tmp_path / "no-store"), RESULTS)
    done = {
        (s.run.encoder, s.run.loss, s.run.negatives, s.run.selection, s.run.seed, s.run.patience)
        for s in states
        if s.state == DONE
    }
    expected = {
        (r.encoder, r.loss, r.num_negatives, r.selection, r.seed, int(r.patience) if r.early_stop == "Y" else None)
        for r in committed.itertuples()
    }
    assert done == expected and len(done) == len(committed)  # every committed run (one row a run) is found done
    assert len(committed) >= 15  # the 15 runs the plan was written around, and those committed since
    assert all(s.state == PENDING for s in states if s.state != DONE)


@pytest.mark.parametrize("dataset", ["gowalla", "yelp2018"])
def test_every_run_a_verdict_waits_for_is_in_its_plan(dataset):
    """The committed claims name the runs whose per-user files would test them (``wanted``): the plan runs each."""
    planned = {
        cell_id({"dataset": r.dataset, "encoder": r.encoder, "loss": r.loss, "num_negatives": r.negatives,
                 "selection": r.selection, "early_stop": "Y" if r.early_stop else "N"}) + f"-seed{r.seed}"
        for r in load_plan(dataset).runs
    }  # fmt: skip
    claims = [pd.read_csv(RESULTS / dataset / name) for name in ("claims.csv", "systems_claims.csv")]
    wanted = {w for frame in claims for v in frame["wanted"].dropna() for w in str(v).split()}
    assert wanted <= planned, sorted(wanted - planned)


def test_plans_list_the_issue_order():
    runs = load_plan("yelp2018").runs
    assert [(r.loss, r.negatives) for r in runs[:2]] == [("mml", 10), ("ccl", 10)]  # the headline first
    assert all(r.dataset == "yelp2018" for r in runs)
    # issue 28's runs (SSM, early stopping, SimpleX): tests/test_plan_early_stop.py
    issue28 = [r for r in runs if r.encoder != "mf" or r.loss == "ssm" or r.patience is not None]
    runs = tuple(r for r in runs if r not in issue28)
    assert all(r.encoder == "mf" and r.epochs == 100 for r in runs)
    valid = [r for r in runs if r.selection == "valid"]
    assert {(r.loss, r.negatives) for r in valid} == {("mml", 100), ("ccl", 100)}
    assert len({r.key for r in runs}) == len(runs)
    seeds = [r for r in runs if r.seed != 1]
    assert {(r.loss, r.negatives, r.seed) for r in seeds} == {
        (loss, n, s) for loss in ("mml", "ccl", "bsl") for n in (10, 800) for s in (2, 3)
    }
    assert runs.index(seeds[0]) > max(runs.index(r) for r in runs if r.negatives in (50, 200, 400))


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("dataset: sample\nsteps:\n  - {loss: mml, negatives: 10, selction: valid}\n", "selction"),
        ("dataset: sample\nsteps:\n  - {loss: mml, negatives: 10, selection: best}\n", "'best'"),
        ("dataset: sample\nsteps:\n  - {loss: mml, negatives: [10, -5]}\n", "-5"),
        ("dataset: sample\nsteps:\n  - {loss: mml}\n", "'negatives'"),
        ("dataset: sample\nstep: []\n", "step"),
    ],
)
def test_bad_plans_name_the_bad_value(tmp_path, text, named):
    with pytest.raises(PlanError, match=named):
        load_plan(write(tmp_path, text))


def test_unknown_plan_lists_the_plans(capsys):
    assert main(["status", "nosuchplan"]) == 2
    err = capsys.readouterr().err
    assert "nosuchplan" in err and "gowalla" in err and "yelp2018" in err


def test_step_runs_are_the_product_in_order(tmp_path):
    plan = load_plan(
        write(
            tmp_path,
            "dataset: d\nsteps:\n- {loss: [a, b], negatives: [1, 2], seed: [7, 8]}\n"
            "- {loss: a, negatives: 1, seed: 9}\n",
        )
    )
    first = [(r.seed, r.negatives, r.loss) for r in plan.runs if r.step == 1]
    # seed, then negatives, then loss: every cell's seed 7 before any seed 8, both losses at N=1 before N=2
    cells = [(1, "a"), (1, "b"), (2, "a"), (2, "b")]
    assert first == [(7, n, loss) for n, loss in cells] + [(8, n, loss) for n, loss in cells]
    assert [(r.step, r.loss, r.negatives, r.seed) for r in plan.runs if r.step == 2] == [(2, "a", 1, 9)]


def speed(dataset, n, c, batch=256, ev=2.0):
    return est.Speed(dataset, "mf", n, batch, c, ev, 100)


def test_estimate_uses_the_measured_cell_then_a_fit(tmp_path):
    plan = load_plan(write(tmp_path, "dataset: gowalla\nsteps:\n  - {loss: mml, negatives: [10, 55, 100]}\n"))
    speeds = [speed("gowalla", 10, 1e-5), speed("gowalla", 10, 3e-5), speed("gowalla", 100, 5e-5)]
    at10, at55, at100 = (est.estimate(r, speeds) for r in plan.runs)
    rows = est.SIZES["gowalla"][0]
    assert at10.train_s == pytest.approx(rows * 2e-5) and "measured" in at10.basis  # median of 1e-5, 3e-5
    # least squares over (10, 1e-5), (10, 3e-5), (100, 5e-5): the line through (10, 2e-5) and (100, 5e-5)
    assert at55.train_s == pytest.approx(rows * (2e-5 + 3e-5 * 45 / 90)) and "fit" in at55.basis
    assert at100.eval_s == 2.0


def test_estimate_scales_another_dataset(tmp_path):
    plan = load_plan(write(tmp_path, "dataset: yelp2018\nsteps:\n  - {loss: mml, negatives: 100, selection: valid}\n"))
    speeds = [speed("gowalla", 10, 1e-5, ev=3.0), speed("gowalla", 110, 2e-5, ev=3.0)]
    got = est.estimate(plan.runs[0], speeds)
    assert got.train_s == pytest.approx(est.SIZES["yelp2018"][0] * (1e-5 + 1e-7 * 90))
    _, u0, i0 = est.SIZES["gowalla"]
    _, u1, i1 = est.SIZES["yelp2018"]
    assert got.eval_s == pytest.approx(2 * 3.0 * u1 * i1 / (u0 * i0))  # valid ranks the held-out slice too
    assert "gowalla" in got.basis


def test_committed_speeds_are_the_epoch_csv_medians():
    speeds = est.committed_speeds(RESULTS)
    assert len(speeds) == sum(len(pd.read_csv(f)) for f in RESULTS.glob("*/runs.csv"))  # every committed run
    runs = pd.read_csv(RESULTS / "gowalla" / "runs.csv")
    first = runs.iloc[0]
    epochs = pd.read_csv(RESULTS / "gowalla" / first.epochs_csv)
    got = next(s for s in speeds if s.negatives == first.num_negatives and s.epochs == len(epochs))
    assert math.isclose(got.per_interaction, (1 / epochs["interactions_per_s"]).median())


def test_runs_dir_env_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv(RUNS_ENV, str(tmp_path / "here"))
    assert default_runs_dir() == (tmp_path / "here").resolve()
    monkeypatch.delenv(RUNS_ENV)
    assert REPO not in default_runs_dir().parents and default_runs_dir().name == "runs"


def test_runner_runs_what_is_missing_once(tmp_path, capsys):
    plan = write(
        tmp_path,
        "dataset: sample\nexperiment: plan-test\nrun: {epochs: 1}\nsteps:\n"
        "  - {loss: [mml, ccl], negatives: 10, overrides: [trainer.batch_size=8192, tracking.save_checkpoint=false]}\n",
    )
    runs = tmp_path / "stores"
    args = ["run", plan, "--runs", str(runs), "--results", str(tmp_path / "results"), "--threads", "1"]
    assert main(args) == 0
    client = MlflowClient(f"sqlite:///{runs}/mlflow.db")
    (exp,) = [e for e in client.search_experiments() if e.name == "plan-test"]
    trained = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("sweep.role") != "parent"]
    assert sorted(r.data.tags["choice.loss"] for r in trained) == ["ccl", "mml"]
    assert all(r.info.status == "FINISHED" for r in trained)
    capsys.readouterr()
    assert main(args) == 0  # everything done: nothing runs again
    out = capsys.readouterr().out
    assert out.count(" done (") == 2 and "==" not in out
    assert len([r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("sweep.role") != "parent"]) == 2
    # a run taken out of the tables (MLflow's soft delete) is missing again: it trains again (its grid's ledger
    # holds the point finished; the grid asks the store and runs it again, mmlexp.sweep.grid)
    (mml,) = [r for r in trained if r.data.tags["choice.loss"] == "mml"]
    client.delete_run(mml.info.run_id)
    assert main(args) == 0
    again = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("sweep.role") != "parent"]
    assert sorted(r.data.tags["choice.loss"] for r in again) == ["ccl", "mml"] and mml.info.run_id not in {
        r.info.run_id for r in again
    }
    assert all(r.info.status == "FINISHED" for r in again)


def test_an_interrupted_run_is_pending_from_where_it_stopped(tmp_path, capsys):
    """A KILLED run of a plan's key that logged 3 of its 10 epochs: the run is pending, carries that run's id and
    its 3 epochs (it resumes from its checkpoint), and its time left is 3 epochs' less than a fresh start's; the
    status line says where it resumes."""
    plan_path = write(
        tmp_path, "dataset: sample\nexperiment: plan-test\nrun: {epochs: 10}\nsteps:\n  - {loss: mml, negatives: 10}\n"
    )
    runs = tmp_path / "stores"
    runs.mkdir()
    client = MlflowClient(f"sqlite:///{runs}/mlflow.db")
    exp = client.create_experiment("plan-test", artifact_location=str(tmp_path / "art"))
    run = client.create_run(exp, tags={"dataset": "sample", "choice.encoder": "mf", "choice.loss": "mml"})
    rid = run.info.run_id
    for key, value in {"num_negatives": 10, "seed": 1, "trainer.epochs": 10}.items():
        client.log_param(rid, key, value)
    for epoch in (1, 2, 3):
        client.log_metric(rid, "epoch_time_s", 10.0 + epoch, step=epoch)
        client.log_metric(rid, "eval_time_s", 1.0, step=epoch)
    client.set_terminated(rid, "KILLED")
    plan = load_plan(plan_path)
    (state,) = plan_state(plan, Stores(runs), tmp_path / "results")
    assert (state.state, state.source, state.epoch, state.pace_s) == (PENDING, rid, 3, 13.0)  # median of 12, 13, 14
    fresh = dataclasses.replace(state, source="", epoch=0, pace_s=math.nan)
    estimate = est.estimate(state.run, [])
    assert math.isclose(est.remaining_s(fresh, estimate) - est.remaining_s(state, estimate), 3 * estimate.epoch_s)
    assert main(["status", plan_path, "--runs", str(runs), "--results", str(tmp_path / "results")]) == 0
    assert f"pending, resumes after epoch 3/10 (interrupted run {rid[:8]})" in capsys.readouterr().out


def test_the_queue_holds_every_planned_run_once():
    """conf/reproduce/queue.yaml: every run of the dataset plans has a place in the queue (nothing is left out of
    the machine's order), and a run two entries name is listed at its first place only."""
    from mmlexp.reproduce.queue import load_plans

    queued = [(p.name, r.key) for p in load_plans("queue") for r in p.runs]
    plans = ("gowalla", "yelp2018", "gowalla_checks")  # the paper's plans and the checks of their explanations
    planned = {(name, r.key) for name in plans for r in load_plan(name).runs}
    assert len(queued) == len(set(queued)) and set(queued) == planned
    first = load_plans("queue")[0].runs[:2]
    assert [(r.dataset, r.loss, r.negatives) for r in first] == [("yelp2018", "mml", 10), ("yelp2018", "ccl", 10)]


def test_the_queue_runs_its_entries_in_order(tmp_path, capsys):
    """A queue of two entries of one plan (step 2, then steps 1 and 2): the runs train in the queue's order, each
    once; a second call runs nothing and reports each entry done in one line."""
    write(
        tmp_path,
        "dataset: sample\nexperiment: queue-test\nrun: {epochs: 1}\nsteps:\n"
        "  - {loss: mml, negatives: 10, overrides: [trainer.batch_size=8192, tracking.save_checkpoint=false]}\n"
        "  - {loss: ccl, negatives: 10, overrides: [trainer.batch_size=8192, tracking.save_checkpoint=false]}\n",
    )
    queue = tmp_path / "queue.yaml"
    queue.write_text(
        "queue:\n  - {plan: plan.yaml, steps: 2, why: first}\n  - {plan: plan.yaml, steps: [1, 2], why: then}\n"
    )
    runs = tmp_path / "stores"
    args = ["run", str(queue), "--runs", str(runs), "--results", str(tmp_path / "results"), "--threads", "1"]
    assert main(args) == 0
    client = MlflowClient(f"sqlite:///{runs}/mlflow.db")
    (exp,) = [e for e in client.search_experiments() if e.name == "queue-test"]
    trained = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("sweep.role") != "parent"]
    by_start = sorted(trained, key=lambda r: r.info.start_time)
    assert [r.data.tags["choice.loss"] for r in by_start] == ["ccl", "mml"]
    capsys.readouterr()
    assert main(["status", *args[1:]]) == 0
    out = capsys.readouterr().out
    assert "entry 1: plan steps 2, all 1 run(s) done (first)" in out
    assert "entry 2: plan steps 1, all 1 run(s) done (then)" in out
    assert "queue: ~0 s left for 0 run(s) in 2 entries" in out


def test_a_queue_reports_each_plan_once(tmp_path, capsys):
    """``report queue`` writes one report per plan, however many entries name it (here: none to write, so the
    refusal is said once)."""
    write(tmp_path, "dataset: sample\nsteps:\n  - {loss: mml, negatives: 10}\n  - {loss: ccl, negatives: 10}\n")
    queue = tmp_path / "queue.yaml"
    queue.write_text("queue:\n  - {plan: plan.yaml, steps: 2}\n  - {plan: plan.yaml, steps: 1}\n")
    args = ["report", str(queue), "--runs", str(tmp_path / "stores"), "--results", str(tmp_path / "results")]
    assert main(args) == 2
    assert capsys.readouterr().err.count("nothing to report") == 1
    assert not (tmp_path / "stores").exists() and not (tmp_path / "results").exists()

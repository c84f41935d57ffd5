"""Plan entries with early stopping (``patience``) and the issue-28 runs: identity, overrides, validation, order.

A run without ``patience`` keeps the key it always had (committed runs stay done); an early-stopping run adds its
patience to the key, as ``state.row_key`` does for a runs.csv row with early_stop=Y."""

from pathlib import Path

import pandas as pd
import pytest

from mmlexp.reproduce.__main__ import main
from mmlexp.reproduce.plan import PlanError, load_plan
from mmlexp.reproduce.state import DONE, PENDING, committed_runs, plan_state, row_key
from mmlexp.reproduce.stores import Stores
from tests.conftest import REPO

RESULTS = REPO / "results"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    return str(path)


def test_patience_is_in_the_key_and_the_overrides_only_when_set(tmp_path):
    plan = load_plan(write(tmp_path, (
        "dataset: gowalla\nsteps:\n"
        "  - {loss: ccl, negatives: 100}\n"
        "  - {loss: ccl, negatives: 100, patience: 3}\n"
        "  - {loss: ssm, encoder: lightgcn, negatives: 2047, epochs: 1000, patience: 15,"
        " overrides: [+experiment=ssm_paper]}\n"
    )))  # fmt: skip
    plain, early, ssm = plan.runs
    assert plain.key == ("gowalla", "mf", "ccl", 100, "paper", 1, 100)  # the key every committed run has
    assert "trainer.patience=null" in plain.overrides() and plain.label == "ccl N=100 seed 1"
    assert early.key == (*plain.key, 3) and "trainer.patience=3" in early.overrides()
    assert early.label == "ccl N=100 patience 3 seed 1"
    assert ssm.key == ("gowalla", "lightgcn", "ssm", 2047, "paper", 1, 1000, 15)
    assert ssm.overrides()[-1] == "+experiment=ssm_paper" and "trainer.epochs=1000" in ssm.overrides()


def test_patience_in_the_run_defaults(tmp_path):
    plan = load_plan(
        write(tmp_path, "dataset: gowalla\nrun: {patience: 3}\nsteps:\n  - {loss: [mml, ccl], negatives: 10}\n")
    )
    assert [r.patience for r in plan.runs] == [3, 3]


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("dataset: gowalla\nsteps:\n  - {loss: mml, negatives: 10, patiense: 3}\n", "'patiense'"),
        ("dataset: gowalla\nrun: {early_stop: 3}\nsteps:\n  - {loss: mml, negatives: 10}\n", "'early_stop'"),
        ("dataset: gowalla\nsteps:\n  - {loss: mml, negatives: 10, patience: 0}\n", "patience=0"),
        ("dataset: gowalla\nsteps:\n  - {loss: mml, negatives: 10, patience: 100}\n", "patience=100"),
        ("dataset: gowalla\nsteps:\n  - {loss: mml, negatives: 10, patience: '3'}\n", "patience='3'"),
        ("dataset: gowalla\nsteps:\n  - {loss: mml, negatives: 10, patience: true}\n", "patience=True"),
    ],
)
def test_bad_keys_name_the_file_the_key_and_what_is_allowed(tmp_path, capsys, text, named):
    path = write(tmp_path, text)
    with pytest.raises(PlanError, match="allowed") as err:
        load_plan(path)
    assert path in str(err.value) and named in str(err.value)
    assert main(["status", path, "--runs", str(tmp_path / "runs")]) == 2
    assert named in capsys.readouterr().err


def test_an_early_stopping_row_is_done_for_its_patience_only(tmp_path):
    (tmp_path / "gowalla").mkdir()
    rows = [
        {"dataset": "gowalla", "encoder": "mf", "loss": "ccl", "num_negatives": 100, "selection": "paper", "seed": 1,
         "epochs": 100, "early_stop": "Y", "patience": 3, "max_steps": None},
        {"dataset": "gowalla", "encoder": "mf", "loss": "mml", "num_negatives": 100, "selection": "paper", "seed": 1,
         "epochs": 100, "early_stop": "N", "patience": None, "max_steps": None},
    ]  # fmt: skip
    pd.DataFrame(rows).to_csv(tmp_path / "gowalla" / "runs.csv", index=False)
    assert set(committed_runs(tmp_path / "gowalla")) == {
        ("gowalla", "mf", "ccl", 100, "paper", 1, 100, 3),
        ("gowalla", "mf", "mml", 100, "paper", 1, 100),
    }
    plan = load_plan(write(tmp_path, "dataset: gowalla\nsteps:\n  - {loss: [ccl, mml], negatives: 100}\n"
                                     "  - {loss: [ccl, mml], negatives: 100, patience: 3}\n"))  # fmt: skip
    states = {(s.run.loss, s.run.patience): s.state for s in plan_state(plan, Stores(tmp_path / "none"), tmp_path)}
    assert states == {("ccl", None): PENDING, ("mml", None): DONE, ("ccl", 3): DONE, ("mml", 3): PENDING}


def test_a_committed_run_is_done_for_its_own_experiment_only(tmp_path):
    """A plan of checks (its own MLflow experiment) reruns a committed cell with other settings: not done by it."""
    (tmp_path / "gowalla").mkdir()
    row = {
        "experiment": "reproduce",
        "dataset": "gowalla",
        "encoder": "simplex",
        "loss": "ccl",
        "num_negatives": 100,
        "selection": "paper",
        "seed": 1,
        "epochs": 100,
        "early_stop": "N",
        "patience": None,
        "max_steps": None,
    }
    pd.DataFrame([row]).to_csv(tmp_path / "gowalla" / "runs.csv", index=False)
    assert set(committed_runs(tmp_path / "gowalla", "reproduce-checks")) == set()
    assert (
        set(committed_runs(tmp_path / "gowalla", "reproduce"))
        == set(committed_runs(tmp_path / "gowalla"))
        == {("gowalla", "simplex", "ccl", 100, "paper", 1, 100)}
    )
    step = "steps:\n  - {encoder: simplex, loss: ccl, negatives: 100}\n"
    for experiment, state in (("reproduce", DONE), ("reproduce-checks", PENDING)):
        plan = load_plan(write(tmp_path, f"dataset: gowalla\nexperiment: {experiment}\n{step}"))
        assert [s.state for s in plan_state(plan, Stores(tmp_path / "none"), tmp_path)] == [state]
    # the plan of checks' own report folder (reproduce report checks -> results/checks/) holds its committed run
    (tmp_path / "checks").mkdir()
    pd.DataFrame([{**row, "experiment": "reproduce-checks"}]).to_csv(tmp_path / "checks" / "runs.csv", index=False)
    checks = tmp_path / "checks.yaml"
    checks.write_text(f"dataset: gowalla\nexperiment: reproduce-checks\n{step}")
    assert [s.state for s in plan_state(load_plan(str(checks)), Stores(tmp_path / "none"), tmp_path)] == [DONE]


def test_committed_rows_keep_their_keys():
    df = pd.read_csv(RESULTS / "gowalla" / "runs.csv")
    # the seven cell columns; an early-stopping run adds its patience, so it is told apart from the full run
    assert [len(row_key(r)) for _, r in df.iterrows()] == [8 if r.early_stop == "Y" else 7 for r in df.itertuples()]
    early = df[df["early_stop"] == "Y"]
    assert [row_key(r)[7:] for _, r in early.iterrows()] == [(int(p),) for p in early["patience"]]


@pytest.mark.parametrize("name", ["gowalla", "yelp2018"])
def test_issue_28_runs_in_the_plans(name):
    runs = load_plan(name).runs
    new = [r for r in runs if r.encoder != "mf" or r.loss == "ssm" or r.patience is not None]
    cells = [(r.encoder, r.loss, r.negatives, r.patience, r.epochs) for r in new]
    assert cells == [
        ("lightgcn", "ssm", 2047, 15, 1000),
        ("mf", "ssm", 2047, 15, 1000),
        ("mf", "ccl", 100, 3, 100),
        ("mf", "mml", 100, 3, 100),
        ("simplex", "ccl", 100, None, 100),
        ("simplex", "mml", 100, None, 100),
        ("simplex", "ccl", 100, 3, 100),
        ("simplex", "mml", 100, 3, 100),
    ] + ([("mf", "ccl", 100, 3, 100), ("mf", "mml", 100, 3, 100)] if name == "gowalla" else [])
    # Gowalla's seed-1 runs without early stopping have no per-user files (their weights are gone): the early-stopping
    # claim is tested per user on seed 2, against the runs without it that issue 27 adds there
    paired = [r for r in new if r.seed == 2]
    assert all(r.patience == 3 for r in paired) and len(paired) == (2 if name == "gowalla" else 0)
    assert {(r.loss, r.negatives) for r in paired} <= {(r.loss, r.negatives) for r in runs if r.seed == 2}
    assert all("+experiment=ssm_paper" in r.overrides() for r in new if r.loss == "ssm")
    assert len({r.key for r in runs}) == len(runs)
    # one block from step 9, after every step the plan had then (the step numbers of issue 27's runs unchanged; its
    # steps added later come after the block): conf/reproduce/queue.yaml says when the machine takes them
    at = [runs.index(r) for r in new]
    assert at == list(range(at[0], at[0] + len(new))) and new[0].step == 9
    assert all(r.encoder == "mf" and r.loss != "ssm" and r.patience is None for r in runs[at[-1] + 1 :])


def test_committed_gowalla_runs_stay_done(tmp_path):
    states = plan_state(load_plan("gowalla"), Stores(tmp_path / "no-store"), RESULTS)
    assert sum(s.state == DONE for s in states) == len(pd.read_csv(RESULTS / "gowalla" / "runs.csv"))


def test_runner_runs_an_early_stopping_ssm_paper_run_once(tmp_path, capsys):
    """A plan entry with +experiment=ssm_paper and patience runs through the runner; the finished run is found done
    by its key (patience included) and is not run again."""
    plan = write(tmp_path, (
        "dataset: sample\nexperiment: plan-test\nsteps:\n"
        "  - {encoder: lightgcn, loss: ssm, negatives: 2047, epochs: 3, patience: 1,"
        " overrides: [+experiment=ssm_paper, encoder.dim=8, tracking.save_checkpoint=false]}\n"
    ))  # fmt: skip
    runs = tmp_path / "stores"
    args = ["run", plan, "--runs", str(runs), "--results", str(tmp_path / "results"), "--threads", "1"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 0  # done: nothing runs again
    out = capsys.readouterr().out
    assert out.count(" done (") == 1 and "==" not in out and "lightgcn ssm N=2047 patience 1 seed 1" in out

"""`make reproduce-quick`: the paper in miniature (conf/reproduce/quick.yaml) within its 20-minute budget."""

import pandas as pd

from mmlexp.reproduce.estimate import OVERHEAD_S, committed_speeds, seconds_left
from mmlexp.reproduce.plan import load_plan
from mmlexp.reproduce.state import PENDING, RunState
from tests.conftest import REPO

RESULTS = REPO / "results"
BUDGET_S = 20 * 60  # issue 27 item 7: at most 20 minutes on 2 cores


def test_the_miniature_is_mml_ccl_bsl_at_10_and_100_negatives_with_full_epochs():
    plan = load_plan("quick")
    assert (plan.dataset, plan.experiment) == ("gowalla", "reproduce-quick")  # never the full runs' experiment
    cells = {(r.loss, r.negatives) for r in plan.runs}
    assert cells == {(loss, n) for loss in ("mml", "ccl", "bsl") for n in (10, 100)}
    assert all(r.encoder == "mf" and r.epochs >= 3 for r in plan.runs)  # whole epochs, not a few hundred steps
    assert all("trainer.max_steps" not in " ".join(r.overrides()) for r in plan.runs)


def measured_seconds(run) -> float:
    """The run's time from the committed full run of its cell: the median epoch (training + evaluation) of
    results/gowalla/epochs/, times its epochs, plus the per-run overhead."""
    path = RESULTS / "gowalla" / "epochs" / f"gowalla-mf-{run.loss}-N{run.negatives}-paper-seed1.csv"
    epochs = pd.read_csv(path)
    return run.epochs * (epochs["epoch_time_s"].median() + epochs["eval_time_s"].median()) + OVERHEAD_S


def test_the_plan_estimate_fits_the_budget_and_matches_the_committed_epoch_times():
    plan = load_plan("quick")
    speeds = committed_speeds(RESULTS)
    estimated = sum(seconds_left(RunState(r, PENDING), speeds) for r in plan.runs)
    measured = sum(measured_seconds(r) for r in plan.runs)
    assert estimated <= BUDGET_S and measured <= BUDGET_S
    assert abs(estimated - measured) <= 0.3 * measured  # the same runs, pooled over losses there

"""The reproduction's time estimate (mmlexp.reproduce.estimate) prices a run by what its composed config trains:
the batch of its loss or experiment, in-batch negatives by their benchmarked cost (not as B - 1 sampled
negatives), SimpleX's history attention, and an early-stopping run by where the stop fires on the committed
trajectory of the same run (else its cap, flagged). Values are recomputed here from the committed CSVs."""

import dataclasses
import math
import statistics

import numpy as np
import pandas as pd
import pytest

from mmlexp.devices import cpu_name
from mmlexp.reproduce import estimate as est
from mmlexp.reproduce.__main__ import main
from mmlexp.reproduce.plan import Run, load_plan
from mmlexp.reproduce.state import PENDING, RunState
from tests.conftest import REPO

RESULTS = REPO / "results"
GOWALLA_ROWS = est.SIZES["gowalla"][0]


def committed(dataset: str) -> pd.DataFrame:
    """The full runs of ``dataset`` committed in every results folder (``results/gowalla/``, and a plan of checks'
    ``results/gowalla_checks/``), as ``estimate.committed_speeds`` reads them."""
    runs = pd.concat([pd.read_csv(f) for f in sorted(RESULTS.glob("*/runs.csv"))], ignore_index=True)
    return runs[(runs["dataset"] == dataset) & runs["max_steps"].isna()].reset_index(drop=True)


def cost_per_interaction(rows: pd.DataFrame) -> list[float]:
    """Each run's median seconds per training interaction, straight from its epochs CSV."""
    return [float((1 / pd.read_csv(RESULTS / "gowalla" / r.epochs_csv)["interactions_per_s"]).median())
            for r in rows.itertuples()]  # fmt: skip


def run(loss="ccl", negatives=100, encoder="mf", seed=1, epochs=100, patience=None, extra=()) -> Run:
    return Run("gowalla", encoder, loss, negatives, "paper", seed, epochs, 1, "", tuple(extra), patience)


@pytest.mark.parametrize("rows", [810_128, 1_237_259, 729_115, 5_000])
@pytest.mark.parametrize("batch", [256, 512, 1024, 2048])
def test_the_batch_is_read_back_from_the_steps_an_epoch(rows, batch):
    assert est.implied_batch(rows, math.ceil(rows / batch)) == batch


def test_committed_runs_keep_the_batch_they_trained_with():
    """BSL trains with batch 1024 (conf/dataset_loss): its speeds are not pooled with the batch-256 runs'."""
    runs, speeds = committed("gowalla"), [s for s in est.committed_speeds(RESULTS) if s.dataset == "gowalla"]
    batch = {"bsl": 1024, "ssm": 2048}  # conf/dataset_loss's BSL batch, +experiment=ssm_paper's; 256 otherwise
    assert sorted(s.batch for s in speeds) == sorted(batch.get(loss, 256) for loss in runs["loss"])
    assert est.job_of(run("bsl")).batch == 1024 and est.job_of(run("ccl")).batch == 256


def test_a_sampled_run_is_fitted_over_runs_of_its_own_batch():
    bsl = committed("gowalla").query("loss == 'bsl' and selection == 'paper'")
    b, a = np.polyfit(bsl["num_negatives"].astype(float), cost_per_interaction(bsl), 1)
    n = 300  # no run has it (the curve points are 50, 200, 400): its cost is fitted
    assert n not in set(bsl["num_negatives"])
    got = est.estimate(run("bsl", negatives=n), est.committed_speeds(RESULTS))
    assert got.train_s == pytest.approx(GOWALLA_ROWS * (a + n * b)) and "batch 1024" in got.basis


def test_in_batch_negatives_cost_their_benchmarked_ratio_of_mf_not_2047_gathered_rows():
    speeds = [s for s in est.committed_speeds(RESULTS) if s.sampler != "in_batch"]  # as before any SSM run
    ssm = run("ssm", negatives=2047, encoder="lightgcn", epochs=1000, patience=15, extra=["+experiment=ssm_paper"])
    job = est.job_of(ssm)
    assert (job.sampler, job.batch, job.negatives, job.kind) == ("in_batch", 2048, 2047, "in_batch")
    mf100 = committed("gowalla").query("encoder == 'mf' and loss != 'bsl' and num_negatives == 100")  # batch 256
    lightgcn, mf = (est.RELATIVE_COST[(encoder, "in_batch")][0] for encoder in ("lightgcn", "mf"))
    expected = lightgcn * GOWALLA_ROWS * float(np.median(cost_per_interaction(mf100)))
    got = est.estimate(ssm, speeds)
    assert got.train_s == pytest.approx(expected) and f"x{lightgcn:.2f} of MF" in got.basis
    mf_ssm = est.estimate(run("ssm", 2047, "mf", epochs=1000, patience=15, extra=["+experiment=ssm_paper"]), speeds)
    assert mf_ssm.train_s == pytest.approx(expected / lightgcn * mf)
    measured = est.Speed("gowalla", "lightgcn", 2047, 2048, 2e-5, 4.0, 20, "in_batch")
    took_over = est.estimate(ssm, [*speeds, measured])  # once a run of it is measured, its speed is used
    assert took_over.train_s == pytest.approx(GOWALLA_ROWS * 2e-5) and took_over.basis.startswith("measured")


def test_a_committed_in_batch_run_prices_its_own_kind():
    """Once an SSM-setting run is committed, its per-epoch CSV prices the runs of its encoder and batch."""
    lightgcn = committed("gowalla").query("encoder == 'lightgcn' and loss == 'ssm'")
    assert len(lightgcn) == 1  # results/gowalla/runs.csv: plan step 9
    ssm = run("ssm", negatives=2047, encoder="lightgcn", epochs=1000, patience=15, extra=["+experiment=ssm_paper"])
    got = est.estimate(ssm, est.committed_speeds(RESULTS))
    expected = GOWALLA_ROWS * float(np.median(cost_per_interaction(lightgcn)))
    assert got.train_s == pytest.approx(expected) and got.basis.startswith("measured") and "batch 2048" in got.basis


HERE = "AMD EPYC (family 23, model 49)"


def test_runs_measured_on_another_cpu_are_scaled_by_what_this_cpu_measured():
    committed_speeds = est.committed_speeds(RESULTS)
    # a committed run made after runs were tagged keeps its CPU (runs.csv's cpu), so it is not scaled twice
    tagged = [c for d in ("gowalla", "yelp2018") for c in committed(d)["cpu"].dropna()]
    assert sorted(s.cpu for s in committed_speeds if s.cpu) == sorted(tagged)
    committed_speeds = [s for s in committed_speeds if not s.cpu]  # as if none had been made on this CPU
    assert est.on_this_cpu(committed_speeds, HERE) == committed_speeds  # nothing measured here: unchanged
    mf100 = committed("gowalla").query("encoder == 'mf' and loss != 'bsl' and num_negatives == 100 and cpu.isna()")
    c100 = float(np.median(cost_per_interaction(mf100)))
    evals = [s.eval_s for s in committed_speeds if s.dataset == "gowalla"]
    here = est.Speed("gowalla", "mf", 100, 256, 2.5 * c100, 3 * float(np.median(evals)), 100, cpu=HERE)
    running = est.Speed("gowalla", "mf", 100, 256, 10 * c100, 1.0, 5, running=True, cpu=HERE)  # not a measure yet
    speeds = est.on_this_cpu([*committed_speeds, here, running], HERE)
    assert speeds[-2:] == [here, running]  # measured here: as they are
    for old, new in zip(committed_speeds, speeds, strict=False):  # gowalla's scaled; yelp2018's as they were
        f, fe = (2.5, 3) if old.dataset == "gowalla" else (1, 1)
        assert new.per_interaction == pytest.approx(f * old.per_interaction)
        assert new.eval_s == pytest.approx(fe * old.eval_s) or math.isnan(old.eval_s)
    assert speeds[0].scaled == f"x2.50 (eval x3.00) for this CPU, {HERE}: 1 run(s) of gowalla measured on it"
    yelp = est.Speed("yelp2018", "mf", 100, 512, c100, 5.0, 100)  # measured elsewhere, nothing of yelp2018 here
    assert est.on_this_cpu([*committed_speeds, here, yelp], HERE)[-1] == yelp
    # a job measured nowhere here (BSL, batch 1024) is priced from the other CPU's runs, scaled, and says so
    bsl, scaled_bsl = est.estimate(run("bsl"), committed_speeds), est.estimate(run("bsl"), speeds[:-1])
    assert scaled_bsl.train_s == pytest.approx(2.5 * bsl.train_s) and scaled_bsl.eval_s == pytest.approx(3 * bsl.eval_s)
    assert "x2.50 (eval x3.00) for this CPU" in scaled_bsl.basis and "(scaled to this CPU)" in scaled_bsl.basis
    assert "for this CPU" not in bsl.basis


def test_a_dataset_measured_nowhere_here_takes_the_ratio_of_two_named_cpus_from_another_dataset():
    """No Yelp2018 run has finished on this CPU, but Gowalla runs were made both here and on the Xeon its runs are
    tagged with: the Xeon's Yelp2018 runs are scaled by here / Xeon measured on Gowalla; its untagged runs (made on
    a machine nobody named) and another CPU's stay as they were."""
    xeon, other = "Intel Xeon (family 6, model 207)", "AMD EPYC (family 23, model 1)"
    go = [  # gowalla: N=200 and N=400 on the Xeon (two runs at 200), the same jobs here; N=50 only on the Xeon
        est.Speed("gowalla", "mf", 200, 256, 4e-5, 2.0, 100, cpu=xeon),
        est.Speed("gowalla", "mf", 200, 256, 6e-5, 2.2, 100, cpu=xeon),
        est.Speed("gowalla", "mf", 400, 256, 8e-5, 2.1, 100, cpu=xeon),
        est.Speed("gowalla", "mf", 50, 256, 3e-5, 1.9, 100, cpu=xeon),
        est.Speed("gowalla", "mf", 200, 256, 3e-5, 1.4, 100, cpu=HERE),
        est.Speed("gowalla", "mf", 400, 256, 4e-5, 1.6, 100, cpu=HERE),
        est.Speed("gowalla", "mf", 400, 256, 9e-5, 9.9, 7, running=True, cpu=HERE),  # in flight: no measure
    ]
    yelp = [
        est.Speed("yelp2018", "mf", 10, 512, 5e-5, 3.0, 100, cpu=xeon),
        est.Speed("yelp2018", "mf", 100, 512, 7e-5, 3.1, 100),  # untagged
        est.Speed("yelp2018", "mf", 800, 512, 9e-5, 3.2, 100, cpu=other),
    ]
    got = est.on_this_cpu([*go, *yelp], HERE)
    # here / Xeon: 3e-5 / median(4e-5, 6e-5) = 0.6 and 4e-5 / 8e-5 = 0.5; evals against the Xeon's median eval 2.05
    f, fe = float(np.median([0.6, 0.5])), float(np.median([1.4 / 2.05, 1.6 / 2.05]))
    scaled = got[len(go)]
    assert scaled.per_interaction == pytest.approx(f * 5e-5) and scaled.eval_s == pytest.approx(fe * 3.0)
    assert (
        scaled.scaled
        == f"x{f:.2f} (eval x{fe:.2f}) for this CPU, {HERE}, from {xeon}: 2 run(s) of gowalla measured on both"
    )
    assert got[len(go) + 1 :] == yelp[1:]  # untagged, or a CPU with no run paired here: as measured
    assert (
        got[:4]
        == [  # gowalla's own runs elsewhere take gowalla's factor, as before (here against any CPU)
            dataclasses.replace(s, per_interaction=f * s.per_interaction, eval_s=fe * s.eval_s, scaled=got[0].scaled)
            for s in go[:4]
        ]
    )
    assert got[4 : len(go)] == go[4:] and got[0].scaled.endswith("2 run(s) of gowalla measured on it")


def test_a_trajectory_made_on_this_cpu_is_preferred_and_its_replay_is_exact():
    cell = ("gowalla", "mf", "ccl", 100, "paper", 1)
    elsewhere = est.Trajectory(cell, frozenset(), pd.DataFrame({"epoch": [1, 2, 3, 4], "recall@20": [1, 0, 0, 0]}))
    here = est.Trajectory(cell, frozenset(), pd.DataFrame({"epoch": [1, 2, 3, 4, 5], "recall@20": [1, 2, 0, 0, 0]}),
                          cpu=HERE)  # fmt: skip
    marked = est.mark_here([elsewhere, here], HERE)
    assert [t.here for t in marked] == [False, True] and est.mark_here([elsewhere], "")[0].here is False
    got = est.estimate(run("ccl", patience=3), [], marked)  # its own curve stops after epoch 5, the other's after 4
    assert got.epochs == 5 and "(a replay of a run made on this CPU: exact)" in got.epochs_basis
    got = est.estimate(run("ccl", patience=3), [], marked[:1])
    assert got.epochs == 4 and f"({est.REPLAY_ELSEWHERE})" in got.epochs_basis


def test_simplex_prices_its_history_attention_only_when_gamma_uses_it():
    gowalla = est.job_of(run("ccl", encoder="simplex"))  # SimpleX_gowalla_m1: gamma 0.8
    yelp = est.job_of(Run("yelp2018", "simplex", "ccl", 100, "paper", 1, 100, 1))  # SimpleX_yelp18_m1: gamma 1
    assert (gowalla.kind, yelp.kind) == ("history", "sampled")


def test_simplex_without_its_history_is_not_priced_from_runs_that_ran_it():
    """Yelp2018's SimpleX (gamma 1) costs what MF costs, not what the committed Gowalla SimpleX runs (gamma 0.8, the
    history attention) measured: only those price a SimpleX run that runs the attention."""
    speeds = est.committed_speeds(RESULTS)
    gowalla_simplex = [s for s in speeds if s.encoder == "simplex"]
    assert gowalla_simplex and all(s.history and s.dataset == "gowalla" for s in gowalla_simplex)
    assert not any(s.history for s in speeds if s.encoder == "mf")
    yelp = est.estimate(Run("yelp2018", "simplex", "ccl", 100, "paper", 1, 100, 1), speeds)
    mf = est.estimate(Run("yelp2018", "mf", "ccl", 100, "paper", 1, 100, 1), speeds)
    ratio, _ = est.RELATIVE_COST[("simplex", "sampled")]
    assert yelp.train_s == pytest.approx(ratio * mf.train_s) and "gamma = 1" in yelp.basis
    history_cost = statistics.median(s.per_interaction for s in gowalla_simplex)
    assert yelp.train_s < 0.5 * history_cost * est.SIZES["yelp2018"][0]  # the attention's price is not charged
    gowalla = est.estimate(run("ccl", encoder="simplex"), speeds)
    assert "measured" in gowalla.basis and "gamma = 1" not in gowalla.basis


def first_stop(recall: pd.Series, patience: int) -> int:
    """Independently: the first epoch at least `patience` epochs after the epoch that set the running best."""
    epochs = recall.index.to_series()
    best_at = epochs.groupby(recall.cummax().to_numpy()).transform("first")  # where each running best first appears
    gap = epochs - best_at
    return int(recall.index[gap.to_numpy() >= patience][0]) + 1


def test_an_early_stopping_run_stops_where_the_committed_trajectory_says():
    trajectories = est.committed_trajectories(RESULTS)
    plan = load_plan("gowalla")
    seed1 = [r for r in plan.runs if r.encoder == "mf" and r.early_stop and r.loss != "ssm" and r.seed == 1]
    assert {r.loss for r in seed1} == {"ccl", "mml"}
    for r in seed1:
        csv = committed("gowalla").query(
            f"encoder == 'mf' and loss == '{r.loss}' and num_negatives == 100 and selection == 'paper'"
            " and early_stop == 'N' and seed == 1"
        )
        recall = pd.read_csv(RESULTS / "gowalla" / csv.iloc[0].epochs_csv).sort_values("epoch")["recall@20"]
        got = est.estimate(r, est.committed_speeds(RESULTS), trajectories)
        assert (got.epochs, got.capped) == (first_stop(recall.reset_index(drop=True), 3), False)
        assert got.epochs < r.epochs and "committed run" in got.epochs_basis
        assert est.REPLAY_ELSEWHERE in got.epochs_basis  # made before runs were tagged
    unseen = run("ccl", seed=7, patience=3)  # no committed run of seed 7: nothing predicts the stop
    got = est.estimate(unseen, [], trajectories)
    assert (got.epochs, got.capped) == (100, True)
    other_weight = run("ccl", patience=3, extra=["loss.neg_weight=250"])  # trained differently: not its trajectory
    assert est.estimate(other_weight, [], trajectories).capped


def test_status_says_which_early_stopping_runs_are_priced_at_their_cap(tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "dataset: gowalla\nsteps:\n"
        "  - {loss: bsl, negatives: 100, patience: 3}\n"  # no early-stopping BSL run is committed: priced here
        "  - {loss: ssm, encoder: mf, negatives: 2047, epochs: 1000, patience: 15, seed: 7,"  # seed 1 is committed
        " overrides: ['+experiment=ssm_paper']}\n"
    )
    assert main(["status", str(plan), "--runs", str(tmp_path / "runs"), "--results", str(RESULTS)]) == 0
    out = capsys.readouterr().out
    assert "stops after epoch" in out and "up to 1000 epochs" in out
    speeds, trajectories = est.committed_measurements(RESULTS)
    speeds = est.on_this_cpu(speeds, cpu_name())  # as the status prices: committed runs made here set the factor
    ssm = next(r for r in load_plan(str(plan)).runs if r.loss == "ssm")
    at_cap = est.seconds_left(RunState(ssm, PENDING), speeds, trajectories)
    assert f"of which {est.human(at_cap)} prices 1 early-stopping run(s) at their epoch cap" in out


@pytest.mark.parametrize(
    "override, named",
    [
        ("trainer.batchsize=64", "Could not override 'trainer.batchsize'"),  # it does not compose
        ("+trainer.batchsize=64", "trainer.batchsize: no such key in trainer"),  # the run would refuse it
        ("+experiment=not_an_experiment", "not_an_experiment"),  # it does not compose
    ],
)
def test_a_step_whose_config_is_refused_is_named_before_it_is_queued(tmp_path, capsys, override, named):
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"dataset: gowalla\nsteps:\n  - {{loss: ccl, negatives: 300, overrides: ['{override}']}}\n")
    runs = tmp_path / "runs"
    assert main(["status", str(plan), "--runs", str(runs), "--results", str(RESULTS)]) == 2
    err = capsys.readouterr().err
    assert "step 1 (ccl N=300 seed 1)" in err and override in err and named in err and "Traceback" not in err
    assert not runs.exists()  # nothing written


def test_the_sweep_estimate_script_uses_the_same_cost_model():
    import sys

    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import estimate_runtime as script
    finally:
        sys.path.pop(0)
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf")):
        cfg = compose("config", overrides=["dataset=gowalla", "loss=bsl", "num_negatives=50"], return_hydra_config=True)
    got = script.job_estimate(cfg, dict(cfg.hydra.runtime.choices), est.committed_speeds(RESULTS))
    expected = est.estimate(run("bsl", negatives=50), est.committed_speeds(RESULTS))
    assert got["batch"] == 1024 and got["epoch_s"] == pytest.approx(expected.epoch_s)
    # without a store: the committed speeds, brought to this CPU as the status brings them
    assert script.measured_speeds(None) == est.on_this_cpu(est.committed_speeds(RESULTS), cpu_name())


def test_steps_run_in_the_order_given(tmp_path):
    from mmlexp.reproduce.plan import select_steps

    plan = tmp_path / "plan.yaml"
    plan.write_text("dataset: gowalla\nsteps:\n  - {loss: mml, negatives: 10}\n  - {loss: ccl, negatives: [10, 100]}\n")
    picked = select_steps(load_plan(str(plan)), [2, 1])
    assert [(r.step, r.loss, r.negatives) for r in picked.runs] == [(2, "ccl", 10), (2, "ccl", 100), (1, "mml", 10)]


@pytest.mark.parametrize("pace_ratio", [0.5, 1.0, 2.6])
def test_a_running_run_off_its_estimate_rescales_the_pending_runs(pace_ratio, capsys):
    from mmlexp.reproduce.__main__ import PACE_BAND, describe
    from mmlexp.reproduce.state import RUNNING

    plan = load_plan("gowalla")
    speeds, trajectories = est.committed_measurements(RESULTS)
    first, second, third = run("mml", seed=9), run("ccl", seed=9), run("bsl", seed=9)
    per_epoch = est.estimate(first, speeds).epoch_s
    states = [RunState(first, RUNNING, "id", 40, per_epoch * pace_ratio), RunState(second, PENDING),
              RunState(third, PENDING)]  # fmt: skip
    total = describe(plan, states, speeds, trajectories)
    out = capsys.readouterr().out
    running_left = 60 * per_epoch * pace_ratio  # 100 epochs, 40 done, at its own pace
    pending = [est.seconds_left(s, speeds) for s in states[1:]]
    assert total == pytest.approx(running_left + sum(pending))
    scaled = running_left + pace_ratio * sum(pending)
    if PACE_BAND[0] <= pace_ratio <= PACE_BAND[1]:
        assert "at the pace of the running run" not in out
    else:
        assert f"at the pace of the running run instead (~{est.human(scaled)})" in out
        assert f"x{pace_ratio:.2f}" in out and ("slower" if pace_ratio > 1 else "faster") in out


def test_the_pace_is_compared_with_an_estimate_that_leaves_the_running_run_out(capsys):
    from mmlexp.reproduce.__main__ import describe
    from mmlexp.reproduce.state import RUNNING

    speeds, trajectories = est.committed_measurements(RESULTS)
    first = run("mml", seed=9)
    measured = est.estimate(first, speeds)
    per = measured.train_s / GOWALLA_ROWS
    # the running run's own speed, 2.6x the committed ones, counted as often as they are: it would move the median
    own = [est.Speed("gowalla", "mf", 100, 256, 2.6 * per, measured.eval_s, 40, running=True)] * len(speeds)
    states = [RunState(first, RUNNING, "id", 40, 2.6 * measured.epoch_s), RunState(run("ccl", seed=9), PENDING)]
    describe(load_plan("gowalla"), states, speeds + own, trajectories)
    assert "x2.60 the" in capsys.readouterr().out

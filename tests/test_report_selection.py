"""mmlexp.report.selection: the selected, test-best and last epoch of each run against values worked out by hand
on a small history, the report lines, the learning-curves figure, and the committed Gowalla runs."""

import math

import numpy as np
import pandas as pd
import pytest

from mmlexp.report.selection import (
    plot_learning_curves,
    protocol_gains,
    run_monitor,
    selection_gaps,
    selection_md,
    stop_epoch,
)
from tests.conftest import REPO

RESULTS = REPO / "results" / "gowalla"


def run(run_id, loss, selection, best_epoch, n=100):
    return {
        "run_id": run_id,
        "dataset": "gowalla",
        "encoder": "mf",
        "loss": loss,
        "num_negatives": n,
        "early_stop": "N",
        "selection": selection,
        "seed": 1,
        "best_epoch": best_epoch,
    }


def history(run_id, recall, ndcg):
    return pd.DataFrame({"run_id": run_id, "epoch": range(1, len(recall) + 1), "recall@20": recall, "ndcg@20": ndcg})


@pytest.fixture
def toy():
    runs = pd.DataFrame(
        [
            run("p", "mml", "paper", 2),
            run("v", "ccl", "valid", 1),
            run("gone", "bsl", "paper", 1),  # no per-epoch history: left out
            run("early", "bpr", "paper", 1, n=10),
        ]
    )
    runs["best_epoch"] = pd.array(runs["best_epoch"], dtype="Int64")
    hist = pd.concat(
        [
            history("p", [0.10, 0.30, 0.20], [0.05, 0.10, 0.12]),
            # a tie at the top: the first epoch with it is the test-best one
            history("v", [0.20, 0.25, 0.25, 0.10], [0.10, 0.11, 0.13, 0.05]),
            history("early", [0.07] + [0.06] * 19 + [0.065], [0.05] + [0.04] * 20),
        ],
        ignore_index=True,
    )
    return runs, hist


def test_epochs_and_gaps_match_a_hand_worked_history(toy):
    runs, hist = toy
    gaps = selection_gaps(runs, hist)
    assert set(gaps["run_id"]) == {"p", "v", "early"}
    got = {(r.run_id, r.metric): r for r in gaps.itertuples()}

    p = got["p", "recall@20"]
    assert (p.selected_epoch, p.test_best_epoch, p.last_epoch) == (2, 2, 3)
    assert (p.selected, p.test_best, p.last) == (0.30, 0.30, 0.20)
    assert p.test_best_minus_selected == 0 and p.test_best_minus_last == pytest.approx(0.10)
    # NDCG is read at the epoch Recall@20 picks (2), not at its own maximum (3)
    pn = got["p", "ndcg@20"]
    assert (pn.test_best_epoch, pn.test_best, pn.last) == (2, 0.10, 0.12)
    assert pn.test_best_minus_last == pytest.approx(-0.02)

    v = got["v", "recall@20"]
    assert (v.selected_epoch, v.test_best_epoch, v.last_epoch) == (1, 2, 4)
    assert v.test_best_minus_selected == pytest.approx(0.05) and v.test_best_minus_last == pytest.approx(0.15)
    assert got["v", "ndcg@20"].test_best_minus_selected == pytest.approx(0.01)
    # ordered by dataset, negatives, then the paper's loss order, Recall@20 before NDCG@20
    assert list(zip(gaps["run_id"], gaps["metric"], strict=True)) == [
        ("early", "recall@20"),
        ("early", "ndcg@20"),
        ("p", "recall@20"),
        ("p", "ndcg@20"),
        ("v", "recall@20"),
        ("v", "ndcg@20"),
    ]


def test_a_run_that_monitored_ndcg_is_read_at_its_ndcg_peak(toy):
    """SimpleX_gowalla_m1 monitors NDCG@20: its test-best epoch is where NDCG@20 peaks (3), not Recall@20 (2)."""
    runs, hist = toy
    runs = runs[runs["run_id"] == "p"].assign(overrides="loss=mml trainer.monitor=ndcg@20", best_epoch=3)
    got = {r.metric: r for r in selection_gaps(runs, hist).itertuples()}
    assert [run_monitor(r) for r in runs.itertuples()] == ["ndcg@20"]
    assert (got["ndcg@20"].test_best_epoch, got["ndcg@20"].test_best, got["ndcg@20"].test_best_minus_selected) == (
        3,
        0.12,
        0.0,
    )
    assert (got["recall@20"].test_best_epoch, got["recall@20"].test_best) == (3, 0.20)  # read there, not its max


def test_a_best_epoch_outside_the_history_leaves_selected_empty(toy):
    runs, hist = toy
    runs.loc[runs["run_id"] == "p", "best_epoch"] = 9
    row = selection_gaps(runs, hist).query("run_id == 'p' and metric == 'recall@20'").iloc[0]
    assert pd.isna(row["selected_epoch"]) and math.isnan(row["selected"]) and row["test_best_epoch"] == 2


def test_report_lines_name_the_valid_gap_the_early_peaks_and_the_rising_runs(toy):
    runs, hist = toy
    text = "\n".join(selection_md(selection_gaps(runs, hist)))
    assert "| gowalla | MF + CCL | 100 | valid | 1 | Recall@20 | 0.2000 (1) | 0.2500 (2) | 0.1000 (4) |" in text
    assert "+0.0500 (+25.0%)" in text  # test-best − selected for the valid run: 0.05 / 0.20
    assert "would report 0.2500 (epoch 2) instead of 0.2000 (epoch 1)" in text
    # bpr peaks at epoch 1 of 21 (first tenth: epoch <= 2); last 0.065 is 0.005 below 0.07
    assert "MF + BPR N=10 (paper, seed 1): epoch 1 of 21 (last -0.0050 (-7.1%))" in text
    assert "still rising" not in text
    runs.loc[runs["run_id"] == "early", "best_epoch"] = 21
    rising = pd.concat([hist[hist["run_id"] != "early"], history("early", [0.01 * e for e in range(1, 22)], [0] * 21)])
    assert "still rising when training stopped" in "\n".join(selection_md(selection_gaps(runs, rising)))
    assert selection_md(selection_gaps(runs, hist.iloc[:0])) == ["No run has per-epoch test metrics.", ""]


def test_an_early_stopping_run_has_its_own_row_beside_the_full_run(toy):
    runs, hist = toy
    es = run("es", "mml", "paper", 1) | {"early_stop": "Y"}
    runs = pd.concat([runs, pd.DataFrame([es])], ignore_index=True)
    hist = pd.concat([hist, history("es", [0.25, 0.24], [0.09, 0.08])], ignore_index=True)
    gaps = selection_gaps(runs, hist)
    rows = [line for line in selection_md(gaps)[0].splitlines() if "| Recall@20 |" in line and "| 100 |" in line]
    assert rows == [
        "| gowalla | MF + MML | 100 | paper | 1 | Recall@20 | 0.3000 (2) | 0.3000 (2) | 0.2000 (3) | +0.0000 (+0.0%) "
        "| +0.1000 (+50.0%) |",
        "| gowalla | MF + MML, early stop | 100 | paper | 1 | Recall@20 | 0.2500 (1) | 0.2500 (1) | 0.2400 (2) "
        "| +0.0000 (+0.0%) | +0.0100 (+4.2%) |",
        "| gowalla | MF + CCL | 100 | valid | 1 | Recall@20 | 0.2000 (1) | 0.2500 (2) | 0.1000 (4) | +0.0500 (+25.0%) "
        "| +0.1500 (+150.0%) |",
    ]


def test_learning_curves_have_a_panel_per_dataset_and_negatives(toy):
    runs, hist = toy
    fig = plot_learning_curves(hist, runs)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["Gowalla, N=10", "Gowalla, N=100"]
    n100 = fig.axes[1]
    styles = {
        line.get_label(): line.get_linestyle() for line in n100.get_lines() if not line.get_label().startswith("_")
    }
    assert styles == {"MF + MML s1": "-", "MF + CCL s1 (valid)": "--"}
    # the marker of each run sits at its selected epoch
    markers = [line for line in n100.get_lines() if line.get_linestyle() in ("None", "none", "")]
    assert sorted((float(m.get_xdata()[0]), float(m.get_ydata()[0])) for m in markers) == [(1.0, 0.20), (2.0, 0.30)]
    assert [ax.get_title() for ax in plot_learning_curves(hist.iloc[:0], runs).axes] == ["no per-epoch history"]


@pytest.mark.skipif(not (RESULTS / "selection.csv").is_file(), reason="no committed results/gowalla/selection.csv")
def test_committed_selection_is_what_each_runs_epochs_give():
    """Every committed run: its epoch CSV's argmax of test Recall@20, read here with numpy, is the test-best epoch,
    and for `paper` runs it is also the run's own best epoch."""
    runs = pd.read_csv(RESULTS / "runs.csv")
    gaps = pd.read_csv(RESULTS / "selection.csv")
    assert set(gaps["run_id"]) == set(runs["run_id"])
    for _, r in runs.iterrows():
        epochs = pd.read_csv(RESULTS / r.epochs_csv)
        monitor = run_monitor(r)  # Recall@20 unless the run set another (SimpleX_gowalla_m1: NDCG@20)
        top = int(epochs["epoch"].to_numpy()[np.argmax(epochs[monitor].to_numpy())])
        row = gaps[(gaps["run_id"] == r.run_id) & (gaps["metric"] == "recall@20")].iloc[0]
        assert row["test_best_epoch"] == top and row["test_best"] == epochs.set_index("epoch")["recall@20"][top]
        assert row["last_epoch"] == epochs["epoch"].max()
        assert row["last_epoch"] == r.epochs if r.early_stop == "N" else row["last_epoch"] < r.epochs
        assert row["selected"] == r["recall@20"]  # the run's best/ number
        if r.selection == "paper":  # the run kept the epoch the protocol reports
            assert row["selected_epoch"] == top == r.best_epoch


def test_paper_against_valid_splits_the_gap_into_selection_and_held_out_data(toy):
    runs, hist = toy
    assert "of the same setting and seed" not in "\n".join(selection_md(selection_gaps(runs, hist)))  # no pair
    runs = pd.concat([runs, pd.DataFrame([run("pc", "ccl", "paper", 3)])], ignore_index=True)
    hist = pd.concat([hist, history("pc", [0.20, 0.30, 0.40], [0.10, 0.15, 0.21])], ignore_index=True)
    text = "\n".join(selection_md(selection_gaps(runs, hist)))
    # valid run v: selected 0.20 (epoch 1), test-best 0.25; the paper run: 0.40. Gap 0.20 = 0.05 + 0.15.
    assert (
        "gowalla MF + CCL N=100 seed 1, Recall@20: `paper` 0.4000 against `valid` 0.2000, a gap of +0.2000 (+50.0% of "
        "the paper run): choosing the epoch on test accounts for +0.0500, training without the held-out slice for "
        "+0.1500." in text
    )
    # NDCG: paper 0.21 at its epoch 3; valid 0.10 at epoch 1, 0.11 at the Recall-best epoch 2
    assert "`paper` 0.2100 against `valid` 0.1000, a gap of +0.1100" in text and "accounts for +0.0100" in text


def test_gains_over_the_baseline_under_both_protocols_and_a_flip_is_named():
    def row(selection, metric, diff, rel, n):
        return dict(
            dataset="gowalla",
            encoder="mf",
            num_negatives=100,
            early_stop="N",
            selection=selection,
            loss="mml",
            baseline="ccl",
            metric=metric,
            n_pairs=n,
            mean_diff=diff,
            rel_diff_pct=rel,
        )

    tests = pd.DataFrame(
        [
            row("paper", "recall@20", 0.0032, 1.8, 3),
            row("valid", "recall@20", 0.0021, 1.2, 1),
            row("paper", "ndcg@20", 0.0009, 0.7, 3),
            row("valid", "ndcg@20", -0.0004, -0.3, 1),
            row("paper", "recall@50", 0.01, 2.0, 3),  # no valid counterpart: no line
        ]
    )
    lines = protocol_gains(tests)
    assert (
        "* gowalla MML − CCL N=100, Recall@20: `paper` +0.0032 (+1.8%, 3 seed(s)), `valid` +0.0021 (+1.2%, 1 seed(s)): "
        "the same loss is ahead under both." in lines
    )
    assert any("NDCG@20" in line and line.endswith("**the protocol changes which loss is ahead**.") for line in lines)
    assert not any("@50" in line for line in lines) and len(lines) == 5  # header, blank, two lines, blank
    assert protocol_gains(tests[tests["selection"] == "paper"]) == []


@pytest.mark.parametrize(
    "scores, patience, stop",
    [
        ([0.1, 0.2, 0.2, 0.15, 0.19], 3, 5),  # a tie is not better
        ([0.1, 0.2, 0.3, 0.25, 0.31, 0.3], 2, None),
        ([0.3, 0.2], 1, 2),
    ],
)
def test_stop_epoch_counts_evaluations_without_a_strictly_better_score(scores, patience, stop):
    assert stop_epoch(scores, patience) == stop

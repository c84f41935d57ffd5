"""`python -m mmlexp.report` against a real tiny tracked sweep on the embedded sample: every number in the report is
checked against values computed here independently (MlflowClient, a hand-made t-interval, scipy on the same pairs,
the paper CSVs), plus figures, run ids, bad options, the experiment files and the run-time estimate."""

import math
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats

from mmlexp.report import aggregate, fetch_runs, mean_ci, negative_curves, paired_tests, plot_negative_curves
from mmlexp.report.__main__ import main
from tests.conftest import EXPERIMENT

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "src" / "mmlexp" / "resources" / "paper"


def child_runs(uri: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    return [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("sweep.role") != "parent"]


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    uri, _ = store
    out = tmp_path_factory.mktemp("reports")
    assert main(["--tracking-uri", uri, "--experiment", EXPERIMENT, "--out", str(out), "--name", "tiny"]) == 0
    return out / "tiny"


def by_cell(uri: str, metric: str) -> dict[tuple[str, int], dict[int, float]]:
    """(loss, negatives) -> {seed: best metric}, straight from MLflow."""
    cells = defaultdict(dict)
    for r in child_runs(uri):
        p = r.data.params
        cells[(r.data.tags["choice.loss"], int(p["num_negatives"]))][int(p["seed"])] = r.data.metrics[
            f"best/{metric.replace('@', '_at_')}"
        ]
    return cells


def test_fetch_runs_one_row_per_finished_child_run(store):
    uri, _ = store
    df = fetch_runs(uri, EXPERIMENT)
    runs = child_runs(uri)
    assert len(runs) == 8 and len(df) == 8
    assert set(df["run_id"]) == {r.info.run_id for r in runs}  # the sweep's parent run is left out
    assert set(df["loss"]) == {"mml", "ccl"} and set(df["num_negatives"]) == {10, 100} and set(df["seed"]) == {1, 2}
    assert str(df["num_negatives"].dtype) == "Int64" and str(df["seed"].dtype) == "Int64"
    assert (df["dataset"] == "sample").all() and (df["encoder"] == "mf").all() and (df["early_stop"] == "N").all()
    assert set(df["selection"]) <= {"paper", "valid"}
    for r in runs:
        row = df[df["run_id"] == r.info.run_id].iloc[0]
        assert row["recall@20"] == r.data.metrics["best/recall_at_20"]
        assert row["ndcg@20"] == r.data.metrics["best/ndcg_at_20"]
        assert row["recall@50"] == r.data.metrics["best/recall_at_50"]  # every best/ metric, '@' names
    assert len(fetch_runs(uri, [EXPERIMENT], "params.num_negatives = '10'")) == 4


def test_cells_mean_and_t_interval_match_hand_computation(store, report):
    uri, _ = store
    cells = pd.read_csv(report / "cells.csv")
    for metric in ("recall@20", "ndcg@20"):
        for (loss, n), seeds in by_cell(uri, metric).items():
            row = cells[(cells["loss"] == loss) & (cells["num_negatives"] == n) & (cells["metric"] == metric)]
            assert len(row) == 1
            row = row.iloc[0]
            values = list(seeds.values())
            mean, sd = statistics.mean(values), statistics.stdev(values)
            half = stats.t.ppf(0.975, len(values) - 1) * sd / math.sqrt(len(values))
            assert row["n"] == 2 and row["seeds"] == "1 2"
            assert row["mean"] == pytest.approx(mean, rel=1e-12, abs=1e-15)
            assert row["ci_low"] == pytest.approx(mean - half, rel=1e-9, abs=1e-15)
            assert row["ci_high"] == pytest.approx(mean + half, rel=1e-9, abs=1e-15)
            assert row["selection"] in ("paper", "valid")


def test_paired_test_matches_scipy_on_the_same_pairs(store, report):
    uri, _ = store
    tests = pd.read_csv(report / "paired_tests.csv")
    assert set(tests["loss"]) == {"mml"} and set(tests["baseline"]) == {"ccl"}
    for metric in ("recall@20", "ndcg@20"):
        cells = by_cell(uri, metric)
        for n in (10, 100):
            a, b = cells[("mml", n)], cells[("ccl", n)]
            x, y = [a[s] for s in (1, 2)], [b[s] for s in (1, 2)]
            row = tests[(tests["num_negatives"] == n) & (tests["metric"] == metric)].iloc[0]
            assert row["n_pairs"] == 2
            assert row["mean_diff"] == pytest.approx(statistics.mean(x) - statistics.mean(y), abs=1e-15)
            expected = stats.ttest_rel(x, y).pvalue
            if math.isnan(expected):  # identical differences: no variance
                assert math.isnan(row["p_value"])
            else:
                assert row["p_value"] == pytest.approx(expected, rel=1e-9)
    assert "## Paired tests against CCL" in (report / "report.md").read_text()


def test_paper_columns_equal_the_paper_data(store, report):
    uri, _ = store
    for name, keys in (("table2", ["encoder", "loss", "early_stop"]), ("table3", ["loss"])):
        paper = pd.read_csv(PAPER / f"{name}.csv")
        table = pd.read_csv(report / f"{name}.csv")
        merged = paper.merge(table, on=[*keys, "dataset", "metric"], suffixes=("_csv", ""))
        assert len(merged) == len(paper)  # every paper cell is in the report
        assert (merged["paper"] == merged["paper_csv"]).all()
        assert merged["mean"].isna().all() and (merged["n"] == 0).all()  # no gowalla/yelp runs: shown as —
    # our sample runs at 100 negatives (MF, no early stop) are Table 3 cells of their own, without a paper value
    table3 = pd.read_csv(report / "table3.csv")
    ours = table3[(table3["dataset"] == "sample") & (table3["metric"] == "recall@20")].set_index("loss")
    cells = by_cell(uri, "recall@20")
    for loss in ("mml", "ccl"):
        assert ours.loc[loss, "mean"] == pytest.approx(statistics.mean(cells[(loss, 100)].values()), abs=1e-15)
        assert math.isnan(ours.loc[loss, "paper"]) and math.isnan(ours.loc[loss, "diff"])
    md = (report / "report.md").read_text()
    assert "| MF | MML | N | — | 0.0702 | — |" in md  # a paper row without runs
    assert "| MML | — | 0.0702 | — |" in md


def test_figures_and_run_ids_are_written(store, report):
    uri, _ = store
    for stem in ("figure3_negatives", "time_to_accuracy"):
        for ext in ("png", "svg"):
            assert (report / f"{stem}.{ext}").stat().st_size > 1000
    assert (report / "figure3_negatives.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if fetch_runs(uri, EXPERIMENT).filter(like="tail_recall@20_g").notna().any().any():
        assert (report / "long_tail.png").stat().st_size > 1000
    md = (report / "report.md").read_text()
    for link in ("figure3_negatives.png", "time_to_accuracy.png", "runs.csv", "table2.csv", "table3.csv"):
        assert f"]({link})" in md
    runs = pd.read_csv(report / "runs.csv")
    ids = {r.info.run_id for r in child_runs(uri)}
    assert set(runs["run_id"]) == ids and runs["selection"].notna().all()
    cells = pd.read_csv(report / "cells.csv")
    assert set(" ".join(cells["run_ids"]).split()) == ids
    assert all(i[:8] in md for i in ids)
    history = pd.read_csv(report / "time_to_accuracy.csv")
    assert len(history) and set(history["epoch"]) == {1, 2}
    assert (history.groupby("run_id")["seconds"].diff().dropna() > 0).all()


def test_unknown_experiment_is_a_clear_error_and_writes_nothing(store, tmp_path, capsys):
    uri, _ = store
    out = tmp_path / "out"
    assert main(["--tracking-uri", uri, "--experiment", "no-such-exp", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'no-such-exp'" in err and EXPERIMENT in err and "existing experiments" in err
    assert not out.exists()
    # a store that does not exist is refused and not created
    missing = tmp_path / "missing.db"
    assert main(["--tracking-uri", f"sqlite:///{missing}", "--out", str(out)]) == 2
    assert "no MLflow store" in capsys.readouterr().err
    assert not missing.exists() and not out.exists()
    # filters that leave nothing
    assert main(["--tracking-uri", uri, "--experiment", EXPERIMENT, "--loss", "bpr", "--out", str(out)]) == 2
    assert "no FINISHED runs match" in capsys.readouterr().err and not out.exists()


def test_cli_runs_as_a_module(store, tmp_path):
    uri, _ = store
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmlexp.report",
            "--tracking-uri",
            uri,
            "--experiment",
            "nope",
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "unknown experiment 'nope'" in proc.stderr and not (tmp_path / "r").exists()


def test_selection_protocols_are_reported_apart(store, tmp_path):
    """Runs selected on a validation split (eval.selection=valid) are cells of their own, labelled `valid`."""
    uri, tmp = store
    env = dict(os.environ, PYTHONUNBUFFERED="1", MMLEXP_CACHE_DIR=str(tmp / "cache"))
    cmd = [
        sys.executable,
        "-m",
        "mmlexp",
        "-m",
        "dataset=sample",
        "loss=mml,ccl",
        "num_negatives=100",
        "seed=1",
        "eval.selection=valid",
        "trainer.epochs=1",
        "trainer.batch_size=8192",
        "trainer.progress=false",
        "tracking.save_checkpoint=false",
        "tracking.experiment=report-test-valid",
        f"tracking.uri={uri}",
        f"tracking.artifact_location={tmp}/artifacts",
    ]
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    df = fetch_runs(uri, [EXPERIMENT, "report-test-valid"])
    assert (df.loc[df["experiment"] == "report-test-valid", "selection"] == "valid").all()
    assert (
        main(
            [
                "--tracking-uri",
                uri,
                "--experiment",
                EXPERIMENT,
                "report-test-valid",
                "--out",
                str(tmp_path),
                "--name",
                "both",
            ]
        )
        == 0
    )
    table3 = pd.read_csv(tmp_path / "both" / "table3.csv")
    assert set(table3["selection"]) == {"paper", "valid"}
    valid = table3[(table3["selection"] == "valid") & (table3["dataset"] == "sample")]
    assert (valid["n"] == 2).sum() == 0 and (valid.dropna(subset=["mean"])["n"] == 1).all()
    md = (tmp_path / "both" / "report.md").read_text()
    assert "Selection `valid`" in md and "Selection `paper`" in md
    runs = pd.read_csv(tmp_path / "both" / "runs.csv")
    assert set(runs["selection"]) == {"paper", "valid"} and len(runs) == 10


def test_mean_ci_and_curves_units():
    one = mean_ci([0.5])
    assert one["n"] == 1 and one["mean"] == 0.5 and math.isnan(one["ci_low"]) and math.isnan(one["ci_high"])
    three = mean_ci([1.0, 2.0, 3.0])
    assert three["ci_half"] == pytest.approx(stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3))
    df = pd.DataFrame(
        {
            "run_id": list("abcdef"),
            "dataset": ["gowalla"] * 6,
            "encoder": "mf",
            "loss": ["mml", "mml", "ccl", "ccl", "mml", "ccl"],
            "num_negatives": [10, 10, 10, 10, 800, 800],
            "seed": [1, 2, 1, 2, 1, 1],
            "early_stop": "N",
            "selection": "paper",
            "epochs": 100,
            "recall@20": [0.1, 0.2, 0.1, 0.1, 0.3, 0.25],
            "ndcg@20": [0.05, 0.1, 0.05, 0.05, 0.2, 0.1],
        }
    )
    curves = negative_curves(df)
    assert len(curves) == 8 and set(curves["num_negatives"]) == {10, 800}
    row = curves[(curves["loss"] == "mml") & (curves["num_negatives"] == 10) & (curves["metric"] == "recall@20")]
    assert row["mean"].item() == pytest.approx(0.15) and row["n"].item() == 2
    fig = plot_negative_curves(df)
    assert len(fig.axes) == 2 and all(ax.get_xscale() == "log" for ax in fig.axes)
    tests = paired_tests(df, baseline="ccl")
    at10 = tests[(tests["num_negatives"] == 10) & (tests["metric"] == "recall@20")].iloc[0]
    assert at10["mean_diff"] == pytest.approx(0.05) and at10["n_pairs"] == 2
    at800 = tests[(tests["num_negatives"] == 800) & (tests["metric"] == "recall@20")].iloc[0]
    assert at800["n_pairs"] == 1 and math.isnan(at800["p_value"])  # one pair: difference only
    assert len(aggregate(df.iloc[:0])) == 0


def test_figure3_shades_the_band_a_curve_stays_in_if_it_levels_off():
    """From 100 negatives to a loss's last point: ±3% of its value at 100 (one band per loss that has both)."""
    df = pd.DataFrame(
        {
            "run_id": list("abcde"),
            "dataset": "gowalla",
            "encoder": "mf",
            "loss": ["mml", "mml", "mml", "ccl", "ccl"],
            "num_negatives": [10, 100, 400, 10, 100],  # CCL has no point beyond 100: no band
            "seed": 1,
            "early_stop": "N",
            "selection": "paper",
            "epochs": 100,
            "recall@20": [0.1, 0.2, 0.21, 0.1, 0.18],
            "ndcg@20": [0.05, 0.1, 0.1, 0.05, 0.09],
        }
    )
    recall = plot_negative_curves(df).axes[0]
    from matplotlib.collections import PolyCollection  # fill_between's; the error bars are LineCollections

    bands = [c for c in recall.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 1
    (x0, y0), (x1, y1) = bands[0].get_paths()[0].get_extents().get_points()
    assert (x0, x1) == pytest.approx((100, 400)) and (y0, y1) == pytest.approx((0.2 * 0.97, 0.2 * 1.03))


def test_the_800_negative_points_read_equal_where_the_digits_shown_are():
    """The line of the figure's 800-negative points: a relation as the values stand, ``≈`` where the four decimals
    shown agree (a ``<`` between 0.1501 and 0.1501 would read as a contradiction), nothing without all three."""
    from mmlexp.report.build import at_800

    means = {"mml": 0.150084, "ccl": 0.150098, "bsl": 0.15641}  # MML < CCL by 1.4e-5: equal to four decimals
    curves = pd.DataFrame(
        [{"dataset": "toy", "metric": "ndcg@20", "loss": k, "num_negatives": 800, "mean": v} for k, v in means.items()]
        + [
            {"dataset": "toy", "metric": "recall@20", "loss": k, "num_negatives": 800, "mean": v}
            for k, v in (("mml", 0.1869), ("ccl", 0.1852), ("bsl", 0.1855))
        ]
    )
    line = at_800(curves)
    assert "toy ndcg@20: MML 0.1501 ≈ CCL 0.1501, MML < BSL 0.1564" in line
    assert "toy recall@20: MML 0.1869 ≥ CCL 0.1852, MML ≥ BSL 0.1855" in line
    assert at_800(curves[curves["loss"] != "bsl"]) is None and at_800(curves.iloc[:0]) is None


def test_experiment_files_expand_to_the_paper_grids():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import estimate_runtime as est
    finally:
        sys.path.pop(0)

    def jobs(*overrides):
        _, grid = est.expand(list(overrides))
        return [dict(o.split("=", 1) for o in job) for job in grid]

    t2 = jobs("+experiment=table2", "seed=1,2")
    assert len(t2) == 32 and {j["trainer.patience"] for j in t2} == {"3", "null"}
    assert {j["encoder"] for j in t2} == {"mf", "simplex"} and {j["dataset"] for j in t2} == {"gowalla", "yelp2018"}
    t3 = jobs("+experiment=table3", "seed=1")
    assert {j["loss"] for j in t3} == {"bpr", "hinge", "softmax", "mse", "ccl", "bsl", "mml"} and len(t3) == 14
    f3 = jobs("+experiment=fig3", "seed=1")
    assert {int(j["num_negatives"]) for j in f3} == {10, 50, 100, 200, 400, 800} and len(f3) == 36
    quick = jobs("+experiment=quick_fig3", "seed=1,2")
    assert len(quick) == 18 and {j["dataset"] for j in quick} == {"gowalla"}
    changed = jobs("+experiment=fig3", "seed=1", 'hydra.sweeper.params.loss="mml,ccl"')
    assert {j["loss"] for j in changed} == {"mml", "ccl"}


@pytest.mark.parametrize(
    "name", ["table2", "table3", "fig3", "quick_fig3", "quick_table2", "quick_table3", "quick_tta"]
)
def test_every_job_of_the_experiment_files_is_a_valid_config(name):
    """What `python -m mmlexp -m +experiment=<name>` would run: each job composes and passes validation, with the
    paper's epochs (or the quick budget) and its own MLflow experiment."""
    from hydra import compose, initialize_config_dir

    from mmlexp.config import validate

    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import estimate_runtime as est
    finally:
        sys.path.pop(0)
    plain, grid = est.expand([f"+experiment={name}", "seed=1"])
    with initialize_config_dir(config_dir=str(REPO / "conf")):
        for job in grid:
            cfg = compose("config", overrides=plain + job)
            validate(cfg)
            if name.startswith("quick"):
                assert cfg.tracking.experiment == "reproduce-quick" and not cfg.tracking.save_checkpoint
                assert cfg.dataset.name == ("sample" if name == "quick_tta" else "gowalla")
            else:
                assert cfg.tracking.experiment == "reproduce" and cfg.trainer.epochs == 100
                assert cfg.trainer.max_steps is None
            if name in ("table3", "fig3"):
                assert cfg.trainer.patience is None
            if "loss=bsl" in job and not name.startswith("quick"):
                assert cfg.trainer.batch_size == 1024  # the dataset x loss setting still applies
            if "loss=mml" in job and "dataset=yelp2018" in job:
                assert list(cfg.loss.margins) == [0.6, 0.7, 0.8, 0.9]


def test_runtime_estimate_prints_an_estimate(capsys):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import estimate_runtime as est
    finally:
        sys.path.pop(0)
    assert est.main(["--tracking-uri", "sqlite:////nonexistent/mlflow.db", "+experiment=quick_table3", "seed=1"]) == 0
    out = capsys.readouterr().out
    assert "4 runs" in out and "ESTIMATED total" in out and "max_steps" in out


def test_time_to_accuracy_falls_back_to_epoch_times(tmp_path):
    """Runs logged before `wall_time_s` existed: seconds = cumulative epoch_time_s + eval_time_s."""
    from mmlexp.report import metric_history

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("old"))
    for epoch, (train_s, eval_s, recall) in enumerate([(10.0, 1.0, 0.05), (12.0, 2.0, 0.08)], start=1):
        for key, value in (("epoch_time_s", train_s), ("eval_time_s", eval_s), ("recall_at_20", recall)):
            client.log_metric(run.info.run_id, key, value, step=epoch)
    history = metric_history(uri, [run.info.run_id])
    assert list(history["seconds"]) == [11.0, 25.0] and list(history["recall@20"]) == [0.05, 0.08]
    assert set(history["time_source"]) == {"epoch_time_s+eval_time_s"}


def test_time_to_accuracy_tells_repeated_settings_apart():
    """Two runs of the same settings (e.g. before and after a speed-up) get distinct legend entries and styles."""
    from mmlexp.report import plot_time_to_accuracy

    runs = pd.DataFrame(
        {
            "run_id": ["aaaa1111", "bbbb2222"],
            "run_name": ["before", "after"],
            "dataset": ["gowalla"] * 2,
            "encoder": ["mf"] * 2,
            "loss": ["mml"] * 2,
            "num_negatives": [100] * 2,
            "seed": [2019] * 2,
        }
    )
    history = pd.DataFrame(
        {
            "run_id": ["aaaa1111"] * 2 + ["bbbb2222"] * 2,
            "epoch": [1, 2, 1, 2],
            "recall@20": [0.1, 0.15, 0.1, 0.16],
            "seconds": [40.0, 80.0, 20.0, 40.0],
        }
    )
    (ax,) = plot_time_to_accuracy(history, runs).axes
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["MML mf N=100 seed 2019 (before)", "MML mf N=100 seed 2019 (after)"]
    assert ax.get_lines()[0].get_linestyle() != ax.get_lines()[1].get_linestyle()


def test_the_figures_runs_are_described_in_words():
    """The focus runs (MF, no early stop, the paper's selection where present) and how the report names them: no
    raw codes such as ``early stop N`` in a figure's title."""
    from mmlexp.report.build import Options, focus_subset

    runs = pd.DataFrame(
        {
            "encoder": ["mf", "mf", "simplex", "mf"],
            "early_stop": ["N", "Y", "N", "N"],
            "selection": ["paper", "paper", "paper", "valid"],
            "run_id": ["a", "b", "c", "d"],
        }
    )
    picked, words = focus_subset(runs, Options(tracking_uri="unused"))
    assert list(picked["run_id"]) == ["a"]
    assert words == "MF, no early stop, epoch chosen on test as in the paper"
    only = runs[runs["run_id"].isin(["b", "d"])].assign(encoder="lightgcn")  # no preferred value: the most common
    picked, words = focus_subset(only.iloc[[0, 1, 1]], Options(tracking_uri="unused"))
    assert words == "LightGCN, no early stop, epoch chosen on a held-out slice"

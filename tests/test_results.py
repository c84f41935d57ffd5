"""Committed results: `python -m mmlexp.report --export-csv` on the tiny tracked sweep (conftest `store`) writes
per-epoch CSVs equal to MLflow's histories and no machine path; `--from-csv` rebuilds the same bytes without
MLflow; cells far from the paper are flagged; the README status table; the committed results/gowalla/ itself."""

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from mmlexp.devices import cpu_name
from mmlexp.report import fetch_runs, readme
from mmlexp.report.__main__ import main
from mmlexp.report.status import explanation_section, off_cells
from tests.conftest import EXPERIMENT, REPO

RESULTS = REPO / "results" / "gowalla"


@pytest.fixture(scope="module")
def exported(store, tmp_path_factory):
    uri, _ = store
    out = tmp_path_factory.mktemp("results")
    assert (
        main(["--tracking-uri", uri, "--experiment", EXPERIMENT, "--out", str(out), "--name", "tiny", "--export-csv"])
        == 0
    )
    return out / "tiny"


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_epoch_csvs_are_the_mlflow_histories(store, exported):
    uri, _ = store
    client = MlflowClient(uri)
    runs = pd.read_csv(exported / "runs.csv")
    assert (
        len(runs) == 8
        and runs["epochs_csv"]
        .str.fullmatch(
            r"epochs/sample-mf-(mml|ccl)-N(10|100)-paper-seed[12]"
            r"\.csv"
        )
        .all()
    )
    assert runs["epochs_csv"].is_unique
    for _, r in runs.iterrows():
        epochs = pd.read_csv(exported / r.epochs_csv)
        assert list(epochs["epoch"]) == [1, 2]
        assert not any(c.startswith("best") or c == "steps" for c in epochs.columns)
        for name, key in (("recall@20", "recall_at_20"), ("ndcg@20", "ndcg_at_20"), ("wall_time_s", "wall_time_s")):
            direct = {m.step: m.value for m in client.get_metric_history(r.run_id, key)}
            assert dict(zip(epochs["epoch"], epochs[name], strict=True)) == direct
        # the best epoch's metrics in runs.csv are one of the epochs
        assert epochs.loc[epochs["epoch"] == r.best_epoch, "recall@20"].item() == r["recall@20"]
        assert r["cpu"] == client.get_run(r.run_id).data.tags["cpu"] == cpu_name()  # the CPU it ran on


def test_exported_cells_equal_the_mlflow_numbers(store, exported):
    uri, _ = store
    direct = fetch_runs(uri, EXPERIMENT).set_index("run_id")
    runs = pd.read_csv(exported / "runs.csv").set_index("run_id")
    assert set(runs.index) == set(direct.index)
    for col in ("recall@20", "ndcg@20", "recall@50", "best_epoch", "seed", "num_negatives"):
        assert (runs[col] == direct.loc[runs.index, col]).all(), col
    cells = pd.read_csv(exported / "cells.csv")
    mml10 = cells[(cells["loss"] == "mml") & (cells["num_negatives"] == 10) & (cells["metric"] == "recall@20")]
    expect = direct[(direct["loss"] == "mml") & (direct["num_negatives"] == 10)]["recall@20"].mean()
    assert mml10["mean"].item() == pytest.approx(expect, rel=1e-12)


def test_no_machine_paths_in_the_committed_files(store, exported):
    _, tmp = store
    runs = pd.read_csv(exported / "runs.csv")
    assert runs["overrides"].str.contains("loss=").all()  # the settings stay
    for name, data in files(exported).items():
        if name.endswith((".md", ".csv", ".svg")):
            text = data.decode()
            assert str(tmp) not in text and "/tmp/" not in text and "sqlite:" not in text, name
    md = (exported / "report.md").read_text()
    assert "Generated from [runs.csv](runs.csv)" in md and "python -m mmlexp.report --from-csv" in md


def test_rebuild_from_csv_gives_the_same_bytes(exported, tmp_path):
    assert main(["--from-csv", str(exported / "runs.csv"), "--out", str(tmp_path), "--name", "tiny"]) == 0
    before, after = files(exported), files(tmp_path / "tiny")
    assert set(before) == set(after)
    assert "report.md" in after and "cells.csv" in after and "time_to_accuracy.svg" in after
    differ = [name for name in before if before[name] != after[name]]
    assert differ == []


def test_rebuild_in_place_keeps_epochs_and_the_explanations(exported, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(exported, folder)
    (folder / "explanations.md").write_text("# Explanations\n\n## sample-mf-mml-N10-paper\n\nEvidence: seed spread.\n")
    assert main(["--from-csv", str(folder / "runs.csv")]) == 0  # no --out: the folder of runs.csv
    assert "### sample-mf-mml-N10-paper\n\nEvidence: seed spread." in (folder / "report.md").read_text()
    assert len(list((folder / "epochs").glob("*.csv"))) == 8
    assert (folder / "explanations.md").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_bad_csv_input_is_a_clear_error(exported, tmp_path, capsys):
    out = ["--out", str(tmp_path / "out")]
    assert main(["--from-csv", str(tmp_path / "none.csv"), *out]) == 2
    assert "mmlexp.report" not in capsys.readouterr().out
    runs = pd.read_csv(exported / "runs.csv")
    runs.drop(columns=["selection", "epochs_csv"]).to_csv(tmp_path / "cols.csv", index=False)
    assert main(["--from-csv", str(tmp_path / "cols.csv"), *out]) == 2
    assert "missing columns selection, epochs_csv" in capsys.readouterr().err
    runs.to_csv(tmp_path / "runs.csv", index=False)  # per-epoch CSVs not beside it
    assert main(["--from-csv", str(tmp_path / "runs.csv"), *out]) == 2
    assert "no per-epoch CSV" in capsys.readouterr().err
    assert main(["--from-csv", str(exported / "runs.csv"), "--export-csv", *out]) == 2
    assert not any((tmp_path / "out").iterdir())  # no report, no temporary folder


def _table(rows) -> dict[str, pd.DataFrame]:
    cols = ["dataset", "encoder", "loss", "num_negatives", "early_stop", "selection", "metric", "paper", "mean", "n"]
    df = pd.DataFrame(rows, columns=cols)
    df["rel_diff_pct"] = 100 * (df["mean"] - df["paper"]) / df["paper"]
    return {"table3": df}


def test_cells_more_than_3pct_off_are_flagged(tmp_path):
    tables = _table(
        [
            ("gowalla", "mf", "bpr", 100, "N", "paper", "recall@20", 0.0708, 0.0708 * 0.969, 1),
            ("gowalla", "mf", "mml", 100, "N", "paper", "recall@20", 0.1816, 0.1816 * 0.971, 1),
            ("gowalla", "mf", "ccl", 100, "N", "paper", "ndcg@20", 0.1426, 0.1426 * 1.04, 1),
            ("gowalla", "mf", "ccl", 100, "N", "valid", "ndcg@20", 0.1426, 0.1426 * 0.5, 1),
            ("gowalla", "mf", "bsl", 100, "N", "paper", "ndcg@20", 0.1521, float("nan"), 0),
        ]
    )
    off = off_cells(tables)
    assert list(off["cell"]) == ["gowalla-mf-bpr-N100-paper", "gowalla-mf-ccl-N100-paper"]  # valid: not flagged
    (tmp_path / "explanations.md").write_text("## gowalla-mf-ccl-N100-paper\nCCL evidence.\n")
    md = "\n".join(explanation_section(tables, tmp_path))
    assert "1 NEED AN EXPLANATION**: gowalla-mf-bpr-N100-paper" in md
    assert "| gowalla-mf-bpr-N100-paper | recall@20 | 0.0686 | 0.0708 | -3.1 | 1 |" in md
    bpr, ccl = md.split("### gowalla-mf-bpr-N100-paper")[1].split("### gowalla-mf-ccl-N100-paper")
    assert "§10.2" in bpr and "NEEDS EXPLANATION" in bpr
    assert "CCL evidence." in ccl and "§10.2" not in ccl
    assert "None:" in "\n".join(explanation_section(_table([]), tmp_path / "nothing"))


def test_a_shortened_cell_needs_no_explanation_but_a_full_one_does(tmp_path):
    """A miniature (make reproduce-quick: 10 epochs where the paper trains 100) is far from the paper by design: its
    cells get the shortened-run note, not a demand; a full-budget cell as far off still needs its explanation, and a
    hand-written explanation wins over the note."""
    tables = _table(
        [
            ("gowalla", "mf", "mml", 10, "N", "paper", "recall@20", 0.1626, 0.1626 * 0.8, 1),
            ("gowalla", "mf", "ccl", 10, "N", "paper", "recall@20", 0.1443, 0.1443 * 0.8, 1),
            ("gowalla", "mf", "bsl", 10, "N", "paper", "recall@20", 0.1705, 0.1705 * 0.8, 1),
        ]
    )
    tables["table3"]["epochs"] = ["10", "100", "3 10"]
    (tmp_path / "explanations.md").write_text("## gowalla-mf-bsl-N10-paper\nBSL evidence.\n")
    md = "\n".join(explanation_section(tables, tmp_path))
    assert "**1 NEED AN EXPLANATION**: gowalla-mf-ccl-N10-paper." in md
    mml, rest = md.split("### gowalla-mf-mml-N10-paper")[1].split("### gowalla-mf-ccl-N10-paper")
    assert "Shortened run: 10 epochs where the paper trains 100" in mml
    ccl, bsl = rest.split("### gowalla-mf-bsl-N10-paper")
    assert "NEEDS EXPLANATION" in ccl and "Shortened" not in ccl
    assert "BSL evidence." in bsl and "Shortened" not in bsl
    assert "Other notes" not in md


def _fake_results(folder: Path) -> None:
    folder.mkdir(parents=True)
    rows = [
        ("mml", 100, "paper", "recall@20", 0.1770, "a" * 32),
        ("mml", 100, "paper", "ndcg@20", 0.1400, "a" * 32),
        ("bpr", 100, "paper", "recall@20", 0.0600, "b" * 32),
        ("mml", 10, "paper", "recall@20", 0.1500, "c" * 32),
        ("ccl", 100, "valid", "recall@20", 0.1700, "d" * 32),
    ]
    cells = pd.DataFrame(
        [
            {
                "dataset": "gowalla",
                "encoder": "mf",
                "loss": loss,
                "num_negatives": n,
                "early_stop": "N",
                "selection": sel,
                "metric": m,
                "n": 1,
                "mean": v,
                "ci_half": float("nan"),
                "seeds": "1",
                "run_ids": rid,
                "epochs": "100",
            }
            for loss, n, sel, m, v, rid in rows
        ]
    )
    cells.to_csv(folder / "cells.csv", index=False)
    pd.DataFrame(
        {"run_id": ["a" * 32, "b" * 32, "c" * 32, "d" * 32], "epochs_csv": [f"epochs/{x}.csv" for x in "abcd"]}
    ).to_csv(folder / "runs.csv", index=False)


def test_readme_table_from_fake_cells(tmp_path, capsys):
    results = tmp_path / "results" / "gowalla"
    _fake_results(results)
    doc = tmp_path / "README.md"
    doc.write_text(f"# x\n\n{readme.START}\nold\n{readme.END}\n\nafter\n")
    args = ["--results", str(results), "--readme", str(doc)]
    assert readme.main([*args, "--check"]) == 1
    assert readme.main(args) == 0 and readme.main([*args, "--check"]) == 0
    text = doc.read_text()
    assert text.startswith("# x\n\n") and text.endswith(f"{readme.END}\n\nafter\n") and "old" not in text
    mf_table = text.split("The seed papers' other systems")[0]  # the MF cells' table (the systems': test_readme_status)
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in mf_table.splitlines() if line.startswith("| ")}
    mml = rows["MML, N=100"]
    assert mml[1:4] == ["0.1770", "0.1816", f"{100 * (0.1770 - 0.1816) / 0.1816:+.1f}"]  # -2.5: within 3%
    assert mml[4:7] == ["0.1400", "0.1435", f"{100 * (0.1400 - 0.1435) / 0.1435:+.1f}"]
    assert mml[7:9] == ["100", "1"] and mml[9] == "[aaaaaaaa](results/gowalla/epochs/a.csv) |"
    assert rows["BPR, N=100"][3] == f"{100 * (0.0600 - 0.0708) / 0.0708:+.1f} ⚠"
    assert rows["MML, N=10"][2] == "—" and rows["CCL, N=100, selection valid"][3].endswith("-4.7")
    assert rows["BSL, N=800"][1] == "pending" and rows["BSL, N=800"][9] == "pending |"
    assert (
        len(rows) == 1 + 15
        and "4 of 15 cells have finished runs; 1 of the `paper`-selection cells more than 3%" in text
    )
    pd.read_csv(results / "cells.csv").drop(columns="run_ids").to_csv(results / "cells.csv", index=False)
    assert readme.main(args) == 2 and "missing column run_ids" in capsys.readouterr().err
    shutil.rmtree(results)
    _fake_results(results)
    doc.write_text("no markers\n")
    assert readme.main(args) == 2 and "reproduction-status:start" in capsys.readouterr().err


def test_committed_readme_table_matches_the_committed_cells():
    folders = [str(REPO / "results" / d) for d in ("gowalla", "yelp2018")]
    assert readme.main(["--results", *folders, "--readme", str(REPO / "README.md"), "--check"]) == 0


COMMITTED = sorted(p.parent for p in (REPO / "results").glob("*/runs.csv"))


@pytest.mark.parametrize("folder", COMMITTED, ids=[f.name for f in COMMITTED])
def test_committed_report_is_what_the_committed_csvs_give(tmp_path, folder):
    """Every committed results/<dataset>/ rebuilds from its own CSVs to the committed bytes."""
    assert main(["--from-csv", str(folder / "runs.csv"), "--out", str(tmp_path), "--name", folder.name]) == 0
    for name in ("report.md", "cells.csv", "runs.csv", "table3.csv", "figure3_claims.csv", "claims.csv"):
        assert (tmp_path / folder.name / name).read_bytes() == (folder / name).read_bytes(), name
    assert (tmp_path / folder.name / "paired_tests.csv").read_bytes() == (folder / "paired_tests.csv").read_bytes()


def test_committed_overview_lists_every_claim():
    from mmlexp.report import overview

    assert overview.main(["--results", str(REPO / "results"), "--check"]) == 0
    text = (REPO / "results" / "README.md").read_text()
    for dataset in overview.DATASETS:
        section = text.split(f"## {overview.LABELS[dataset]}")[1].split("\n## ")[0]
        claims = overview.paper_claims(dataset)
        assert len(claims) == 8 and all(f"| {c} | {m} |" in section for c, m in claims)
        if (REPO / "results" / dataset / "claims.csv").is_file():
            _assert_level_points(section, REPO / "results" / dataset)


def test_overview_of_a_dataset_without_runs_is_pending(tmp_path):
    from mmlexp.report import overview

    shutil.copytree(RESULTS, tmp_path / "gowalla")
    assert overview.main(["--results", str(tmp_path)]) == 0
    text = (tmp_path / "README.md").read_text()
    yelp = text.split("## Yelp2018")[1]
    assert yelp.count("| pending |") == 8 and "0 of 14 cells run yet" in yelp
    gowalla = text.split("## Gowalla")[1].split("## Yelp2018")[0]
    # MML vs CCL at 10, recall@20: the per-user difference on the seeds with both per-user files, relative to CCL
    claims = _claims(RESULTS).loc["MML beats CCL at 10 negatives (paper +13.0%)"]
    seeds = str(claims["user_seeds"]).split()
    assert seeds, "the 10-negative claim is tested per user"
    mml, ccl = (_per_user(RESULTS, loss, 10, seeds) for loss in ("mml", "ccl"))
    both = pd.concat([mml, ccl], axis=1, join="inner")
    assert f"| **HOLDS** | {100 * (both[0].mean() - both[1].mean()) / both[1].mean():+.1f}% |" in gowalla


def _claims(folder: Path, metric: str = "recall@20") -> pd.DataFrame:
    claims = pd.read_csv(folder / "claims.csv", dtype={"user_seeds": str})
    return claims[claims["metric"] == metric].set_index("claim")


def _per_user(folder: Path, loss: str, n: int, seeds: list[str], metric: str = "recall@20") -> pd.Series:
    """Per test user, ``metric`` of the MF ``loss`` run at ``n`` negatives averaged over ``seeds`` (users in all)."""
    files = [folder / "users" / f"{folder.name}-mf-{loss}-N{n}-paper-seed{s}.csv.gz" for s in seeds]
    frames = [pd.read_csv(f).set_index("user")[metric] for f in files]
    return pd.concat(frames, axis=1, join="inner").mean(axis=1)


def _assert_level_points(section: str, folder: Path) -> None:
    """Each loss's change from 100 to 800 negatives (Recall@20) stands in the overview: per test user on the seeds
    the claim was tested on, else from the runs' means over the seeds both points ran; beyond ±3% marked so where the
    combined verdict reads point estimates (a row untested), tested rows included."""
    claims = _claims(folder)
    points = claims.loc["all losses level off by 100 negatives", "evidence"] == "point estimate"
    runs = pd.read_csv(folder / "runs.csv").query("encoder == 'mf' and selection == 'paper' and early_stop == 'N'")
    seed_means = runs.groupby(["loss", "num_negatives", "seed"])["recall@20"].mean()
    for loss in ("mml", "ccl", "bsl"):  # each loss at 800 (its points between 100 and 800 stand between them)
        row = claims.loc[f"{loss.upper()} levels off from 100 to 800 negatives"]
        tested = row["evidence"] == "per-user"
        if tested:
            seeds = str(row["user_seeds"]).split()
            both = pd.concat([_per_user(folder, loss, n, seeds) for n in (100, 800)], axis=1, join="inner")
            change = 100 * (both[1].mean() - both[0].mean()) / both[0].mean()
        else:
            at = [seed_means.loc[(loss, n)] for n in (100, 800)]
            common = sorted(set(at[0].index) & set(at[1].index))
            change = 100 * (at[1].loc[common].mean() / at[0].loc[common].mean() - 1)
        digits = 2 if round(abs(change), 1) == 3 else 1  # a second decimal where one would read 3.0 either side
        beyond = points and abs(change) > 3  # out of the band, on a verdict read from point estimates
        point = f"{loss.upper()} 100→800 {change:+.{digits}f}%" + (" (beyond ±3%)" if beyond else "")
        assert re.search(re.escape(point) + r"(?!\d| \(beyond)", section), (folder.name, point)


def test_overview_names_the_tests_a_combined_level_verdict_rests_on():
    """The combined "all losses level off" row has no test of its own (it combines its per-loss, per-point rows):
    its evidence names those, never a Holm p-value it does not have."""
    from mmlexp.report import evidence, overview

    row = {"claim": evidence.LEVEL_CLAIM, "evidence": evidence.PER_USER, "n_users": 31668, "n_seeds": 1}
    row["p_holm"] = np.nan
    combined = overview._evidence(row)
    assert "nan" not in combined and "Holm" not in combined
    assert combined.startswith("per-user tests of each loss and point") and "31668 users, 1 seed(s)" in combined
    one = overview._evidence({**row, "claim": "MML ≥ CCL at 800 negatives", "p_holm": 0.0474})
    assert one == "per-user Wilcoxon, 31668 users, 1 seed(s), Holm p = 0.0474"
    assert "nan" not in (REPO / "results" / "README.md").read_text()


def test_overview_marks_the_level_points_a_point_estimate_verdict_reads():
    """Each loss's change in the combined "level off" cell is marked beyond ±3% where the combined verdict reads
    point estimates (a row untested), tested rows included; never where every row is tested."""
    from mmlexp.report import evidence, overview

    tested = pd.DataFrame(
        {
            "claim": ["MML levels off from 100 to 800 negatives", "CCL levels off from 100 to 800 negatives"],
            "metric": "recall@20",
            "rel_diff_pct": [3.3, 1.0],
            "evidence": [evidence.PER_USER, evidence.POINT],
        }
    )
    combined = pd.Series({"claim": evidence.LEVEL_CLAIM, "metric": "recall@20", "evidence": evidence.POINT})
    assert overview._per_loss(tested, combined) == "MML 100→800 +3.3% (beyond ±3%), CCL 100→800 +1.0%"
    every = combined.copy()
    every["evidence"] = evidence.PER_USER
    assert overview._per_loss(tested.assign(rel_diff_pct=[5.0, 1.0]), every) == "MML 100→800 +5.0%, CCL 100→800 +1.0%"
    assert overview._per_loss(tested, combined.replace({"recall@20": "ndcg@20"})) == "—"  # another metric's rows


def test_figure3_claims_are_marked_holds_or_not():
    from mmlexp.report.evidence import claim_tests
    from mmlexp.report.status import claim_verdicts

    means = {
        ("mml", 10): 0.150,
        ("ccl", 10): 0.140,
        ("mml", 100): 0.180,
        ("ccl", 100): 0.178,
        ("bsl", 100): 0.180,
        ("mml", 800): 0.181,
        ("ccl", 800): 0.183,
        ("bsl", 800): 0.190,
    }
    curves = pd.DataFrame(
        [
            {"dataset": "gowalla", "metric": "recall@20", "loss": loss, "num_negatives": n, "mean": v}
            for (loss, n), v in means.items()
        ]
    )
    claims = pd.DataFrame(
        [
            {
                "dataset": "gowalla",
                "metric": "recall@20",
                "num_negatives": 10,
                "loss": "mml",
                "baseline": "ccl",
                "paper_relative_gain_pct": 13.0,
            },
            {
                "dataset": "gowalla",
                "metric": "ndcg@20",
                "num_negatives": 10,
                "loss": "mml",
                "baseline": "ccl",
                "paper_relative_gain_pct": 15.1,
            },
        ]
    )  # no ndcg runs: left out
    tests = claim_tests(curves, claims)  # no runs: every verdict a point estimate
    text = "\n".join(claim_verdicts(tests))
    gain = 100 * (0.150 - 0.140) / 0.140
    assert f"MML beats CCL at 10 negatives (paper +13.0%): **HOLDS**, ours {gain:+.1f}% — no per-user evidence" in text
    assert "MML ≥ CCL at 800 negatives: **DOES NOT HOLD** (0.1810 vs 0.1830, difference -0.002000, -1.09%)" in text
    assert "MML < BSL at 800 negatives: **HOLDS** (0.1810 vs 0.1900, difference -0.009000, -4.74%)" in text
    bsl = 100 * (0.190 - 0.180) / 0.180  # +5.6%: more than 3% -> does not level off
    mml, ccl = 100 * 0.001 / 0.180, 100 * 0.005 / 0.178
    changes = f"MML 100→800 {mml:+.1f}%, CCL 100→800 {ccl:+.1f}%, BSL 100→800 {bsl:+.1f}% (beyond ±3%)"
    assert f"**DOES NOT HOLD** ({changes})" in text  # the point that fails it is named
    assert text.count("no per-user evidence: point estimate only, NOT tested (0 seeds: no runs on a common seed") == 4
    assert (tests["evidence"] == "point estimate").all() and list(tests["verdict"].iloc[-4:-1]) == ["HOLDS"] * 2 + [
        "DOES NOT HOLD"
    ]
    assert "ndcg@20" not in text and claim_verdicts(claim_tests(curves.iloc[:0], claims)) == []


def test_claim_tests_on_the_exported_per_user_files(exported):
    """The claim test on real per-user files of the tiny sweep (MML vs CCL at 10 negatives, 2 seeds): the per-user
    mean difference is the seed-level one (each file's mean is its run's metric), and the Wilcoxon p-value is
    scipy's on the files read and averaged over the seeds here."""
    from scipy import stats

    from mmlexp.report.evidence import claim_tests
    from mmlexp.report.export import read_runs
    from mmlexp.report.stats import holm, negative_curves

    runs = read_runs(exported / "runs.csv")
    assert runs["users_csv"].notna().all()  # every finished run saves its per-user file
    claims = pd.DataFrame(
        [
            {"dataset": "sample", "metric": m, "num_negatives": 10, "loss": "mml", "baseline": "ccl"}
            | {"paper_relative_gain_pct": 13.0}
            for m in ("recall@20", "ndcg@20")
        ]
    )
    tests = claim_tests(negative_curves(runs), claims, runs, exported)
    assert list(tests["evidence"]) == ["per-user"] * 2 and list(tests["user_seeds"]) == ["1 2"] * 2
    assert tests["p_holm"].to_numpy() == pytest.approx(holm(tests["p_wilcoxon"].to_numpy()))
    cell = runs[runs["num_negatives"] == 10].set_index(["loss", "seed"])
    for row in tests.itertuples():
        x, y = ([cell.loc[(loss, s), row.metric] for s in (1, 2)] for loss in ("mml", "ccl"))
        assert row.seed_p == pytest.approx(stats.ttest_rel(x, y).pvalue, rel=1e-9)
        assert row.mean_diff == pytest.approx(row.seed_mean_diff, abs=1e-9)
        files = {
            loss: pd.concat(
                [
                    pd.read_csv(exported / cell.loc[(loss, s), "users_csv"]).set_index("user")[row.metric]
                    for s in (1, 2)
                ],
                axis=1,
            ).mean(axis=1)
            for loss in ("mml", "ccl")
        }
        assert row.n_users == len(files["mml"]) > 0
        d = files["mml"] - files["ccl"]
        assert row.p_wilcoxon == pytest.approx(stats.wilcoxon(d, zero_method="pratt").pvalue, rel=1e-9)

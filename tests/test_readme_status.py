"""The README status table over several datasets: one heading and table per results folder, a folder without
results reads every cell pending."""

import shutil

import pandas as pd

from mmlexp.report import readme
from tests.conftest import REPO


def test_two_datasets_one_table_each(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(REPO / "results" / "gowalla", results / "gowalla")
    doc = tmp_path / "README.md"
    doc.write_text(f"{readme.START}\n{readme.END}\n")
    args = ["--results", str(results / "gowalla"), str(results / "yelp2018"), "--readme", str(doc)]
    assert readme.main(args) == 0 and readme.main([*args, "--check"]) == 0
    text = doc.read_text()
    gowalla, yelp = text.split("#### Yelp2018")
    assert gowalla.count("#### Gowalla") == 1
    cells = pd.read_csv(results / "gowalla" / "cells.csv").query("encoder == 'mf' and early_stop == 'N'")
    run = set(zip(cells["loss"], cells["num_negatives"], cells["selection"], strict=True))  # Gowalla's cells run
    expected = len(readme.EXPECTED)  # the paper's cells, listed whether run or not (15)
    listed = expected + len(run - set(readme.EXPECTED))  # and every other cell that has run (the curve points)
    assert f"{len(run)} of {listed} cells have finished runs" in gowalla and len(run) >= expected
    assert f"0 of {expected} cells have finished runs" in yelp
    headers = ("cell (MF)", "system (paper table)")
    yelp_rows = [line for line in yelp.splitlines() if line.startswith("| ") and not line.startswith(headers, 2)]
    systems = sum(
        len(readme.paper_numbers(name).query("dataset == 'yelp2018'")) // 2 for name, _ in readme.SYSTEM_TABLES
    )
    assert len(yelp_rows) == expected + systems and all(line.endswith("pending |") for line in yelp_rows)
    one = readme.status_table(results / "gowalla", "gowalla", tmp_path)
    assert one in gowalla  # the Gowalla tables are the ones a single folder gives
    assert readme.systems_table(results / "gowalla", "gowalla", tmp_path) in gowalla


def test_curve_points_follow_the_paper_cells_by_negatives_then_loss(tmp_path):
    """The cells beyond the paper's (Figure 3's curve points) are listed by number of negatives, then MML, CCL, BSL
    as the paper orders its losses, not in the order cells.csv holds them."""
    results = REPO / "results" / "gowalla"
    table = readme.status_table(results, "gowalla", tmp_path)
    lines = [line for line in table.splitlines() if line.startswith("| ") and "cell (MF)" not in line]
    rows = [line.split(" | ")[0][2:] for line in lines]
    extra = [row for row in rows[len(readme.EXPECTED) :] if "selection" not in row]
    cells = pd.read_csv(results / "cells.csv").query("encoder == 'mf' and early_stop == 'N'")
    expected_keys = {(loss, n) for loss, n in zip(cells["loss"], cells["num_negatives"], strict=True)}
    expected_keys -= {(loss, n) for loss, n, _ in readme.EXPECTED}
    assert len(extra) == len(expected_keys) >= 3  # the committed N=50 points at least
    rank = {"MML": 0, "CCL": 1, "BSL": 2}
    keys = [(int(row.split("N=")[1]), rank[row.split(",")[0]]) for row in extra]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


def _rows(table: str) -> dict[str, list[str]]:
    return {line.split(" | ")[0][2:]: line.split(" | ") for line in table.splitlines() if line.startswith("| ")}


def test_systems_table_gives_the_committed_runs_against_the_papers(tmp_path):
    """Every row of the MML paper's Table 2 and the SSM paper's Table 2 is listed for the dataset, run or not; a run
    row's mean is the mean of its runs' Recall@20 / NDCG@20 in runs.csv, Δ % is against the paper's number, the
    kept epochs are the runs' best epochs, and a cell more than 3% off is flagged and counted."""
    results = REPO / "results" / "gowalla"
    table = readme.systems_table(results, "gowalla", tmp_path)
    rows = _rows(table)
    papers = pd.concat([readme.paper_numbers(name) for name, _ in readme.SYSTEM_TABLES]).query("dataset == 'gowalla'")
    assert len(rows) == 1 + len(papers) // 2  # the header and one row per system (two metrics each)
    runs = pd.read_csv(results / "runs.csv", dtype={"run_id": str})
    es = runs.query("encoder == 'mf' and loss == 'ccl' and early_stop == 'Y' and selection == 'paper'")
    es = es.query("num_negatives == 100").sort_values("seed")
    assert len(es) >= 2  # the committed MF + CCL early-stopping runs, seeds 1 and 2
    row = rows["MF + CCL, early stop (MML paper Table 2)"]
    for i, metric, paper in ((1, "recall@20", 0.1632), (4, "ndcg@20", 0.1279)):
        mean = es[metric].mean()
        delta = 100 * (mean - paper) / paper
        assert row[i].startswith(f"{mean:.4f} ± ") and row[i + 1] == f"{paper:.4f}"
        assert row[i + 2] == f"{delta:+.1f}" + (" ⚠" if abs(delta) > 3 else "")
    assert row[7] == ", ".join(str(int(e)) for e in es["best_epoch"]) and row[8] == "1,2"
    assert all(rid[:8] in row[9] for rid in es["run_id"])
    pending = [name for name, r in rows.items() if r[-1] == "pending |"]
    systems = papers.drop_duplicates(["encoder", "loss", "early_stop"])
    paper_runs = runs.query("dataset == 'gowalla' and selection == 'paper'")
    unrun = [
        s for s in systems.itertuples()
        if not len(paper_runs.query(f"encoder == '{s.encoder}' and loss == '{s.loss}' and early_stop == "
                                    f"'{s.early_stop}' and num_negatives == {s.num_negatives}"))
    ]  # fmt: skip
    assert len(pending) == len(unrun) and all(f"{r.encoder} + {r.loss}".lower() in " ".join(pending).lower()
                                              for r in unrun)  # fmt: skip
    flagged = sum("⚠" in " ".join(r[1:7]) for r in rows.values())
    assert f"{len(rows) - 1 - len(pending)} of {len(rows) - 1} have finished runs; {flagged} more than 3%" in table


def test_systems_table_says_which_flagged_cells_are_not_explained(tmp_path):
    """A made-up Yelp2018 SimpleX + CCL run 10% under the paper: flagged, counted as unexplained until
    explanations.md has a section for its cell; every other system of both tables is pending."""
    folder = tmp_path / "results" / "yelp2018"
    folder.mkdir(parents=True)
    paper = readme.paper_numbers("table2").query("dataset == 'yelp2018' and encoder == 'simplex' and loss == 'ccl'")
    paper = paper.query("early_stop == 'N'").set_index("metric")["paper"]
    rows = [
        {"encoder": "simplex", "loss": "ccl", "early_stop": "N", "num_negatives": 100, "selection": "paper",
         "dataset": "yelp2018", "metric": m, "mean": 0.9 * paper[m], "ci_half": None, "seeds": "1",
         "run_ids": "e" * 32}
        for m in ("recall@20", "ndcg@20")
    ]  # fmt: skip
    pd.DataFrame(rows).to_csv(folder / "table2.csv", index=False)
    pd.DataFrame({"run_id": ["e" * 32], "epochs_csv": ["epochs/e.csv"], "best_epoch": [61]}).to_csv(
        folder / "runs.csv", index=False
    )
    table = readme.systems_table(folder, "yelp2018", tmp_path)
    row = _rows(table)["SimpleX + CCL (MML paper Table 2)"]
    assert row[1:4] == [f"{0.9 * paper['recall@20']:.4f}", f"{paper['recall@20']:.4f}", "-10.0 ⚠"]
    assert row[7:] == ["61", "1", "[eeeeeeee](results/yelp2018/epochs/e.csv) |"]
    assert "1 of 10 have finished runs; 1 more than 3%" in table and "1 of them not explained yet" in table
    assert "[explanations.md]" not in table  # no file to link to yet
    (folder / "explanations.md").write_text("# x\n\n## yelp2018-simplex-ccl-N100-paper\n\nThe reason.\n")
    table = readme.systems_table(folder, "yelp2018", tmp_path)
    assert "not explained yet" not in table and "[explanations.md](results/yelp2018/explanations.md)" in table

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
    yelp_rows = [line for line in yelp.splitlines() if line.startswith("| ") and "cell (MF)" not in line]
    assert len(yelp_rows) == expected and all(line.endswith("pending |") for line in yelp_rows)
    one = readme.status_table(results / "gowalla", "gowalla", tmp_path)
    assert one in gowalla  # the Gowalla table is the one a single folder gives


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

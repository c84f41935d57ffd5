"""``results/README.md``: every claim of the MML paper on every dataset, its verdict, its evidence, links to runs.

    python -m mmlexp.report.overview [--results results] [--check]

Reads only committed files: each ``results/<dataset>/claims.csv`` (the Figure 3 claims, tested by
``mmlexp.report.evidence``), ``systems_claims.csv`` (the SSM paper's claim and the MML paper's Table 2 early-stopping
claims, ``mmlexp.report.seed_systems``) and ``cells.csv`` (Table 3 against ``resources/paper/table3.csv``, Table 2 and
the SSM paper's Table 2 against theirs). A dataset without results lists the paper's claims as pending (the other
systems' claims as NOT RESOLVED, not run yet), so the page says what is still to run.
"""

import argparse
import sys
from pathlib import Path

import pandas as pd

from mmlexp.report import evidence, seed_systems
from mmlexp.report.evidence import NOT_RUN, OPEN
from mmlexp.report.status import THRESHOLD_PCT
from mmlexp.report.tables import paper_numbers

DATASETS = ("gowalla", "yelp2018")
LABELS = {"gowalla": "Gowalla", "yelp2018": "Yelp2018"}
CLAIMS_800 = ("MML ≥ CCL at 800 negatives", "MML < BSL at 800 negatives", evidence.LEVEL_CLAIM)
METRICS = ("recall@20", "ndcg@20")


def paper_claims(dataset: str) -> list[tuple[str, str]]:
    """(claim, metric) the paper makes for ``dataset``: the 10-negative gains of Figure 3, then its 800-negative
    prose (paper-reference §9)."""
    fig3 = paper_numbers("figure3")
    gains = [
        (f"MML beats CCL at {r.num_negatives} negatives (paper {r.relative_gain_pct:+.1f}%)", r.metric)
        for r in fig3[fig3["dataset"] == dataset].itertuples()
    ]
    return gains + [(c, m) for m in METRICS for c in CLAIMS_800]


def _links(row, folder: str) -> str:
    """Each run of the row linked to its file (a run without one named by its id)."""
    return (
        ", ".join(
            f"[{Path(f).name.split('.')[0]}]({folder}/{f})" if f else f"{r[:8]} (no file)"
            for r, f in evidence.run_files(row)
        )
        or "—"
    )


def _evidence(row) -> str:
    if row["evidence"] == NOT_RUN:
        return NOT_RUN
    seeds = f"{int(row['n_seeds'])} seed(s)"
    if row["evidence"] == evidence.POINT:
        return f"{evidence.POINT}, {seeds}, not tested"
    users = f"{int(row['n_users'])} users"
    if row["claim"] == evidence.LEVEL_CLAIM:  # combined from its per-loss, per-point rows: no test of its own
        band = f"±{evidence.LEVEL_PCT:g}%"
        return f"per-user tests of each loss and point (bootstrap 95% interval against {band}), {users}, {seeds}"
    return f"per-user Wilcoxon, {users}, {seeds}, Holm p = {row['p_holm']:.3g}"


def _per_loss(tested: pd.DataFrame, combined: pd.Series) -> str:
    """The combined 'level off' claim: each loss's own change from 100 to each larger number of negatives."""
    own = tested[(tested["metric"] == combined["metric"]) & evidence.is_level_part(tested["claim"])]
    parts = [
        evidence.level_change(c, v, combined["evidence"])
        for c, v in zip(own["claim"], own["rel_diff_pct"], strict=True)
        if pd.notna(v)
    ]
    return ", ".join(parts) or "—"


def claim_rows(results: Path, dataset: str) -> list[list[str]]:
    """One row per paper claim: claim, metric, verdict, ours, evidence, runs (pending when not yet tested)."""
    path = results / dataset / "claims.csv"
    tested = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["claim", "metric"])
    rows = []
    for claim, metric in paper_claims(dataset):
        hit = tested[(tested["claim"] == claim) & (tested["metric"] == metric)]
        if hit.empty:
            rows.append([claim, metric, "pending", "—", "no runs yet", "—"])
            continue
        r = hit.iloc[0]
        ours = f"{r['rel_diff_pct']:+.1f}%" if pd.notna(r.get("rel_diff_pct")) else _per_loss(tested, r)
        rows.append([claim, metric, f"**{r['verdict']}**", ours, _evidence(r), _links(r, dataset)])
    return rows


def table3_line(results: Path, dataset: str) -> str:
    """Table 3 (100 negatives, MF): how many of the paper's cells we have and how many lie within the threshold."""
    path = results / dataset / "cells.csv"
    paper = paper_numbers("table3")
    paper = paper[paper["dataset"] == dataset]
    if not path.is_file():
        return f"Table 3: 0 of {len(paper)} cells run yet."
    cells = pd.read_csv(path)
    cells = cells[(cells["encoder"] == "mf") & (cells["early_stop"] == "N") & (cells["selection"] == "paper")]
    merged = paper.merge(cells, on=["dataset", "loss", "num_negatives", "metric"], how="inner")
    off = merged[(100 * (merged["mean"] - merged["paper"]) / merged["paper"]).abs() > THRESHOLD_PCT]
    return (
        f"Table 3: {len(merged)} of {len(paper)} cells (loss x metric) run, {len(merged) - len(off)} within "
        f"{THRESHOLD_PCT:g}% of the paper ([report]({dataset}/report.md), [cells.csv]({dataset}/cells.csv))."
    )


def systems_rows(results: Path, dataset: str) -> list[list[str]]:
    """One row per claim of ``seed_systems.claim_specs``: claim, metric, verdict, ours, evidence, runs (NOT RESOLVED,
    not run yet, when ``systems_claims.csv`` has no row for it)."""
    path = results / dataset / seed_systems.CLAIMS_CSV
    tested = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["claim", "metric"])
    rows = []
    for spec in seed_systems.claim_specs(dataset):
        hit = tested[(tested["claim"] == spec.text) & (tested["metric"] == spec.metric)]
        if hit.empty:
            rows.append([spec.text, spec.metric, f"**{OPEN}**", "—", NOT_RUN, "—"])
            continue
        r = hit.iloc[0]
        ours = f"{r['rel_diff_pct']:+.1f}%" if pd.notna(r.get("rel_diff_pct")) else "—"
        rows.append([spec.text, spec.metric, f"**{r['verdict']}**", ours, _evidence(r), _links(r, dataset)])
    return rows


def systems_line(results: Path, dataset: str) -> str:
    """The SSM paper's Table 2 and the MML paper's Table 2: cells run and within the threshold of the paper."""
    path = results / dataset / "cells.csv"
    cells = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["selection"])
    parts = []
    for name, label in ((seed_systems.SSM_TABLE, "SSM paper Table 2"), ("table2", "MML paper Table 2")):
        paper = paper_numbers(name)
        paper = paper[paper["dataset"] == dataset]
        on = ["encoder", "loss", "early_stop", "num_negatives", "dataset", "metric"]
        if len(cells):
            merged = paper.merge(cells[cells["selection"] == "paper"], on=on, how="inner")
        else:
            merged = paper[:0].assign(mean=pd.Series(dtype=float))
        off = (100 * (merged["mean"] - merged["paper"]) / merged["paper"]).abs() > THRESHOLD_PCT
        parts.append(f"{label}: {len(merged)} of {len(paper)} cells (row x metric) run, {int((~off).sum())} within "
                     f"{THRESHOLD_PCT:g}% of the paper")  # fmt: skip
    return "; ".join(parts) + f" ([report]({dataset}/report.md))."


def overview(results: Path) -> str:
    lines = [
        "# The MML paper's claims on our runs",
        "",
        "Generated by `python -m mmlexp.report.overview` from the committed `<dataset>/claims.csv`,",
        "`systems_claims.csv` (the SSM paper's claim, the MML paper's Table 2 early-stopping claims) and `cells.csv`",
        "(`make report DATASET=...` rewrites them). How a verdict is decided — per-user Wilcoxon signed-rank tests",
        "and bootstrap intervals, Holm-corrected over each report's claims, seed-level t-tests beside — is written",
        "at the head of each report's Figure 3 verdicts; *point estimate* means the runs have no per-user file yet",
        "and the verdict compares two means only. Run links go to each run's per-epoch CSV (or per-user file).",
    ]
    header = ["claim", "metric", "verdict", "ours", "evidence", "runs"]
    for dataset in DATASETS:
        lines += ["", f"## {LABELS[dataset]}", "", table3_line(results, dataset), ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in claim_rows(results, dataset)]
        lines += ["", f"### {LABELS[dataset]}: the SSM paper and the MML paper's Table 2", ""]
        lines += [systems_line(results, dataset), ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in systems_rows(results, dataset)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmlexp.report.overview", description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=Path("results"), help="the results folder (default: results)")
    p.add_argument("--check", action="store_true", help="only compare: exit 1 when README.md is out of date")
    args = p.parse_args(argv)
    target, text = args.results / "README.md", overview(args.results)
    if args.check:
        if not target.is_file() or target.read_text() != text:
            print(f"{target}: out of date (run python -m mmlexp.report.overview)", file=sys.stderr)
            return 1
        return 0
    target.write_text(text)
    print(f"{target} written")
    return 0


if __name__ == "__main__":
    sys.exit(main())

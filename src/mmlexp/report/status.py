"""Where a reproduction stands: the cells more than 3% (relative) from the paper, each with a slot for its
explanation in report.md, and the README "Reproduction status" table generated from committed ``cells.csv``."""

import operator
import re
from pathlib import Path

import pandas as pd

from mmlexp.report.export import cell_id

THRESHOLD_PCT = 3.0
EXPLANATIONS = "explanations.md"
CAVEATS = {  # paper-reference §10.2: where the paper's Table 3 baseline numbers may come from
    loss: "paper-reference §10.2: the paper's Table 3 numbers for BPR, pairwise hinge, softmax CE and MSE may "
    "come from another setting (re-run by the author with N=100 in the MF + cosine config, or copied from "
    "the SimpleX paper); check before reading the gap as ours"
    for loss in ("bpr", "hinge", "softmax", "mse")
}
CELL_COLUMNS = ("dataset", "encoder", "loss", "num_negatives", "early_stop", "selection")
HEADING = re.compile(r"^## +(\S+)\s*$")


def off_cells(tables: dict[str, pd.DataFrame], threshold: float = THRESHOLD_PCT) -> pd.DataFrame:
    """Cells of the paper tables (selection ``paper``, with runs and a paper number) whose mean is more than
    ``threshold`` % (relative) from the paper's, one row per (cell, metric), with ``cell`` = ``cell_id``."""
    cols = [*CELL_COLUMNS, "metric", "paper", "mean", "n", "rel_diff_pct"]
    rows = pd.concat([t[[c for c in cols if c in t]] for t in tables.values()], ignore_index=True)
    rows = rows[
        (rows["selection"] == "paper")
        & rows["paper"].notna()
        & rows["mean"].notna()
        & (rows["rel_diff_pct"].abs() > threshold)
    ]
    rows = rows.drop_duplicates([*CELL_COLUMNS, "metric"]).reset_index(drop=True)
    rows.insert(0, "cell", [cell_id(r) for _, r in rows.iterrows()] if len(rows) else [])
    return rows


def read_explanations(path: Path) -> dict[str, str]:
    """``explanations.md`` -> {cell id: text}: each ``## <cell id>`` heading and the lines below it."""
    if not path.is_file():
        return {}
    out: dict[str, list[str]] = {}
    current = None
    for line in path.read_text().splitlines():
        match = HEADING.match(line)
        if match:
            current = match.group(1)
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return {k: "\n".join(v).strip() for k, v in out.items()}


def explanation_section(tables: dict[str, pd.DataFrame], folder: Path) -> list[str]:
    """report.md lines: every cell more than 3% from the paper, its caveat and its explanation (the cell's section
    of ``folder/explanations.md``, written by hand and kept when the report is rebuilt) or a marked slot."""
    off = off_cells(tables)
    notes = read_explanations(folder / EXPLANATIONS)
    md = [f"## Cells more than {THRESHOLD_PCT:g}% from the paper", ""]
    if off.empty:
        md += [
            f"None: every cell with runs and a paper number (selection `paper`) is within {THRESHOLD_PCT:g}% "
            "(relative) of the paper.",
            "",
        ]
    else:
        missing = [c for c in dict.fromkeys(off["cell"]) if not notes.get(c)]
        md += [
            f"{off['cell'].nunique()} cell(s) more than {THRESHOLD_PCT:g}% (relative) from the paper"
            + (f"; **{len(missing)} NEED AN EXPLANATION**: {', '.join(missing)}" if missing else "")
            + ". "
            f"Each gets its evidence in a `## <cell>` section of [{EXPLANATIONS}]({EXPLANATIONS}) (written by "
            "hand, copied here when the report is rebuilt).",
            "",
            "| cell | metric | ours | paper | Δ % | n |",
            "|---|---|---|---|---|---|",
        ]
        md += [
            f"| {r.cell} | {r.metric} | {r.mean:.4f} | {r.paper:.4f} | {r.rel_diff_pct:+.1f} | {r.n} |"
            for r in off.itertuples()
        ]
        md.append("")
        for cell, group in off.groupby("cell", sort=False):
            loss = group["loss"].iloc[0]
            md += [f"### {cell}", ""]
            if loss in CAVEATS:
                md += [f"Caveat: {CAVEATS[loss]}.", ""]
            md += [
                notes[cell]
                if notes.get(cell)
                else f"**NEEDS EXPLANATION**: add a `## {cell}` section with the evidence to {EXPLANATIONS}.",
                "",
            ]
    extra = [c for c in notes if c not in set(off["cell"]) and notes[c]]
    if extra:
        md += ["Other notes from " + EXPLANATIONS + " (cells within the threshold, or rows of their own):", ""]
        for cell in extra:
            md += [f"### {cell}", "", notes[cell], ""]
    return md


def _mean(curves: pd.DataFrame, dataset: str, metric: str, loss: str, n: int) -> float | None:
    hit = curves[
        (curves["dataset"] == dataset)
        & (curves["metric"] == metric)
        & (curves["loss"] == loss)
        & (curves["num_negatives"] == n)
    ]
    return float(hit["mean"].iloc[0]) if len(hit) else None


def _difference(a: float, b: float) -> str:
    """``a - b`` at six decimals and relative to ``b``: a verdict on two numbers that agree to four decimals still
    shows how close it was."""
    return f"difference {a - b:+.6f}, {100 * (a - b) / b:+.2f}%"


def claim_verdicts(curves: pd.DataFrame, claims: pd.DataFrame) -> list[str]:
    """report.md lines: each Figure 3 claim of the paper, per dataset and metric with our runs, marked HOLDS or
    DOES NOT HOLD on them (claims without the runs they need are left out)."""
    out = []
    for c in claims.itertuples():
        ours, base = (_mean(curves, c.dataset, c.metric, loss, c.num_negatives) for loss in (c.loss, c.baseline))
        if ours is not None and base is not None:
            gain = 100 * (ours - base) / base
            out.append(
                f"{c.dataset} {c.metric}, {c.num_negatives} negatives: MML beats CCL "
                f"(paper +{c.paper_relative_gain_pct:.1f}%): **{'HOLDS' if gain > 0 else 'DOES NOT HOLD'}**, "
                f"ours {gain:+.1f}%"
            )
    for (dataset, metric), _ in curves.groupby(["dataset", "metric"], sort=True) if len(curves) else []:
        mml = _mean(curves, dataset, metric, "mml", 800)
        for other, relation, holds in (("ccl", "≥", operator.ge), ("bsl", "<", operator.lt)):
            ref = _mean(curves, dataset, metric, other, 800)
            if mml is not None and ref is not None:
                out.append(
                    f"{dataset} {metric}, 800 negatives: MML {relation} {other.upper()}: "
                    f"**{'HOLDS' if holds(mml, ref) else 'DOES NOT HOLD'}** ({mml:.4f} vs {ref:.4f}, "
                    f"{_difference(mml, ref)})"
                )
        changes = {
            loss: (at800 - at100) / at100 * 100
            for loss in ("mml", "ccl", "bsl")
            if (at100 := _mean(curves, dataset, metric, loss, 100))
            and (at800 := _mean(curves, dataset, metric, loss, 800)) is not None
        }
        if changes:
            flat = all(abs(v) <= THRESHOLD_PCT for v in changes.values())
            out.append(
                f"{dataset} {metric}: all losses level off by 100 negatives (read here as: 100 → 800 "
                f"negatives changes each by at most {THRESHOLD_PCT:g}%): "
                f"**{'HOLDS' if flat else 'DOES NOT HOLD'}** ("
                + ", ".join(f"{loss.upper()} {v:+.1f}%" for loss, v in changes.items())
                + ")"
            )
    return ["The paper's Figure 3 claims on our runs:", "", *(f"* {line}" for line in out), ""] if out else []

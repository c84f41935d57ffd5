"""The tables of ``report.md``: the paper's tables and Figure 3 claims with ours beside them (``paper_numbers``,
``paper_table``, ``figure3_claims``) and their markdown (``fmt``, ``md_table``, ``paper_table_md``, ``claims_md``,
``paired_tests_md``, ``cells_md``); ``mmlexp.report.build`` assembles the report from them."""

import math
from collections.abc import Sequence
from importlib import resources

import pandas as pd

from mmlexp.report import figures
from mmlexp.report.stats import METRICS

DASH = "—"
SELECTION_NOTE = {
    "paper": "best epoch chosen on the test split, as in the paper and all its reference codebases",
    "valid": "best epoch chosen on a held-out validation split, reported on test",
}
TABLES = {  # paper table -> (its row keys, which of our cells belong to it besides the paper's rows)
    "table2": (
        ("encoder", "loss", "early_stop"),
        lambda c, paper: (c["num_negatives"] == 100) & c["loss"].isin(paper["loss"].unique()),
    ),
    "table3": (
        ("loss",),
        lambda c, paper: (c["num_negatives"] == 100) & (c["encoder"] == "mf") & (c["early_stop"] == "N"),
    ),
    # the SSM paper's Table 2 (resources/paper/ssm_table2.csv): sampled softmax, in-batch negatives, early stopping
    "ssm_table2": (
        ("encoder", "loss"),
        lambda c, paper: (
            (c["loss"] == "ssm") & c["num_negatives"].isin(paper["num_negatives"].unique()) & (c["early_stop"] == "Y")
        ),
    ),
}
TITLES = {
    "table2": "Table 2: MF / SimpleX × CCL / MML × early stop (100 negatives)",
    "table3": "Table 3: losses with MF, 100 negatives, no early stop",
    "ssm_table2": "SSM paper Table 2: LightGCN + SSM and MF + SSM",
}


def paper_numbers(name: str) -> pd.DataFrame:
    """The paper's numbers (``mmlexp/resources/paper/<name>.csv``), the only copy in the repository."""
    with resources.files("mmlexp").joinpath(f"resources/paper/{name}.csv").open() as f:
        df = pd.read_csv(f)
    if "num_negatives" in df:
        df["num_negatives"] = df["num_negatives"].astype("Int64")
    return df


def fmt(x: float, digits: int = 4, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA:
        return DASH
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def fmt_ours(row) -> str:
    if pd.isna(row.get("mean")):
        return DASH
    half = row.get("ci_half")
    ci = f" ± {row['ci_half']:.4f}" if half is not None and not pd.isna(half) else ""
    return f"{row['mean']:.4f}{ci} (n={int(row['n'])})"


def fmt_p(p: float) -> str:
    if p is None or pd.isna(p):
        return DASH
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def ordered_columns(datasets) -> list[tuple[str, str]]:
    return [(d, m) for d in figures.ordered_datasets(datasets) for m in METRICS]


def paper_table(name: str, cells: pd.DataFrame, selections: Sequence[str]) -> pd.DataFrame:
    """Long table: the paper's cells (and ours in the table's scope) with our mean / interval / n / run ids per
    selection protocol, the paper's value and the difference (ours - paper)."""
    keys, scope = TABLES[name]
    paper = paper_numbers(name)
    ours = cells[cells["metric"].isin(METRICS)]
    ours = ours[scope(ours, paper)] if len(ours) else ours
    fixed = [k for k in ("encoder", "early_stop", "num_negatives") if k not in keys and k in paper]
    frames = []
    for selection in selections:
        mine = ours[ours["selection"] == selection]
        grid = paper.copy()
        extra = mine[[*keys, *fixed, "dataset", "metric"]].drop_duplicates()
        grid = pd.concat([grid, extra], ignore_index=True).drop_duplicates([*keys, *fixed, "dataset", "metric"])
        # every dataset column for every row (a row of ours on a dataset the paper has not, and vice versa)
        rows = grid[[*keys, *fixed]].drop_duplicates()
        cols = grid[["dataset", "metric"]].drop_duplicates()
        full = rows.merge(cols, how="cross").merge(grid, how="left", on=[*keys, *fixed, "dataset", "metric"])
        full["selection"] = selection
        stats_cols = ["n", "mean", "std", "ci_low", "ci_high", "ci_half", "seeds", "epochs", "run_ids"]
        full = full.merge(
            mine[[*keys, *fixed, "dataset", "metric", *stats_cols]], how="left", on=[*keys, *fixed, "dataset", "metric"]
        )
        frames.append(full)
    out = pd.concat(frames, ignore_index=True)
    out["diff"] = out["mean"] - out["paper"]
    out["rel_diff_pct"] = 100 * out["diff"] / out["paper"]
    out["n"] = out["n"].fillna(0).astype(int)
    lead = [*keys, *fixed, "selection", "dataset", "metric", "paper"]
    return out[lead + [c for c in out.columns if c not in lead]]


def paper_table_md(name: str, table: pd.DataFrame) -> str:
    keys, _ = TABLES[name]
    parts = []
    for selection, sel in table.groupby("selection", sort=False):
        cols = ordered_columns(sel["dataset"].unique())
        header = [*(k.replace("_", " ") for k in keys)]
        for d, m in cols:
            label = f"{figures.DATASET_LABELS.get(d, d)} {figures.METRIC_LABELS.get(m, m)}"
            header += [f"{label} ours", "paper", "Δ"]
        rows = []
        row_keys = sel[list(keys)].drop_duplicates()
        for _, rk in row_keys.iterrows():
            sub = sel[(sel[list(keys)] == rk.values).all(axis=1)].set_index(["dataset", "metric"])
            row_label = [
                figures.loss_label(v) if k == "loss" else ("SimpleX" if v == "simplex" else "MF" if v == "mf" else v)
                for k, v in rk.items()
            ]
            cells = []
            for d, m in cols:
                r = sub.loc[(d, m)] if (d, m) in sub.index else pd.Series(dtype=object)
                cells += [fmt_ours(r), fmt(r.get("paper")), fmt(r.get("diff"), sign=True)]
            rows.append([*row_label, *cells])
        parts.append(
            f"Selection `{selection}` ({SELECTION_NOTE.get(selection, selection)}):\n\n" + md_table(header, rows)
        )
    return "\n\n".join(parts)


def _curve_mean(curves: pd.DataFrame, claim: pd.Series, loss: str) -> float:
    """Our mean of ``loss`` in the claim's (dataset, metric, negatives) cell of the curves; NaN if absent."""
    hit = curves[
        (curves["dataset"] == claim["dataset"])
        & (curves["metric"] == claim["metric"])
        & (curves["loss"] == loss)
        & (curves["num_negatives"] == claim["num_negatives"])
    ]
    return float(hit["mean"].iloc[0]) if len(hit) else math.nan


def figure3_claims(curves: pd.DataFrame) -> pd.DataFrame:
    """The paper's Figure 3 prose (MML's relative gain over CCL at 10 negatives) next to ours."""
    claims = paper_numbers("figure3")
    rows = []
    for _, c in claims.iterrows():
        ours, base = _curve_mean(curves, c, c["loss"]), _curve_mean(curves, c, c["baseline"])
        rows.append(
            {
                **c.to_dict(),
                "paper_relative_gain_pct": c["relative_gain_pct"],
                "ours_relative_gain_pct": 100 * (ours - base) / base if base else math.nan,
                "ours_mean": ours,
                "ours_baseline_mean": base,
            }
        )
    out = pd.DataFrame(rows).drop(columns="relative_gain_pct")
    return out


def claims_md(claims: pd.DataFrame) -> str:
    """The Figure 3 claims (``figure3_claims``), paper against ours, as a markdown table."""
    return md_table(
        ["dataset", "metric", "N", "paper gain %", "ours gain %", "ours MML", "ours CCL"],
        [
            [
                c.dataset,
                c.metric,
                c.num_negatives,
                f"{c.paper_relative_gain_pct:+.1f}",
                fmt(c.ours_relative_gain_pct, 1, sign=True),
                fmt(c.ours_mean),
                fmt(c.ours_baseline_mean),
            ]
            for c in claims.itertuples()
        ],
    )


def paired_tests_md(tests: pd.DataFrame) -> str:
    """The paired tests (``stats.paired_tests``) as a markdown table."""
    return md_table(
        [
            "dataset",
            "encoder",
            "N",
            "early stop",
            "selection",
            "loss",
            "metric",
            "pairs",
            "mean",
            "baseline",
            "mean diff",
            "rel %",
            "t",
            "p",
        ],
        [
            [
                r.dataset,
                r.encoder,
                r.num_negatives,
                r.early_stop,
                r.selection,
                figures.loss_label(r.loss),
                r.metric,
                r.n_pairs,
                fmt(r.mean),
                fmt(r.baseline_mean),
                fmt(r.mean_diff, sign=True),
                fmt(r.rel_diff_pct, 1, sign=True),
                fmt(r.t, 2),
                fmt_p(r.p_value),
            ]
            for r in tests.itertuples()
        ],
    )


def cells_md(cells: pd.DataFrame) -> str:
    """Every cell of the main metrics, with its runs (ids shortened), as a markdown table."""
    return md_table(
        ["dataset", "encoder", "loss", "N", "early stop", "selection", "metric", "ours", "epochs", "seeds", "runs"],
        [
            [
                r.dataset,
                r.encoder,
                r.loss,
                r.num_negatives,
                r.early_stop,
                r.selection,
                r.metric,
                fmt_ours(r._asdict()),
                r.epochs,
                r.seeds,
                " ".join(x[:8] for x in r.run_ids.split()),
            ]
            for r in cells.itertuples()
        ],
    )

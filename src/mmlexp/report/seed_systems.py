"""The seed papers' other systems in report.md: the SSM paper's Table 2 (Wu et al., TOIS 2024: LightGCN / MF with
sampled softmax), the MML paper's Table 2 early-stopping rows, their claims, and the long tail of these runs in the
SSM paper's Figure 1 grouping.

* ``ssm_section``: the SSM paper's Table 2 cells (``resources/paper/ssm_table2.csv``) beside ours, Δ % = 100 (ours −
  paper) / paper, ⚠ beyond ``status.THRESHOLD_PCT`` (those cells are flagged with the others, ``status.off_cells``).
* ``claim_specs`` / ``claim_rows``: "SSM is poor on MF and strong on LightGCN" (LightGCN + SSM > MF + SSM) and, per
  Table 2 row, "early stopping costs accuracy" (early stop < none, same encoder, loss and 100 negatives), per
  dataset and metric; each tested as the Figure 3 claims (``evidence.compare``: per-user Wilcoxon and bootstrap,
  seed level beside), Holm-corrected with them in one family (``evidence.judge``). A claim whose cells have no
  finished run is NOT RESOLVED, "not run yet".
* ``tail_groups`` / ``long_tail_section``: Recall@20 contribution per item-popularity group (``tail_recall@20_g*``,
  ``mmlexp.evaluation.longtail``: groups of about equal training interactions, g0 the least popular; the SSM
  paper's Figure 1 has 10). A run that logged G' groups also gives every coarser G dividing G' exactly: with the
  midpoint rule an item's group is floor(G x), x its popularity rank in interactions, and floor(G x) =
  floor(floor(G' x) / (G' / G)); so runs of 5 and of 10 groups meet in a 5-group panel.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mmlexp.report import evidence, figures, selection
from mmlexp.report.export import EPOCHS_COLUMN, cell_id
from mmlexp.report.stats import METRICS
from mmlexp.report.status import THRESHOLD_PCT, pair_line
from mmlexp.report.tables import DASH, TITLES, md_table, paper_numbers

SSM_TABLE = "ssm_table2"
CLAIMS_CSV = "systems_claims.csv"
TAIL_STEM = "long_tail_deciles"
TABLE2_NEGATIVES = 100
ES_ROWS = (("mf", "ccl"), ("mf", "mml"), ("simplex", "ccl"), ("simplex", "mml"))  # the MML paper's Table 2 rows
ENCODERS = ("lightgcn", "mf", "simplex")
SYSTEM_KEYS = ("dataset", "encoder", "loss", "early_stop")
COLUMNS = (*evidence.COLUMNS, "paper_a", "paper_b", "paper_rel_pct", "missing")  # systems_claims.csv
PATIENCE = 3  # the author's notebooks: early stop after 3 evaluations without a better Recall@20
REPLAY_CSV = "early_stop_replays.csv"
REPLAY_COLUMNS = ("dataset", "encoder", "loss", "seed", "run_id", "monitor", "patience", "stop_epoch", "kept_epoch",
                  "full_epoch", "metric", "replayed", "full", "diff_pct")  # fmt: skip
TAIL_COLUMNS = (*SYSTEM_KEYS, "system", "groups", "group", "mean", "n", "native_groups", "seeds", "run_ids")

Cell = tuple[str, str, int, str]  # (encoder, loss, num_negatives, early_stop); selection is always "paper"


@dataclass(frozen=True)
class SystemClaim:
    """Cell ``a`` against cell ``b`` on ``dataset``/``metric``; ``expect`` as ``evidence.Claim``'s; the paper's
    numbers of both (NaN where it has none)."""

    text: str
    dataset: str
    metric: str
    a: Cell
    b: Cell
    expect: str
    paper_a: float
    paper_b: float


def _paper(paper: pd.DataFrame, cell: Cell, dataset: str, metric: str) -> float:
    encoder, loss, n, early = cell
    hit = paper[
        (paper["encoder"] == encoder)
        & (paper["loss"] == loss)
        & (paper["num_negatives"] == n)
        & (paper["early_stop"] == early)
        & (paper["dataset"] == dataset)
        & (paper["metric"] == metric)
    ]
    return float(hit["paper"].iloc[0]) if len(hit) else math.nan


def _spec(text: str, dataset: str, metric: str, a: Cell, b: Cell, expect: str, paper: pd.DataFrame) -> SystemClaim:
    pa, pb = _paper(paper, a, dataset, metric), _paper(paper, b, dataset, metric)
    gap = 100 * (pa - pb) / pb
    return SystemClaim(f"{text} (paper {gap:+.1f}%)" if math.isfinite(gap) else text, dataset, metric, a, b, expect,
                       pa, pb)  # fmt: skip


def claim_specs(dataset: str) -> list[SystemClaim]:
    """The claims on ``dataset``, per claim both metrics: LightGCN + SSM beats MF + SSM (the SSM paper: "SSM is poor
    on MF and strong on LightGCN"), then early stopping costs accuracy in each Table 2 row (MML paper)."""
    ssm, table2 = paper_numbers(SSM_TABLE), paper_numbers("table2")
    n_ssm = int(ssm["num_negatives"].iloc[0])
    out = [
        _spec("LightGCN + SSM beats MF + SSM", dataset, metric, ("lightgcn", "ssm", n_ssm, "Y"),
              ("mf", "ssm", n_ssm, "Y"), ">", ssm)
        for metric in METRICS
    ]  # fmt: skip
    for encoder, loss in ES_ROWS:
        a, b = (encoder, loss, TABLE2_NEGATIVES, "Y"), (encoder, loss, TABLE2_NEGATIVES, "N")
        text = f"early stopping costs {figures.system_label(encoder, loss)} accuracy"
        out += [_spec(text, dataset, metric, a, b, "<", table2) for metric in METRICS]
    return out


def cell_name(dataset: str, cell: Cell) -> str:
    """``export.cell_id`` of a cell: ``gowalla-lightgcn-ssm-N2047-paper-es``."""
    encoder, loss, n, early = cell
    return cell_id({"dataset": dataset, "encoder": encoder, "loss": loss, "num_negatives": n, "selection": "paper",
                    "early_stop": early})  # fmt: skip


def cell_runs(runs: pd.DataFrame, dataset: str, cell: Cell) -> pd.DataFrame:
    """The runs of one cell (selection ``paper``, with a seed)."""
    encoder, loss, n, early = cell
    return runs[
        (runs["dataset"] == dataset)
        & (runs["encoder"] == encoder)
        & (runs["loss"] == loss)
        & (runs["num_negatives"] == n)
        & (runs["early_stop"] == early)
        & (runs["selection"] == "paper")
        & runs["seed"].notna()
    ]


def _seed_mean(cell: pd.DataFrame, metric: str) -> float:
    """A cell's point estimate: the mean over its seeds (a seed's several runs averaged first)."""
    return float(cell.groupby("seed")[metric].mean().mean())


def claim_row(spec: SystemClaim, runs: pd.DataFrame, read) -> dict:
    """One row of ``systems_claims.csv`` before Holm: ``evidence.compare`` of the two cells (point estimates: the
    mean over seeds of each), or "not run yet" naming the cells without a finished run."""
    a_runs, b_runs = cell_runs(runs, spec.dataset, spec.a), cell_runs(runs, spec.dataset, spec.b)
    paper_gap = 100 * (spec.paper_a - spec.paper_b) / spec.paper_b
    names = (cell_name(spec.dataset, spec.a), cell_name(spec.dataset, spec.b))
    row = {
        "claim": spec.text,
        "dataset": spec.dataset,
        "metric": spec.metric,
        "a": names[0],
        "b": names[1],
        "expect": spec.expect,
        "paper_a": spec.paper_a,
        "paper_b": spec.paper_b,
        "paper_rel_pct": paper_gap,
    }
    missing = [name for name, cell in zip(names, (a_runs, b_runs), strict=True) if cell.empty]
    if missing:
        on = pd.concat([a_runs, b_runs])
        return {**row, "n_users": 0, "n_seeds": 0, "evidence": evidence.NOT_RUN, "missing": " ".join(missing),
                "runs": " ".join(on["run_id"]), "mean_diff": math.nan}  # fmt: skip
    means = (_seed_mean(a_runs, spec.metric), _seed_mean(b_runs, spec.metric))
    return {**row, **evidence.compare(a_runs, b_runs, spec.metric, means, read, names), "missing": ""}


def claim_rows(runs: pd.DataFrame, read) -> pd.DataFrame:
    """Every claim on every dataset of ``runs`` (``claim_specs``), before Holm and the verdicts."""
    specs = [s for d in figures.ordered_datasets(runs["dataset"]) for s in claim_specs(d)]
    return pd.DataFrame([claim_row(s, runs, read) for s in specs], columns=list(COLUMNS))


def _pct(ours: float, paper: float) -> str:
    if not (math.isfinite(ours) and math.isfinite(paper)):
        return DASH
    gap = 100 * (ours - paper) / paper
    return f"{gap:+.1f}" + (" ⚠" if abs(gap) > THRESHOLD_PCT else "")


def _links(run_ids: str, runs: pd.DataFrame) -> str:
    where = dict(zip(runs["run_id"], runs[EPOCHS_COLUMN], strict=True)) if EPOCHS_COLUMN in runs else {}
    return " ".join(f"[{r[:8]}]({where[r]})" if isinstance(where.get(r), str) else r[:8] for r in run_ids.split())


def ssm_rows(table: pd.DataFrame, runs: pd.DataFrame) -> list[list[str]]:
    """One markdown row per (system, dataset) of the SSM table (``tables.paper_table("ssm_table2", ...)``)."""
    rows = []
    best = runs.set_index("run_id")["best_epoch"] if len(runs) else pd.Series(dtype=object)
    for encoder in [e for e in ENCODERS if e in set(table["encoder"])]:
        for dataset in figures.ordered_datasets(table["dataset"]):
            sub = table[(table["encoder"] == encoder) & (table["dataset"] == dataset)].set_index("metric")
            row = [figures.system_label(encoder, "ssm"), figures.DATASET_LABELS.get(dataset, dataset)]
            ids = ""
            for metric in METRICS:
                r = sub.loc[metric] if metric in sub.index else pd.Series({"mean": math.nan, "paper": math.nan})
                ours = "pending" if pd.isna(r["mean"]) else f"{r['mean']:.4f}" + (
                    f" ± {r['ci_half']:.4f}" if pd.notna(r.get("ci_half")) else "")  # fmt: skip
                row += [ours, DASH if pd.isna(r["paper"]) else f"{r['paper']:.4f}", _pct(r["mean"], r["paper"])]
                ids = ids or (r.get("run_ids") if isinstance(r.get("run_ids"), str) else "")
            epochs = " ".join(str(best.get(i)) for i in ids.split()) if ids else DASH
            seeds = str(sub["seeds"].dropna().iloc[0]).replace(" ", ",") if sub["seeds"].notna().any() else DASH
            rows.append([*row, epochs, seeds, _links(ids, runs) if ids else "pending"])
    return rows


def ssm_section(table: pd.DataFrame, runs: pd.DataFrame, out: Path) -> list[str]:
    """report.md lines: the SSM paper's Table 2 beside ours (written to ``ssm_table2.csv``)."""
    table.to_csv(out / f"{SSM_TABLE}.csv", index=False)
    filled = int((table["n"] > 0).sum())
    header = ["system", "dataset"]
    for metric in METRICS:
        header += [f"{figures.METRIC_LABELS[metric]} ours", "paper", "Δ %"]
    return [
        f"## {TITLES[SSM_TABLE]}",
        "",
        "The SSM paper's (Wu et al., TOIS 2024) Table 2 cells with sampled softmax, beside ours: in-batch "
        "negatives (N = B − 1 = 2047), τ 0.12 (Gowalla) / 0.14 (Yelp2018), 1-layer LightGCN or MF, early stopping "
        "after 15 evaluations without a better Recall@20, at most 1000 epochs (`+experiment=ssm_paper`; "
        "paper-reference §6). Δ % = 100 (ours − paper) / paper; ⚠ beyond "
        f"{THRESHOLD_PCT:g}% (explained in the next section). Best epoch: the epoch each run kept. "
        f"[{SSM_TABLE}.csv]({SSM_TABLE}.csv) · {filled} of {len(table)} cells have runs.",
        "",
        md_table([*header, "best epoch", "seeds", "runs (per-epoch CSV)"], ssm_rows(table, runs)),
        "",
    ]


def _not_run_line(row) -> str:
    return (
        f"{row.dataset} {row.metric}: {row.claim}: **{row.verdict}** — {evidence.NOT_RUN} (no finished run of "
        f"{', '.join(str(row.missing).split())})"
    )


def claims_section(tests: pd.DataFrame, method: list[str]) -> list[str]:
    """report.md lines: the verdicts of ``systems_claims.csv`` (``method``: how a verdict is decided, given when the
    Figure 3 section above did not print it)."""
    lines = [_not_run_line(r) if r.evidence == evidence.NOT_RUN else pair_line(r) for r in tests.itertuples()]
    return [
        "## Claims of the SSM paper and of the MML paper's Table 2",
        "",
        "The SSM paper: sampled softmax is poor on MF and strong on LightGCN (its Table 2), read as LightGCN + SSM > "
        "MF + SSM. The MML paper's Table 2: in each row (MF / SimpleX × CCL / MML, 100 negatives) early stopping "
        "(patience 3) gives less than training the full 100 epochs, read as early stop < none. Each is tested as "
        "the Figure 3 claims, paired by user on the test users both cells scored, and its p-value is in the same "
        f"Holm family ([{CLAIMS_CSV}]({CLAIMS_CSV}) has every test, its numbers and its runs); a claim whose cells "
        "have no finished run yet is NOT RESOLVED.",
        "",
        *method,
        *(f"* {line}" for line in lines),
        "",
    ]


def early_stop_replays(runs: pd.DataFrame, history: pd.DataFrame, patience: int = PATIENCE) -> pd.DataFrame:
    """Early stopping replayed on each full run of a Table 2 row (100 negatives, no early stop, selection
    ``paper``) with a per-epoch test curve: the epoch after which ``patience`` evaluations without a better value
    of the run's monitor (``selection.run_monitor``: Recall@20 unless it set another) stop it
    (``selection.stop_epoch``, the trainer's rule), the epoch it then keeps (the first best of the monitor up to
    there) and each metric there, beside the run's own ``best_epoch`` (``REPLAY_COLUMNS``). Both numbers come from
    the same weights' trajectory, so their difference is early stopping's alone."""
    rows = []
    for encoder, loss in ES_ROWS:
        for dataset in dict.fromkeys(runs["dataset"]):
            full = cell_runs(runs, dataset, (encoder, loss, TABLE2_NEGATIVES, "N"))
            for run in full.itertuples():
                curve = history[history["run_id"] == run.run_id].sort_values("epoch").set_index("epoch")
                monitor = selection.run_monitor(run)
                if curve.empty or pd.isna(run.best_epoch) or run.best_epoch not in curve.index or monitor not in curve:
                    continue
                stop = selection.stop_epoch(curve[monitor], patience) or int(curve.index.max())
                kept = int(curve.loc[:stop, monitor].idxmax())
                for metric in METRICS:
                    replayed, ours = float(curve.at[kept, metric]), float(curve.at[run.best_epoch, metric])
                    rows.append({"dataset": dataset, "encoder": encoder, "loss": loss, "seed": int(run.seed),
                                 "run_id": run.run_id, "monitor": monitor, "patience": patience, "stop_epoch": stop,
                                 "kept_epoch": kept, "full_epoch": int(run.best_epoch), "metric": metric,
                                 "replayed": replayed, "full": ours,
                                 "diff_pct": 100 * (replayed - ours) / ours})  # fmt: skip
    return pd.DataFrame(rows, columns=list(REPLAY_COLUMNS))


def replay_section(runs: pd.DataFrame, history: pd.DataFrame, out: Path) -> list[str]:
    """report.md lines: ``early_stop_replays`` (written to ``REPLAY_CSV``), a line per full run."""
    replays = early_stop_replays(runs, history)
    replays.to_csv(out / REPLAY_CSV, index=False)
    if replays.empty:
        return []
    lines = []
    for (dataset, encoder, loss, seed, run_id), group in replays.groupby(
        ["dataset", "encoder", "loss", "seed", "run_id"], sort=False
    ):
        r = group.iloc[0]
        on = "" if r.monitor == selection.MONITOR else f" (on {figures.METRIC_LABELS.get(r.monitor, r.monitor)})"
        gaps = ", ".join(
            f"{figures.METRIC_LABELS.get(g.metric, g.metric)} {g.replayed:.4f} against {g.full:.4f} "
            f"({g.diff_pct:+.1f}%)"
            for g in group.itertuples()
        )
        lines.append(
            f"* {dataset} {figures.system_label(encoder, loss)}, seed {seed} ({_links(run_id, runs)}): stops after "
            f"epoch {r.stop_epoch}{on} and keeps epoch {r.kept_epoch}, where the full run kept epoch {r.full_epoch}: "
            f"{gaps}."
        )
    return [
        f"Early stopping replayed on each full run's test curve (patience {PATIENCE} on the metric the run "
        "monitored, Recall@20 unless the line names another: the trainer's rule): the same trajectory stopped early, "
        "so the difference is early stopping's alone, with no seed or CPU between the two numbers. A run trained "
        "with early stopping follows a trajectory of its own (another seed, or the same seed on another CPU "
        f"capability) and can stop at a very different epoch on a curve this flat. [{REPLAY_CSV}]({REPLAY_CSV}):",
        "",
        *lines,
        "",
    ]


def scoped_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of these systems: the SSM paper's cells and the MML paper's Table 2 cells (selection ``paper``)."""
    ssm = paper_numbers(SSM_TABLE)
    is_ssm = (runs["loss"] == "ssm") & runs["num_negatives"].isin(ssm["num_negatives"]) & (runs["early_stop"] == "Y")
    is_t2 = (
        runs["encoder"].isin([e for e, _ in ES_ROWS])
        & runs["loss"].isin([loss for _, loss in ES_ROWS])
        & (runs["num_negatives"] == TABLE2_NEGATIVES)
    )
    return runs[(is_ssm | is_t2).fillna(False) & (runs["selection"] == "paper")]


def _system_order(key: tuple) -> tuple:
    dataset, encoder, loss, early = key
    enc = ENCODERS.index(encoder) if encoder in ENCODERS else len(ENCODERS)
    return (figures.ordered_datasets([dataset]), enc, figures.loss_rank(loss), early, encoder, loss)


def tail_groups(runs: pd.DataFrame, k: int = 20) -> pd.DataFrame:
    """Per system (dataset, encoder, loss, early stop) and panel G: the mean over its runs of each group's Recall@k
    contribution (``tail_recall@k_g*``), a run of G' groups (G' a multiple of G) summed over G'/G adjacent groups."""
    runs = scoped_runs(runs)
    cols = figures.tail_columns(runs, k)
    if runs.empty or not cols:
        return pd.DataFrame(columns=list(TAIL_COLUMNS))
    values = runs[cols].to_numpy(float)
    native = (~np.isnan(values)).sum(axis=1)
    rows = []
    for panel in sorted({int(n) for n in native if n}, reverse=True):
        keys = sorted({tuple(r) for r in runs[list(SYSTEM_KEYS)].itertuples(index=False)}, key=_system_order)
        for key in keys:
            same = (runs[list(SYSTEM_KEYS)] == pd.Series(key, index=list(SYSTEM_KEYS))).all(axis=1).to_numpy()
            pick = same & (native > 0) & (native % panel == 0)
            if not pick.any():
                continue
            merged = [
                v[:n].reshape(panel, n // panel).sum(axis=1) for v, n in zip(values[pick], native[pick], strict=True)
            ]
            mean = np.mean(merged, axis=0)
            chosen = runs[pick]
            common = {
                **dict(zip(SYSTEM_KEYS, key, strict=True)),
                "system": figures.system_label(key[1], key[2], key[3]),
                "groups": panel,
                "n": len(merged),
                "native_groups": " ".join(str(n) for n in sorted(set(native[pick].tolist()))),
                "seeds": " ".join(str(s) for s in sorted(chosen["seed"].dropna().astype(int))),
                "run_ids": " ".join(chosen["run_id"]),
            }
            rows += [{**common, "group": g, "mean": float(mean[g])} for g in range(panel)]
    return pd.DataFrame(rows, columns=list(TAIL_COLUMNS))


def plot_tail_groups(tail: pd.DataFrame, k: int = 20) -> Figure:
    """One panel per dataset (rows) and grouping (columns, finest first), one line per system (dashed: early
    stop): the Recall@k contribution of each popularity group."""
    datasets = figures.ordered_datasets(tail["dataset"])
    panels = sorted(tail["groups"].unique(), reverse=True)
    labels = list(dict.fromkeys(tail["system"]))
    fig = Figure(figsize=(5.2 * len(panels), 3.6 * len(datasets)), layout="constrained")
    axes = fig.subplots(len(datasets), len(panels), squeeze=False)
    for r, dataset in enumerate(datasets):
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            sub = tail[(tail["dataset"] == dataset) & (tail["groups"] == panel)]
            for label, line in sub.groupby("system", sort=False):
                i = labels.index(label)
                dashed = line["early_stop"].iloc[0] == "Y"
                style = {"color": f"C{i % 10}", "marker": "osD^vP*Xh<"[i % 10], "linestyle": "--" if dashed else "-"}
                ax.plot(line["group"], line["mean"], label=label, linewidth=1.3, markersize=4, **style)
            ax.set_xticks(range(int(panel)))
            ax.set_xticklabels([f"g{g}" for g in range(int(panel))])
            ax.set_xlabel(f"{panel} groups of equal training interactions (g0 = least popular)")
            ax.set_ylabel(f"Recall@{k} contribution")
            ax.set_title(f"{figures.DATASET_LABELS.get(dataset, dataset)} — {panel} popularity groups")
            ax.grid(True, alpha=0.3)
            if len(sub):
                ax.legend(fontsize=7)
    return fig


def _tail_tables(tail: pd.DataFrame) -> list[str]:
    """One markdown table per (dataset, grouping): systems x groups, and their sum (= the runs' Recall@20)."""
    md = []
    for dataset in figures.ordered_datasets(tail["dataset"]):
        for panel in sorted(tail["groups"].unique(), reverse=True):
            sub = tail[(tail["dataset"] == dataset) & (tail["groups"] == panel)]
            if sub.empty:
                continue
            rows = [
                [label, *(f"{v:.4f}" for v in line["mean"]), f"{line['mean'].sum():.4f}", str(line["n"].iloc[0])]
                for label, line in sub.groupby("system", sort=False)
            ]
            header = ["system", *(f"g{g}" for g in range(int(panel))), "Σ (Recall@20)", "runs"]
            md += [f"{figures.DATASET_LABELS.get(dataset, dataset)}, {panel} groups:", "", md_table(header, rows), ""]
    return md


def long_tail_section(runs: pd.DataFrame, out: Path) -> list[str]:
    """report.md lines: the long tail of these systems in the SSM paper's grouping (``long_tail_deciles.*``)."""
    tail = tail_groups(runs)
    md = ["## Long tail of these systems: the SSM paper's Figure 1 grouping", ""]
    if tail.empty:
        return md + [
            "No run of these systems (the SSM paper's cells, the MML paper's Table 2 cells) has long-tail metrics "
            "(`best/tail_recall_at_20_g*`) yet.",
            "",
        ]
    tail.to_csv(out / f"{TAIL_STEM}.csv", index=False)
    figures.save(plot_tail_groups(tail), out / TAIL_STEM)
    return md + [
        "Each run's Recall@20 split by item popularity: items sorted by their training interactions and cut into "
        "groups holding about equal shares of them (g0 = least popular; the SSM paper's Figure 1 uses 10, "
        "`+experiment=ssm_paper` logs 10, other runs the default 5); a group's value is the Recall@20 of the test "
        "items in it (over every test item of the user), so a run's groups sum to its Recall@20. A run of 10 "
        "groups is also drawn in the 5-group panel with adjacent groups summed: exact, since an item's group out of "
        "5 is its group out of 10 halved (floor(5x) = floor(floor(10x) / 2)). Mean over a system's seeds; dashed: "
        f"early stop. Data: [{TAIL_STEM}.csv]({TAIL_STEM}.csv).",
        "",
        f"![Long tail, SSM paper grouping]({TAIL_STEM}.png)",
        "",
        *_tail_tables(tail),
    ]

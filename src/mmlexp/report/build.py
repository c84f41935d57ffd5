"""Assemble ``reports/<name>/``: paper tables side by side with ours, Figure 3, paired tests, time to accuracy,
the selection protocol (``mmlexp.report.selection``), long tail, run ids, and ``report.md`` linking them.
The paper tables, claims and markdown helpers are in ``mmlexp.report.tables`` (``paper_numbers`` and
``paper_table`` re-exported here)."""

import datetime as dt
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mmlexp.report import evidence, export, figures, seed_systems, selection, status
from mmlexp.report.runs import CELL_KEYS, ReportError, drop_duplicates, fetch_runs, metric_history
from mmlexp.report.stats import METRICS, aggregate, negative_curves, paired_tests
from mmlexp.report.tables import (
    SELECTION_NOTE,
    TITLES,
    cells_md,
    claims_md,
    figure3_claims,
    fmt_ours,
    md_table,
    paired_tests_md,
    paper_numbers,
    paper_table,
    paper_table_md,
)

__all__ = ["Options", "build_report", "paper_numbers", "paper_table"]


@dataclass
class Options:
    tracking_uri: str
    experiments: list[str] | None = None
    name: str | None = None
    out: str = "reports"
    filter_string: str = ""
    datasets: list[str] | None = None
    encoders: list[str] | None = None
    losses: list[str] | None = None
    selections: list[str] | None = None
    sweep_ids: list[str] | None = None
    baseline_loss: str = "ccl"
    focus_negatives: int | None = None
    tta_runs: list[str] | None = None
    keep_duplicates: bool = False
    confidence: float = 0.95
    notes: list[str] = field(default_factory=list)
    runs_csv: str | None = None  # read the runs from this runs.csv (and its epochs/) instead of MLflow
    export_csv: bool = False  # write runs.csv + epochs/ from MLflow, then the report from them (committable)


def select(df: pd.DataFrame, opts: Options) -> pd.DataFrame:
    for col, wanted in (
        ("dataset", opts.datasets),
        ("encoder", opts.encoders),
        ("loss", opts.losses),
        ("selection", opts.selections),
    ):
        if wanted:
            df = df[df[col].isin(wanted)]
    if opts.sweep_ids:
        df = df[df["sweep_id"].isin(opts.sweep_ids) | df["parent_run_id"].isin(opts.sweep_ids)]
    return df


FOCUS_WORDS = {  # how the report names the focus runs' encoder, early stopping and selection
    "encoder": figures.ENCODER_LABELS,
    "early_stop": {"Y": "early stop", "N": "no early stop"},
    "selection": {"paper": "epoch chosen on test as in the paper", "valid": "epoch chosen on a held-out slice"},
}


def focus_words(col: str, value: str) -> str:
    """``FOCUS_WORDS``' name of ``col`` = ``value`` (``mf`` -> ``MF``, early_stop ``N`` -> ``no early stop``); a value
    it does not list: the encoder's own name, else ``<col> <value>``."""
    return FOCUS_WORDS[col].get(value, value if col == "encoder" else f"{col.replace('_', ' ')} {value}")


def focus_subset(df: pd.DataFrame, opts: Options) -> tuple[pd.DataFrame, str]:
    """The runs behind the figures: one encoder (mf if present), no early stop if present, one selection
    (paper if present); and their description (``MF, no early stop, epoch chosen on test as in the paper``)."""
    desc = []
    for col, prefer in (("encoder", "mf"), ("early_stop", "N"), ("selection", "paper")):
        values = df[col].dropna().unique()
        if len(values) == 0:
            continue
        pick = prefer if prefer in values else df[col].value_counts().index[0]
        df = df[df[col] == pick]
        desc.append(focus_words(col, str(pick)))
    return df, ", ".join(desc)


def focus_negatives(df: pd.DataFrame, opts: Options) -> int | None:
    values = df["num_negatives"].dropna()
    if opts.focus_negatives is not None:
        return opts.focus_negatives
    if values.empty:
        return None
    return 100 if (values == 100).any() else int(values.value_counts().index[0])


def build_report(opts: Options) -> Path:
    """Fetch, compute and write ``<out>/<name>/``; everything is written to a temporary folder first, so a
    failure leaves nothing behind (and an earlier report of that name untouched). With ``runs_csv`` the runs come
    from a committed runs.csv; with ``export_csv`` they are exported to CSV first and the report is built from
    those CSVs, so both give the same bytes (no timestamp, no store path)."""
    runs = (
        export.read_runs(opts.runs_csv)
        if opts.runs_csv
        else fetch_runs(opts.tracking_uri, opts.experiments, opts.filter_string)
    )
    runs = select(runs, opts)
    narrowed = any((opts.datasets, opts.encoders, opts.losses, opts.selections, opts.sweep_ids))
    if runs.empty:
        raise ReportError(
            "no FINISHED runs match (experiments "
            f"{', '.join(opts.experiments) if opts.experiments else 'all'}"
            f"{', filter ' + repr(opts.filter_string) if opts.filter_string else ''}"
            f"{', and the --dataset/--encoder/--loss/--selection/--sweep options' if narrowed else ''})"
        )
    notes = list(opts.notes)
    if not opts.keep_duplicates:
        runs, dropped = drop_duplicates(runs)
        if len(dropped):
            notes.append(
                f"{len(dropped)} older run(s) repeating a (cell, seed, epochs) were left out (latest kept; "
                f"--keep-duplicates keeps all): {' '.join(dropped['run_id'])}"
            )
    name = opts.name or ("-".join(opts.experiments) if opts.experiments else "all")
    final = Path(opts.out) / name
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=final.parent))
    try:
        if opts.export_csv or opts.runs_csv:
            source = Path(opts.runs_csv).parent if opts.runs_csv else final
            runs = select(export.stage(runs, opts.tracking_uri if opts.export_csv else None, source, tmp), opts)
            for note in notes[len(opts.notes) :]:  # not in report.md: a rebuild from the CSVs could not know them
                print(f"mmlexp.report: note: {note}", file=sys.stderr)
            notes = list(opts.notes)
        _write(runs, opts, tmp, name, notes)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _write(runs: pd.DataFrame, opts: Options, out: Path, name: str, notes: list[str]) -> None:
    """report.md and every CSV and figure beside it, section by section."""
    metric_cols = [c for c in runs.columns if "@" in c and runs[c].notna().any()]
    cells = aggregate(runs, CELL_KEYS, metric_cols, opts.confidence)
    selections = [s for s in ("paper", "valid") if s in set(runs["selection"])] + sorted(
        set(runs["selection"]) - {"paper", "valid"}
    )
    committed = export.EPOCHS_COLUMN in runs
    md = _header(runs, opts, name, cells, selections, committed)
    md += _paper_tables(cells, selections, runs, out)
    fruns, fdesc = focus_subset(runs, opts)
    curves, claims = _figure3_data(fruns, fdesc, opts, out)
    # every claim test of the report is one Holm family: Figure 3's (on the focus runs) and the other systems'
    read = evidence.cached_reader(out)
    figure3_rows, systems_rows = evidence.claim_rows(curves, claims, fruns, read), seed_systems.claim_rows(runs, read)
    verdicts = evidence.judge(figure3_rows, systems_rows["p_wilcoxon"])
    systems = evidence.judge(systems_rows, figure3_rows["p_wilcoxon"])
    verdicts.to_csv(out / "claims.csv", index=False)
    systems.to_csv(out / seed_systems.CLAIMS_CSV, index=False)
    figure3_md = status.claim_verdicts(verdicts, pd.concat([verdicts, systems], ignore_index=True))
    md += _figure3(curves, claims, fdesc, opts, figure3_md)
    method = [] if figure3_md else status.method_lines(pd.concat([verdicts, systems], ignore_index=True))
    # every run's per-epoch Recall@20 / NDCG@20, read once (committed epoch CSVs, else MLflow): the early-stopping
    # replays, the time-to-accuracy runs' curves, all of them in the selection section
    ids = list(runs["run_id"])
    every = export.history_from_csv(runs, out, ids) if committed else metric_history(opts.tracking_uri, ids)
    md += seed_systems.claims_section(systems, method)
    md += seed_systems.replay_section(runs, every, out)
    md += seed_systems.long_tail_section(runs, out)
    tests = paired_tests(runs, baseline=opts.baseline_loss, metrics=METRICS)
    md += _paired(tests, opts, out)
    n_focus = focus_negatives(fruns, opts)
    md += _time_to_accuracy(runs, fruns, fdesc, n_focus, every, opts, out)
    md += _selection(runs, every, tests, out)
    md += _long_tail(fruns, fdesc, n_focus, opts, out)
    md += _cells_and_runs(cells, runs, out, notes)
    (out / "report.md").write_text("\n".join(md))


def _header(runs: pd.DataFrame, opts: Options, name: str, cells, selections: list[str], committed: bool) -> list[str]:
    """Title, where the runs come from, how to read the numbers, and an epoch budget other than the paper's."""
    origin = (
        "[runs.csv](runs.csv) (per-epoch metrics: [epochs/](epochs/); rebuild without MLflow: "
        "`python -m mmlexp.report --from-csv runs.csv`)"
        if committed
        else f"`{opts.tracking_uri}` on {dt.datetime.now().isoformat(timespec='seconds')}"
    )
    md = [
        f"# Reproduction report: {name}",
        "",
        f"Generated from {origin}, "
        f"experiment(s) {', '.join(f'`{e}`' for e in sorted(runs['experiment'].unique()))}: "
        f"{len(runs)} finished runs in {len(cells[cells['metric'] == 'recall@20'])} cells "
        f"(dataset × encoder × loss × negatives × early stop × selection)."
        + (f" Filter: `{opts.filter_string}`." if opts.filter_string else ""),
        "",
        f"Numbers are the best epoch's metrics (`best/…`). Several seeds: mean ± half-width of the "
        f"{opts.confidence:.0%} t-interval over seeds (n = seeds; a single seed has no interval). "
        "Δ = ours − paper. Selection protocols present: "
        + "; ".join(f"`{s}` = {SELECTION_NOTE.get(s, s)}" for s in selections)
        + ". "
        "Every run behind a number is in [runs.csv](runs.csv) and in the `run_ids` column of each CSV.",
        "",
    ]
    runs = runs[runs["loss"] != "ssm"]  # the SSM paper's runs have its budget: 1000 epochs, early stopping
    if not runs["epochs"].dropna().eq(100).all():
        budgets = ", ".join(str(e) for e in sorted(runs["epochs"].dropna().unique()))
        md += [
            f"**Epoch budget differs from the paper's 100** (epochs: {budgets}"
            + (
                f"; max_steps: {', '.join(str(s) for s in sorted(runs['max_steps'].dropna().unique()))}"
                if runs["max_steps"].notna().any()
                else ""
            )
            + "): compare with the paper's numbers accordingly.",
            "",
        ]
    return md


def _paper_tables(cells: pd.DataFrame, selections: list[str], runs: pd.DataFrame, out: Path) -> list[str]:
    """Table 2 and Table 3 beside the paper's (table2.csv, table3.csv), the SSM paper's Table 2 (ssm_table2.csv)
    and the cells far from them."""
    md: list[str] = []
    tables = {}
    for tname in ("table2", "table3"):
        table = tables[tname] = paper_table(tname, cells, selections)
        table.to_csv(out / f"{tname}.csv", index=False)
        filled = int((table["n"] > 0).sum())
        md += [
            f"## {TITLES[tname]}",
            "",
            f"[{tname}.csv]({tname}.csv) · {filled} of {len(table)} cells have runs (— = no run).",
            "",
            paper_table_md(tname, table),
            "",
        ]

    tables[seed_systems.SSM_TABLE] = paper_table(seed_systems.SSM_TABLE, cells, ["paper"])
    md += seed_systems.ssm_section(tables[seed_systems.SSM_TABLE], runs, out)
    md += status.explanation_section(tables, out)
    return md


def _figure3_data(fruns: pd.DataFrame, fdesc: str, opts: Options, out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Accuracy against negatives (figure3_negatives.*) and the paper's Figure 3 gains beside ours
    (figure3_claims.csv): the curves and the claims."""
    curves = negative_curves(fruns, confidence=opts.confidence)
    curves.to_csv(out / "figure3_negatives.csv", index=False)
    fig = figures.plot_negative_curves(fruns)
    fig.suptitle(f"Recall@20 / NDCG@20 vs number of negatives ({fdesc})", fontsize=10)
    figures.save(fig, out / "figure3_negatives")
    claims = figure3_claims(curves)
    claims.to_csv(out / "figure3_claims.csv", index=False)
    return curves, claims


def _figure3(curves: pd.DataFrame, claims: pd.DataFrame, fdesc: str, opts: Options, verdicts: list[str]) -> list[str]:
    """The Figure 3 section: the figure, the paper's gains beside ours, and the claim ``verdicts`` (report.md
    lines, ``status.claim_verdicts``)."""
    md = [
        "## Figure 3: accuracy against the number of negatives",
        "",
        f"Runs: {fdesc}; error bars = {opts.confidence:.0%} t-interval where a point has several seeds; shaded, "
        f"±{evidence.LEVEL_PCT:g}% around each loss's value at 100 negatives, where its curve stays if it levels off. "
        "Data: [figure3_negatives.csv](figure3_negatives.csv).",
        "",
        "![Figure 3](figure3_negatives.png)",
        "",
        "[SVG](figure3_negatives.svg)",
        "",
        "The paper's Figure 3 prose, MML's relative gain over CCL at 10 negatives "
        "([figure3_claims.csv](figure3_claims.csv)); the paper also states that at 800 negatives "
        "MML ≥ CCL but < BSL, and that all losses level off by 100 negatives:",
        "",
        claims_md(claims),
        "",
    ]
    line = at_800(curves)
    return md + ([line, ""] if line else []) + verdicts


def at_800(curves: pd.DataFrame) -> str | None:
    """The figure's points at 800 negatives, MML against CCL and BSL: each cell's mean over its seeds, ``≈`` where
    two agree to the four decimals shown (the claim verdicts compare the cells on the seeds both ran); None without
    all three."""
    if not len(curves):
        return None
    at800 = curves[curves["num_negatives"] == 800].pivot_table(
        index=["dataset", "metric"], columns="loss", values="mean"
    )
    if not ({"mml", "ccl", "bsl"} <= set(at800.columns) and len(at800)):
        return None

    def vs(a: float, b: float) -> str:
        return "≈" if f"{a:.4f}" == f"{b:.4f}" else ("≥" if a >= b else "<")

    return "At 800 negatives, the figure's points (each cell's mean over its seeds): " + "; ".join(
        f"{d} {m}: MML {r['mml']:.4f} {vs(r['mml'], r['ccl'])} CCL {r['ccl']:.4f}, "
        f"MML {vs(r['mml'], r['bsl'])} BSL {r['bsl']:.4f}"
        for (d, m), r in at800.iterrows()
    )


def _paired(tests: pd.DataFrame, opts: Options, out: Path) -> list[str]:
    """Each loss against the baseline, paired by seed (paired_tests.csv)."""
    tests.to_csv(out / "paired_tests.csv", index=False)
    md = [
        f"## Paired tests against {figures.loss_label(opts.baseline_loss)}",
        "",
        f"Each loss against `{opts.baseline_loss}` in the same setting, paired by seed: mean difference "
        "(loss − baseline) and the paired t-test (`scipy.stats.ttest_rel`) over the common seeds (p needs ≥ 2 "
        "pairs). [paired_tests.csv](paired_tests.csv) has the run ids.",
        "",
    ]
    if len(tests):
        md.append(paired_tests_md(tests))
    else:
        md.append(f"No setting has both `{opts.baseline_loss}` and another loss on common seeds.")
    md.append("")
    return md


def _time_to_accuracy(runs, fruns, fdesc: str, n_focus, every: pd.DataFrame, opts: Options, out: Path) -> list[str]:
    """Recall@20 against wall-clock seconds (time_to_accuracy.*)."""
    if opts.tta_runs:
        tta = runs[runs["run_id"].isin(opts.tta_runs)]
        tdesc = "the runs given with --tta-runs"
    else:
        pool = fruns[fruns["num_negatives"] == n_focus] if n_focus is not None else fruns
        tta = pool.sort_values("seed").groupby(["dataset", "loss"], sort=True).head(1)
        tdesc = f"{fdesc}, {n_focus} negatives, the lowest seed of each loss"
    position = {run_id: i for i, run_id in enumerate(tta["run_id"])}
    history = (
        every[every["run_id"].isin(position)]
        .sort_values("run_id", key=lambda col: col.map(position), kind="stable")
        .reset_index(drop=True)
    )
    history.to_csv(out / "time_to_accuracy.csv", index=False)
    figures.save(figures.plot_time_to_accuracy(history, tta), out / "time_to_accuracy")
    sources = ", ".join(f"`{s}`" for s in history["time_source"].unique()) if len(history) else "none"
    return [
        "## Time to accuracy",
        "",
        f"Recall@20 after each epoch against wall-clock seconds since training start, for {tdesc} "
        f"(time from {sources}; `epoch_time_s+eval_time_s` = cumulative sum of per-epoch train and eval time, "
        "for runs logged before `wall_time_s` existed). Data: [time_to_accuracy.csv](time_to_accuracy.csv). "
        "The clock runs while a run shares the machine or is paused (a resumed run continues from its "
        "checkpoint's time), so read speed from `benchmarks/`, not from this curve.",
        "",
        "![Time to accuracy](time_to_accuracy.png)",
        "",
    ]


def _selection(runs: pd.DataFrame, every: pd.DataFrame, tests: pd.DataFrame, out: Path) -> list[str]:
    """Selected, test-best and last epoch of each run (selection.csv) and the learning curves."""
    gaps = selection.selection_gaps(runs, every)
    gaps.to_csv(out / "selection.csv", index=False)
    figures.save(selection.plot_learning_curves(every, runs), out / "learning_curves")
    return [
        "## Selection protocol: what choosing the epoch on test is worth",
        "",
        "Each run's test metrics at three epochs: the one it **selected** (its `best/` numbers: chosen on test "
        "under `paper`, on a held-out slice of train under `valid`), the **test-best** one (highest test "
        "value of the metric the run monitored, Recall@20 unless it set another: what the paper's protocol reports "
        "for that model) and the **last** one (no selection). For a "
        "`valid` run, test-best − selected is what choosing the epoch on test flatters that same model by (a "
        "`valid` run also trains on less data, so set against a `paper` run it mixes both). "
        "Data: [selection.csv](selection.csv).",
        "",
        "![Learning curves](learning_curves.png)",
        "",
        *selection.selection_md(gaps),
        *selection.protocol_gains(tests),
    ]


def _long_tail(fruns: pd.DataFrame, fdesc: str, n_focus, opts: Options, out: Path) -> list[str]:
    """Recall@20 per item-popularity group (long_tail.*)."""
    pool = fruns[fruns["num_negatives"] == n_focus] if n_focus is not None else fruns
    tail_fig = figures.plot_long_tail(pool)
    md = ["## Long tail", ""]
    if tail_fig is None:
        md += ["No long-tail metrics (`best/tail_recall_at_20_g*`) in these runs.", ""]
    else:
        extra = [c for c in pool.columns if c in ("avg_popularity@20", "coverage@20") and pool[c].notna().any()]
        tail = aggregate(pool, ("dataset", "loss"), figures.tail_columns(pool) + extra, opts.confidence)
        tail.to_csv(out / "long_tail.csv", index=False)
        figures.save(tail_fig, out / "long_tail")
        md += [
            f"Recall@20 per item-popularity group (g0 = least popular) for {fdesc}, {n_focus} negatives. "
            "Data (with average popularity and coverage of the top-20): [long_tail.csv](long_tail.csv).",
            "",
            "![Long tail](long_tail.png)",
            "",
        ]
        if extra:
            piv = tail[tail["metric"].isin(extra)]
            md += [
                md_table(
                    ["dataset", "loss", "metric", "ours"],
                    [
                        [r.dataset, figures.loss_label(r.loss), r.metric, fmt_ours(r._asdict())]
                        for r in piv.itertuples()
                    ],
                ),
                "",
            ]
    return md


def _cells_and_runs(cells: pd.DataFrame, runs: pd.DataFrame, out: Path, notes: list[str]) -> list[str]:
    """Every cell (cells.csv), every run (runs.csv) and the notes."""
    cells.to_csv(out / "cells.csv", index=False)
    main = cells[cells["metric"].isin(METRICS)]
    md = [
        "## All cells",
        "",
        "Every setting in the runs ([cells.csv](cells.csv) has every `best/` metric).",
        "",
        cells_md(main),
        "",
    ]
    runs.to_csv(out / "runs.csv", index=False)
    md += [
        "## Runs",
        "",
        f"[runs.csv](runs.csv): {len(runs)} runs with their MLflow run id, experiment, settings, "
        "selection protocol and metrics (open one with `mlflow ui`: experiment → run id).",
        "",
    ]
    if notes:
        md += ["## Notes", "", *(f"* {n}" for n in notes), ""]
    return md

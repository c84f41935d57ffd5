"""What choosing the epoch on the test split is worth, run by run, read from each run's per-epoch test metrics.

For a run and a metric, three epochs:

* **selected**: the run's own ``best_epoch`` (chosen on test under ``eval.selection=paper``, on the held-out slice
  of train under ``valid``); its value is the run's ``best/`` metric;
* **test-best**: the epoch where the run's monitor (``run_monitor``: Recall@20 unless it set another) peaks on
  test, i.e. what the paper's protocol would report for this run;
* **last**: the final epoch, no selection at all.

``test-best − selected`` is 0 for a ``paper`` run and, for a ``valid`` run, exactly what picking the epoch on test
would have added to that same model; ``test-best − last`` is what any selection adds over taking the final model.
(A ``valid`` run also trains on less data than a ``paper`` run, so comparing the two runs' numbers mixes both
effects; the within-run gap does not.)"""

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mmlexp.report import figures
from mmlexp.report.runs import override_value
from mmlexp.report.stats import METRICS
from mmlexp.report.tables import fmt, md_table

MONITOR = "recall@20"  # conf/trainer/default.yaml: trainer.monitor
KEYS = ("dataset", "encoder", "loss", "num_negatives", "early_stop", "selection", "seed", "run_id")
COLUMNS = (
    *KEYS,
    "metric",
    "selected_epoch",
    "selected",
    "test_best_epoch",
    "test_best",
    "last_epoch",
    "last",
    "test_best_minus_selected",
    "test_best_minus_last",
)


def stop_epoch(scores: Iterable[float], patience: int) -> int | None:
    """The epoch after which early stopping fires: ``patience`` evaluations in a row without a strictly better
    score (``mmlexp.train``'s rule; RecZoo's counts a gain under 1e-6 as none, a difference no metric here shows);
    None if it never fires within ``scores``."""
    best, bad = -math.inf, 0
    for epoch, score in enumerate(scores, start=1):
        if score > best:
            best, bad = score, 0
        else:
            bad += 1
        if bad >= patience:
            return epoch
    return None


def run_monitor(run) -> str:
    """The metric a run's trainer monitored: its ``trainer.monitor=`` override (``runs.csv``'s overrides), else the
    default (``MONITOR``, conf/trainer/default.yaml); SimpleX_gowalla_m1 monitors NDCG@20."""
    return override_value(getattr(run, "overrides", None), "trainer.monitor") or MONITOR


def selection_gaps(runs: pd.DataFrame, history: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """One row per run and metric (``COLUMNS``) from ``history`` (``metric_history`` frame: run_id, epoch, the
    metrics). The test-best epoch is the first epoch with the highest value of the run's own monitor on test
    (``run_monitor``; the trainer keeps the first of equal values); a run without per-epoch values of it is left
    out."""
    rows = []
    for run in runs.itertuples(index=False):
        monitor = run_monitor(run)
        h = history[history["run_id"] == run.run_id].dropna(subset=[monitor]).sort_values("epoch")
        if h.empty:
            continue
        by_epoch = h.set_index("epoch")
        test_best = int(by_epoch[monitor].idxmax())
        last = int(by_epoch.index.max())
        selected = int(run.best_epoch) if pd.notna(run.best_epoch) and run.best_epoch in by_epoch.index else None
        for metric in metrics:
            at = by_epoch[metric] if metric in by_epoch else pd.Series(np.nan, index=by_epoch.index)
            chosen = float(at[selected]) if selected is not None else np.nan
            rows.append(
                {k: getattr(run, k) for k in KEYS}
                | {
                    "metric": metric,
                    "selected_epoch": selected,
                    "selected": chosen,
                    "test_best_epoch": test_best,
                    "test_best": float(at[test_best]),
                    "last_epoch": last,
                    "last": float(at[last]),
                    "test_best_minus_selected": float(at[test_best]) - chosen,
                    "test_best_minus_last": float(at[test_best]) - float(at[last]),
                }
            )
    out = pd.DataFrame(rows, columns=list(COLUMNS))
    if len(out):
        order = {
            "loss": {loss: i for i, loss in enumerate(figures.ordered_losses(out["loss"]))},
            "metric": {metric: i for i, metric in enumerate(metrics)},
        }
        out = out.sort_values(
            ["dataset", "num_negatives", "encoder", "loss", "early_stop", "selection", "seed", "metric"],
            key=lambda col: col.map(order[col.name]) if col.name in order else col,
            kind="stable",
        ).reset_index(drop=True)
        out["selected_epoch"] = pd.array(out["selected_epoch"], dtype="Int64")
    return out


def _system(r) -> str:
    """A row's system, ``MF + CCL, early stop`` (a row of ``itertuples``: encoder, loss, early_stop; the first
    and the last may be absent)."""
    return figures.system_label(getattr(r, "encoder", "mf"), r.loss, getattr(r, "early_stop", "N"))


def _pct(delta: float, base: float) -> str:
    if pd.isna(delta) or not base:
        return "—"
    delta = 0.0 if round(delta, 4) == 0 else delta  # no "-0.0000"
    return f"{delta:+.4f} ({100 * delta / base:+.1f}%)"


def selection_md(gaps: pd.DataFrame) -> list[str]:
    """report.md lines: the table of ``selection_gaps`` and one line per ``valid`` run on what test selection
    would have added to it."""
    if gaps.empty:
        return ["No run has per-epoch test metrics.", ""]
    header = ["dataset", "system", "N", "selection", "seed", "metric", "selected (epoch)", "test-best (epoch)"]
    header += ["last (epoch)", "test-best − selected", "test-best − last"]
    rows = [
        [
            r.dataset,
            _system(r),
            r.num_negatives,
            r.selection,
            r.seed,
            figures.METRIC_LABELS.get(r.metric, r.metric),
            f"{fmt(r.selected)} ({r.selected_epoch if pd.notna(r.selected_epoch) else '—'})",
            f"{fmt(r.test_best)} ({r.test_best_epoch})",
            f"{fmt(r.last)} ({r.last_epoch})",
            _pct(r.test_best_minus_selected, r.selected),
            _pct(r.test_best_minus_last, r.last),
        ]
        for r in gaps.itertuples()
    ]
    return [md_table(header, rows), "", *_valid_lines(gaps), *protocol_split(gaps), *_peak_lines(gaps)]


def _valid_lines(gaps: pd.DataFrame) -> list[str]:
    """One line per ``valid`` run: what choosing its epoch on test would have reported instead."""
    valid = gaps[gaps["selection"] == "valid"]
    lines = [
        f"* {r.dataset} {_system(r)} N={r.num_negatives} seed {r.seed}, "
        f"{figures.METRIC_LABELS.get(r.metric, r.metric)}: choosing the epoch on test instead of on the held-out "
        f"slice would report {fmt(r.test_best)} (epoch {r.test_best_epoch}) instead of {fmt(r.selected)} "
        f"(epoch {r.selected_epoch}): {_pct(r.test_best_minus_selected, r.selected)}."
        for r in valid.itertuples()
    ]
    return [*lines, ""] if lines else []


def _peak_lines(gaps: pd.DataFrame) -> list[str]:
    """The runs whose test Recall@20 peaks in the first tenth of training, and those still rising at the end."""
    lines: list[str] = []
    early = gaps[(gaps["metric"] == MONITOR) & (gaps["test_best_epoch"] <= gaps["last_epoch"] // 10)]
    if len(early):
        lines += [
            "Runs whose test Recall@20 peaks in the first tenth of training (the number reported for them is "
            "that early epoch, picked on test; the change to the last epoch in brackets): "
            + ", ".join(
                f"{_system(r)} N={r.num_negatives} ({r.selection}, seed {r.seed}): "
                f"epoch {r.test_best_epoch} of {r.last_epoch} (last {_pct(-r.test_best_minus_last, r.test_best)})"
                for r in early.itertuples()
            )
            + ".",
            "",
        ]
    rising = gaps[(gaps["metric"] == MONITOR) & (gaps["test_best_epoch"] == gaps["last_epoch"])]
    if len(rising):
        lines += [
            "Runs whose test Recall@20 peaks at their last epoch (still rising when training stopped, so a longer "
            "budget may raise them): "
            + ", ".join(f"{_system(r)} N={r.num_negatives} ({r.selection}, seed {r.seed})" for r in rising.itertuples())
            + ".",
            "",
        ]
    return lines


def paper_valid_pairs(frame: pd.DataFrame, same: list[str]) -> pd.DataFrame:
    """The ``paper`` rows of ``frame`` beside the ``valid`` rows that agree on ``same`` (suffixes _paper, _valid)."""
    by = frame["selection"]
    return frame[by == "paper"].merge(frame[by == "valid"], on=same, suffixes=("_paper", "_valid"))


def protocol_split(gaps: pd.DataFrame) -> list[str]:
    """report.md lines: for each ``valid`` run with a ``paper`` run of the same setting and seed, the gap between
    the two reported numbers split in two: choosing the epoch on test (within the valid run) and the rest, the
    held-out slice's cost (the valid run trains without it)."""
    pairs = paper_valid_pairs(gaps, ["dataset", "encoder", "loss", "num_negatives", "early_stop", "seed", "metric"])
    if pairs.empty:
        return []
    lines = ["The `paper` run against the `valid` run of the same setting and seed:", ""]
    for r in pairs.itertuples():
        total = r.selected_paper - r.selected_valid
        choose = r.test_best_minus_selected_valid
        lines.append(
            f"* {r.dataset} {_system(r)} N={r.num_negatives} seed {r.seed}, "
            f"{figures.METRIC_LABELS.get(r.metric, r.metric)}: `paper` {fmt(r.selected_paper)} against `valid` "
            f"{fmt(r.selected_valid)}, a gap of {fmt(total, sign=True)} ({100 * total / r.selected_paper:+.1f}% of "
            f"the paper run): choosing the epoch on test accounts for {fmt(choose, sign=True)}, training without "
            f"the held-out slice for {fmt(total - choose, sign=True)}."
        )
    return [*lines, ""]


def protocol_gains(tests: pd.DataFrame) -> list[str]:
    """report.md lines: each loss's difference to the baseline (rows of ``stats.paired_tests``) under ``paper`` and
    under ``valid`` in the same setting, and whether the protocol changes which of the two is ahead."""
    pairs = paper_valid_pairs(
        tests, ["dataset", "encoder", "num_negatives", "early_stop", "loss", "baseline", "metric"]
    )
    if pairs.empty:
        return []
    lines = ["Each loss against the baseline under both protocols ([paired_tests.csv](paired_tests.csv)):", ""]
    for r in pairs.itertuples():
        verdict = (
            "the same loss is ahead under both"
            if np.sign(r.mean_diff_paper) == np.sign(r.mean_diff_valid)
            else "**the protocol changes which loss is ahead**"
        )
        lines.append(
            f"* {r.dataset} {figures.loss_label(r.loss)} − {figures.loss_label(r.baseline)} N={r.num_negatives}, "
            f"{figures.METRIC_LABELS.get(r.metric, r.metric)}: `paper` {fmt(r.mean_diff_paper, sign=True)} "
            f"({r.rel_diff_pct_paper:+.1f}%, {r.n_pairs_paper} seed(s)), `valid` {fmt(r.mean_diff_valid, sign=True)} "
            f"({r.rel_diff_pct_valid:+.1f}%, {r.n_pairs_valid} seed(s)): {verdict}."
        )
    return [*lines, ""]


def plot_learning_curves(history: pd.DataFrame, runs: pd.DataFrame, metric: str = MONITOR) -> Figure:
    """Test ``metric`` per epoch, one panel per (dataset, negatives), one line per run (dashed: selection
    ``valid``), a filled marker at each run's selected epoch."""
    info = runs.set_index("run_id")
    data = history[history["run_id"].isin(info.index)] if len(history) else history
    panels = (
        sorted(
            {(info.at[r, "dataset"], int(info.at[r, "num_negatives"])) for r in data["run_id"].unique()},
            key=lambda p: (figures.ordered_datasets(info["dataset"]).index(p[0]), p[1]),
        )
        if len(data)
        else [None]
    )
    fig = Figure(figsize=(4.6 * len(panels), 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    losses = figures.ordered_losses(info["loss"]) if len(info) else []
    for ax, panel in zip(axes, panels, strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(figures.METRIC_LABELS.get(metric, metric) + " (test)")
        if panel is None:
            ax.set_title("no per-epoch history")
            continue
        dataset, n = panel
        ax.set_title(f"{figures.DATASET_LABELS.get(dataset, dataset)}, N={n}")
        here = info[(info["dataset"] == dataset) & (info["num_negatives"] == n)]
        here = here.assign(order=here["loss"].map(losses.index)).sort_values(["order", "selection", "seed"])
        for row in here.reset_index().itertuples(index=False):
            line = data[data["run_id"] == row.run_id].sort_values("epoch")
            if line.empty:
                continue
            style = figures.loss_style(row.loss, losses)
            label = f"{_system(row)} s{row.seed}"
            dashed = row.selection != "paper"
            ax.plot(
                line["epoch"],
                line[metric],
                color=style["color"],
                linestyle="--" if dashed else "-",
                linewidth=1.1,
                label=label + (f" ({row.selection})" if dashed else ""),
            )
            chosen = line[line["epoch"] == row.best_epoch]
            ax.plot(chosen["epoch"], chosen[metric], linestyle="none", markersize=5, **style)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return fig

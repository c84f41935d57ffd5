"""Figures as ``matplotlib.figure.Figure`` objects (no pyplot: no GUI backend needed, files render with Agg;
in a notebook the returned figure displays as usual)."""

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure

from mmlexp.report.evidence import LEVEL_FROM, LEVEL_PCT
from mmlexp.report.stats import METRICS, aggregate, negative_curves

LOSS_ORDER = ("mml", "ccl", "bsl", "ssm", "mse", "softmax", "infonce", "bpr", "hinge", "triplet", "contrastive", "bce")
LOSS_LABELS = {
    "mml": "MML",
    "ccl": "CCL",
    "bsl": "BSL",
    "ssm": "SSM",
    "mse": "MSE",
    "softmax": "Softmax CE",
    "infonce": "InfoNCE",
    "bpr": "BPR",
    "hinge": "Pairwise hinge",
    "triplet": "Triplet",
    "contrastive": "Contrastive",
    "bce": "BCE",
}


def loss_label(loss: str) -> str:
    """The display name of a loss ("softmax" -> "Softmax CE"); unknown names pass through."""
    return LOSS_LABELS.get(loss, loss)


ENCODER_LABELS = {"lightgcn": "LightGCN", "mf": "MF", "simplex": "SimpleX"}


def system_label(encoder: str, loss: str, early_stop: str = "N") -> str:
    """``LightGCN + SSM``, ``MF + CCL, early stop`` (SSM always stops early: its paper's budget, said once)."""
    name = f"{ENCODER_LABELS.get(encoder, encoder)} + {loss_label(loss)}"
    return name + (", early stop" if early_stop == "Y" and loss != "ssm" else "")


DATASET_LABELS = {"gowalla": "Gowalla", "yelp2018": "Yelp2018", "sample": "sample"}
METRIC_LABELS = {"recall@20": "Recall@20", "ndcg@20": "NDCG@20"}
TAIL = re.compile(r"^tail_recall@(\d+)_g(\d+)$")


def loss_rank(loss: str) -> int:
    """A loss's place in the paper's order (``LOSS_ORDER``: MML, CCL, BSL first); any other loss after them all."""
    return LOSS_ORDER.index(loss) if loss in LOSS_ORDER else len(LOSS_ORDER)


def ordered_losses(losses) -> list[str]:
    losses = [str(x) for x in dict.fromkeys(losses) if x is not None and x == x]
    return sorted(losses, key=lambda x: (loss_rank(x), x))


def loss_style(loss: str, losses: Sequence[str]) -> dict:
    markers = "osD^vP*Xh<>p"
    i = LOSS_ORDER.index(loss) if loss in LOSS_ORDER else len(LOSS_ORDER) + list(losses).index(loss)
    return {"color": f"C{i % 10}", "marker": markers[i % len(markers)]}


def ordered_datasets(datasets) -> list[str]:
    order = ("yelp2018", "gowalla")
    datasets = [str(x) for x in dict.fromkeys(datasets) if x is not None and x == x]
    return sorted(datasets, key=lambda x: (order.index(x) if x in order else len(order), x))


def plot_negative_curves(df: pd.DataFrame, metrics: Sequence[str] = METRICS) -> Figure:
    """Paper Figure 3: one panel per dataset x metric, one line per loss, x = number of negatives (log scale),
    error bars = 95% t-interval over seeds where a point has more than one seed; shaded, the band a loss's curve
    stays in if it levels off from 100 negatives (``level_band``). ``df`` is ``fetch_runs`` output (filter it to one
    encoder / early-stop / selection setting first)."""
    curves = negative_curves(df, metrics=metrics)
    datasets = ordered_datasets(curves["dataset"]) if len(curves) else []
    nrows, ncols = max(1, len(datasets)), max(1, len(metrics))
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows), layout="constrained")
    axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))
    losses = ordered_losses(curves["loss"]) if len(curves) else []
    for r, dataset in enumerate(datasets or [None]):
        for c, metric in enumerate(metrics):
            ax = axes[r, c]
            ax.set_xscale("log")
            ax.set_xlabel("number of negatives")
            ax.set_ylabel(METRIC_LABELS.get(metric, metric))
            ax.set_title(
                f"{DATASET_LABELS.get(dataset, dataset)} — {METRIC_LABELS.get(metric, metric)}"
                if dataset
                else "no runs"
            )
            sub = curves[(curves["dataset"] == dataset) & (curves["metric"] == metric)] if dataset else curves.iloc[:0]
            ticks = sorted(sub["num_negatives"].unique()) if len(sub) else []
            for loss in losses:
                line = sub[sub["loss"] == loss].sort_values("num_negatives")
                if line.empty:
                    continue
                err = line["ci_half"].where(line["n"] > 1)
                level_band(ax, line, loss_style(loss, losses)["color"])
                ax.errorbar(
                    line["num_negatives"],
                    line["mean"],
                    yerr=None if err.isna().all() else err.fillna(0),
                    label=loss_label(loss),
                    capsize=3,
                    linewidth=1.5,
                    markersize=5,
                    **loss_style(loss, losses),
                )
            if ticks:
                ax.set_xticks(ticks)
                ax.set_xticklabels([str(int(t)) for t in ticks])
                ax.minorticks_off()
            ax.grid(True, alpha=0.3)
            if len(sub):
                ax.legend(fontsize=8)
    return fig


def level_band(ax, line: pd.DataFrame, color: str) -> None:
    """Shade ±LEVEL_PCT % around a loss's value at LEVEL_FROM negatives, from there to its last point: where its
    curve stays if it levels off (``evidence.claim_specs`` tests each point against it)."""
    start, after = line[line["num_negatives"] == LEVEL_FROM], line[line["num_negatives"] > LEVEL_FROM]
    if start.empty or after.empty:
        return
    value, pct = float(start["mean"].iloc[0]), LEVEL_PCT / 100
    ends = [LEVEL_FROM, after["num_negatives"].max()]
    ax.fill_between(ends, value * (1 - pct), value * (1 + pct), color=color, alpha=0.12, linewidth=0)


def plot_time_to_accuracy(history: pd.DataFrame, runs: pd.DataFrame, metric: str = "recall@20") -> Figure:
    """``metric`` against wall-clock seconds since training start, one panel per dataset, one line per run
    (``history`` from ``metric_history``, ``runs`` the ``fetch_runs`` rows of those runs)."""
    info = runs.set_index("run_id")
    data = history[history["run_id"].isin(info.index)] if len(history) else history
    datasets = ordered_datasets(info.loc[data["run_id"].unique(), "dataset"]) if len(data) else []
    fig = Figure(figsize=(5.0 * max(1, len(datasets)), 3.6), layout="constrained")
    axes = fig.subplots(1, max(1, len(datasets)), squeeze=False)[0]
    losses = ordered_losses(info["loss"]) if len(info) else []
    panels: list[str | None] = [*datasets] or [None]  # one empty panel when there is no history
    for ax, dataset in zip(axes, panels, strict=True):
        ax.set_xlabel("wall-clock seconds since training start")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.set_title(DATASET_LABELS.get(dataset, dataset) if dataset else "no per-epoch history")
        if dataset is None:
            continue
        lines = []
        for run_id, line in data.groupby("run_id", sort=False):
            row = info.loc[run_id]
            if row["dataset"] == dataset:
                label = f"{loss_label(row['loss'])} {row['encoder']} N={row['num_negatives']} seed {row['seed']}"
                lines.append((label, row, run_id, line.sort_values("epoch")))
        seen: dict[str, int] = {}
        for label, row, run_id, line in lines:
            style = loss_style(row["loss"], losses)
            if sum(other == label for other, *_ in lines) > 1:  # the same settings run again (another code version)
                repeat = seen[label] = seen.get(label, -1) + 1
                label = f"{label} ({row.get('run_name') or run_id[:8]})"
                style |= {"linestyle": ("-", "--", ":", "-.")[repeat % 4]}
            ax.plot(line["seconds"], line[metric], label=label, linewidth=1.3, markersize=3, **style)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def tail_group(column: str) -> str:
    """The group of a ``tail_recall@K_g{g}`` column: ``"3"`` for ``tail_recall@20_g3``."""
    match = TAIL.match(column)
    if match is None:
        raise ValueError(f"{column!r} is not a tail_recall@K_g<group> column")
    return match.group(2)


def tail_columns(df: pd.DataFrame, k: int = 20) -> list[str]:
    cols = [c for c in df.columns if (m := TAIL.match(c)) and int(m.group(1)) == k and df[c].notna().any()]
    return sorted(cols, key=lambda c: int(tail_group(c)))


def plot_long_tail(df: pd.DataFrame, k: int = 20) -> Figure | None:
    """Recall@k per item-popularity group (g0 = least popular), one bar per loss, one panel per dataset; error bars
    = 95% t-interval over seeds. None when the runs have no ``tail_recall@k_g*`` metrics."""
    cols = tail_columns(df, k)
    if not cols:
        return None
    agg = aggregate(df, by=("dataset", "loss"), metrics=cols)
    datasets = ordered_datasets(agg["dataset"])
    losses = ordered_losses(agg["loss"])
    fig = Figure(figsize=(5.0 * len(datasets), 3.6), layout="constrained")
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    width = 0.8 / max(1, len(losses))
    for ax, dataset in zip(axes, datasets, strict=True):
        for i, loss in enumerate(losses):
            sub = agg[(agg["dataset"] == dataset) & (agg["loss"] == loss)].set_index("metric").reindex(cols)
            if sub["mean"].isna().all():
                continue
            err = sub["ci_half"].where(sub["n"] > 1)
            x = np.arange(len(cols)) + (i - (len(losses) - 1) / 2) * width
            ax.bar(
                x,
                sub["mean"],
                width,
                yerr=None if err.isna().all() else err.fillna(0),
                capsize=2,
                label=loss_label(loss),
                color=loss_style(loss, losses)["color"],
            )
        ax.set_xticks(np.arange(len(cols)))
        ax.set_xticklabels([f"g{tail_group(c)}" for c in cols])
        ax.set_xlabel("item popularity group (g0 = least popular)")
        ax.set_ylabel(f"Recall@{k} within group")
        ax.set_title(DATASET_LABELS.get(dataset, dataset))
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def save(fig: Figure, path_stem) -> list[str]:
    """``<stem>.png`` and ``<stem>.svg``, the same bytes for the same figure (no date, fixed SVG ids); returns the
    file names."""
    names = []
    with rc_context({"svg.hashsalt": "mmlexp"}):
        for ext in ("png", "svg"):
            fig.savefig(
                f"{path_stem}.{ext}",
                dpi=150 if ext == "png" else None,
                metadata={"Date": None} if ext == "svg" else None,
            )
            names.append(f"{path_stem}.{ext}")
    return names


__all__ = ["plot_negative_curves", "plot_time_to_accuracy", "plot_long_tail", "save", "LOSS_LABELS", "loss_label"]

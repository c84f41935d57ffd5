"""Seeds -> mean and t-interval per cell; paired t-tests between two losses on the same seeds."""

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from mmlexp.report.runs import CELL_KEYS

# The keys of a setting (a cell of the tables less its loss): paired_tests compares the losses within one.
SETTING_KEYS = tuple(k for k in CELL_KEYS if k != "loss")

METRICS = ("recall@20", "ndcg@20")
STAT_COLUMNS = ("metric", "n", "mean", "std", "ci_low", "ci_high", "ci_half", "seeds", "run_ids", "epochs")


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean and the two-sided t-interval over seeds: mean ± t_{(1+c)/2, n-1} * sd / sqrt(n) (sd with n-1).
    A single value has no interval (NaN bounds)."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = len(x)
    if n == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan, "ci_half": math.nan}
    mean = float(x.mean())
    if n == 1:
        return {"n": 1, "mean": mean, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan, "ci_half": math.nan}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * std / math.sqrt(n))
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half, "ci_half": half}


def _join(values) -> str:
    return " ".join(str(v) for v in values)


def aggregate(
    df: pd.DataFrame, by: Sequence[str] = CELL_KEYS, metrics: Sequence[str] = METRICS, confidence: float = 0.95
) -> pd.DataFrame:
    """Long table: one row per (``by``..., metric) with n seeds, mean, std, 95% t-interval, the seeds, the run ids
    and the epoch budgets of its runs."""
    rows = []
    metrics = [m for m in metrics if m in df.columns]
    if len(df) and metrics:
        for key, group in df.groupby(list(by), dropna=False, sort=True):
            cell = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
            for metric in metrics:
                sub = group[group[metric].notna()]
                if sub.empty:
                    continue
                rows.append(
                    {
                        **cell,
                        "metric": metric,
                        **mean_ci(sub[metric].tolist(), confidence),
                        "seeds": _join(sorted(sub["seed"].dropna().astype(int))),
                        "run_ids": _join(sub["run_id"]),
                        "epochs": _join(sorted(sub["epochs"].dropna().astype(int).unique())),
                    }
                )
    return pd.DataFrame(rows, columns=[*by, *STAT_COLUMNS])


def negative_curves(
    df: pd.DataFrame,
    metrics: Sequence[str] = METRICS,
    by: Sequence[str] = ("dataset", "loss", "num_negatives"),
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Figure 3 data from ``fetch_runs`` output: mean and t-interval over seeds per (dataset, loss, num_negatives,
    metric). Filter ``df`` first to one encoder / early-stop / selection setting (``report`` does)."""
    out = aggregate(df[df["num_negatives"].notna()], by=by, metrics=metrics, confidence=confidence)
    if "num_negatives" in out:
        out["num_negatives"] = out["num_negatives"].astype(int)
    return out.sort_values([*by, "metric"], ignore_index=True)


def paired_tests(
    df: pd.DataFrame, baseline: str = "ccl", metrics: Sequence[str] = METRICS, by: Sequence[str] = SETTING_KEYS
) -> pd.DataFrame:
    """Each loss against ``baseline`` in the same setting (``by``), paired by seed: mean difference (loss minus
    baseline) and ``scipy.stats.ttest_rel(loss, baseline)`` over the common seeds (needs >= 2 pairs; NaN
    otherwise). Several runs of one seed are averaged first."""
    cols = [
        *by,
        "loss",
        "baseline",
        "metric",
        "n_pairs",
        "seeds",
        "mean",
        "baseline_mean",
        "mean_diff",
        "rel_diff_pct",
        "t",
        "p_value",
        "run_ids",
        "baseline_run_ids",
    ]
    rows = []
    metrics = [m for m in metrics if m in df.columns]
    data = df[df["seed"].notna()]
    for key, group in data.groupby(list(by), dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        base = group[group["loss"] == baseline]
        if base.empty:
            continue
        for loss, other in group[group["loss"] != baseline].groupby("loss", sort=True):
            for metric in metrics:
                a = other.groupby("seed")[metric].mean().dropna()
                b = base.groupby("seed")[metric].mean().dropna()
                seeds = sorted(set(a.index) & set(b.index))
                if not seeds:
                    continue
                x, y = a.loc[seeds].to_numpy(float), b.loc[seeds].to_numpy(float)
                t = p = math.nan
                if len(seeds) >= 2:
                    res = stats.ttest_rel(x, y)
                    t, p = float(res.statistic), float(res.pvalue)
                diff = float((x - y).mean())
                rows.append(
                    {
                        **dict(zip(by, key, strict=True)),
                        "loss": loss,
                        "baseline": baseline,
                        "metric": metric,
                        "n_pairs": len(seeds),
                        "seeds": _join(int(s) for s in seeds),
                        "mean": float(x.mean()),
                        "baseline_mean": float(y.mean()),
                        "mean_diff": diff,
                        "rel_diff_pct": 100 * diff / float(y.mean()) if y.mean() else math.nan,
                        "t": t,
                        "p_value": p,
                        "run_ids": _join(other[other["seed"].isin(seeds)]["run_id"]),
                        "baseline_run_ids": _join(base[base["seed"].isin(seeds)]["run_id"]),
                    }
                )
    return pd.DataFrame(rows, columns=cols)

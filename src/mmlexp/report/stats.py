"""Seeds -> mean and t-interval per cell; paired t-tests between two losses on the same seeds; the paired per-user
tests behind the claim verdicts (Wilcoxon signed-rank, percentile bootstrap of the mean difference, Holm)."""

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

from mmlexp.report.runs import CELL_KEYS

# The keys of a setting (a cell of the tables less its loss): paired_tests compares the losses within one.
SETTING_KEYS = tuple(k for k in CELL_KEYS if k != "loss")

METRICS = ("recall@20", "ndcg@20")
ZERO_METHOD = "pratt"  # scipy.stats.wilcoxon: users with equal metrics are ranked, then left out of the sum
N_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed: the report rebuilds byte-identically
BATCH = 250  # resamples drawn at a time (250 x 30k users of int64: 60 MB)
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


def seed_paired(x: ArrayLike, y: ArrayLike, confidence: float = 0.95) -> dict[str, float]:
    """Paired over seeds (``x[i]``, ``y[i]`` from seed i): mean difference, its t-interval (``mean_ci`` of
    x - y) and ``scipy.stats.ttest_rel(x, y)`` (two-sided; t and p NaN below 2 pairs)."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ci = mean_ci((xs - ys).tolist(), confidence)
    t = p = math.nan
    if len(xs) >= 2:
        res = stats.ttest_rel(xs, ys)
        t, p = float(res.statistic), float(res.pvalue)
    return {"n": len(xs), "mean_diff": ci["mean"], "ci_low": ci["ci_low"], "ci_high": ci["ci_high"], "t": t, "p": p}


def holm(pvalues: ArrayLike) -> np.ndarray:
    """Holm's step-down adjustment (Holm 1979): with the m p-values sorted, p_(1) <= ... <= p_(m),
    adj_(i) = min(1, max_{j <= i} (m - j + 1) p_(j)). NaN p-values stay NaN and are not counted in m."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    ok = ~np.isnan(p)
    q = p[ok]
    order = np.argsort(q, kind="stable")
    adjusted = np.empty(len(q))
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate((len(q) - np.arange(len(q))) * q[order]))
    out[ok] = adjusted
    return out


def wilcoxon_p(a: ArrayLike, b: ArrayLike) -> float:
    """Two-sided Wilcoxon signed-rank test of the paired differences a - b (``scipy.stats.wilcoxon``,
    ``zero_method="pratt"`` (Pratt 1959): a user with equal metrics under both takes its rank among |a - b| and
    is then left out of the rank sum, with the normal approximation corrected for it (Cureton 1967), so ties at
    zero neither vanish from the sample as in ``"wilcox"`` nor count for one side). scipy's ``method="auto"``:
    the exact null distribution up to 50 pairs without ties or zeros, all 2^n sign flips up to 13 pairs with
    them, else the normal approximation with the tie correction. All differences zero: p = 1."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(d) == 0:
        return math.nan
    if not d.any():
        return 1.0
    return float(stats.wilcoxon(d, zero_method=ZERO_METHOD, alternative="two-sided").pvalue)


def bootstrap_diff(
    a: ArrayLike,
    b: ArrayLike,
    confidence: float = 0.95,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, float]:
    """Paired percentile bootstrap (Efron & Tibshirani 1993, ch. 13): resample the pairs (a_i, b_i) with
    replacement ``n_resamples`` times (``numpy.random.default_rng(seed)``, the same draws as
    ``scipy.stats.bootstrap(paired=True, method="percentile", batch=BATCH)``); the interval is the
    ((1-c)/2, (1+c)/2) quantiles of the resampled mean(a) - mean(b), and of 100 (mean(a) - mean(b)) / mean(b)."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    diffs, rels = np.empty(n_resamples), np.empty(n_resamples)
    for start in range(0, n_resamples, BATCH):
        idx = rng.integers(0, len(xa), size=(min(BATCH, n_resamples - start), len(xa)))
        ma, mb = xa[idx].mean(axis=-1), xb[idx].mean(axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            diffs[start : start + len(idx)], rels[start : start + len(idx)] = ma - mb, 100 * (ma - mb) / mb
    q = [100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2]
    (lo, hi), (rlo, rhi) = np.percentile(diffs, q), np.percentile(rels, q)
    diff = float(xa.mean() - xb.mean())
    return {
        "mean_diff": diff,
        "ci_low": float(lo),
        "ci_high": float(hi),
        "rel_diff_pct": 100 * diff / float(xb.mean()) if xb.mean() else math.nan,
        "rel_ci_low": float(rlo),
        "rel_ci_high": float(rhi),
    }


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
                test = seed_paired(x, y)
                t, p, diff = test["t"], test["p"], float((x - y).mean())
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

"""The evidence behind each claim verdict of report.md.

Every Figure 3 claim that compares two losses in one setting (or one loss at 100 and at more negatives) is tested on
the test users both runs scored, paired by user: two-sided Wilcoxon signed-rank test and the mean difference with a
seeded percentile bootstrap interval (``mmlexp.report.stats``), Holm-corrected over all the claim tests of the report
(one family, with the other systems' claims of ``mmlexp.report.seed_systems``: ``judge`` takes their p-values). With
>= 2 seeds of both cells the seed-level paired t-test is computed beside it (``compare``). A claim whose runs have no
per-user file (``users_csv`` in runs.csv) keeps the point-estimate verdict, on the seeds both cells ran, and says it
is not tested; one whose cells have not run yet is NOT RESOLVED. ``claim_tests`` gives the rows of ``claims.csv``
(``claim_rows``, then ``judge``); ``mmlexp.report.status.claim_verdicts`` prints them.
"""

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mmlexp.report.export import USERS_COLUMN, cell_id, read_per_user
from mmlexp.report.stats import bootstrap_diff, holm, seed_paired, wilcoxon_p

ALPHA = 0.05
LEVEL_PCT = 3.0  # "level off by 100" read as: from 100 negatives on, no point of a loss's curve moves it over 3%
HOLDS, FAILS, OPEN = "HOLDS", "DOES NOT HOLD", "NOT RESOLVED"
PER_USER, POINT, NOT_RUN = "per-user", "point estimate", "not run yet"
UNTESTED = "no per-user evidence: point estimate only, NOT tested"
LEVEL_LOSSES = ("mml", "ccl", "bsl")
LEVEL_FROM = 100  # the negatives from which the curves level off
LEVEL_PART = f" levels off from {LEVEL_FROM} to "  # in the per-loss, per-point rows of the "level off" claim
LEVEL_CLAIM = f"all losses level off by {LEVEL_FROM} negatives"  # their combined row
COLUMNS = (  # claims.csv
    "claim",
    "dataset",
    "metric",
    "a",
    "b",
    "n_users",
    "n_seeds",
    "mean_diff",
    "ci_low",
    "ci_high",
    "p_wilcoxon",
    "p_holm",
    "seed_p",
    "verdict",
    "runs",
    "expect",
    "evidence",
    "user_seeds",
    "mean_a",
    "mean_b",
    "rel_diff_pct",
    "rel_ci_low",
    "rel_ci_high",
    "seed_mean_diff",
    "seed_ci_low",
    "seed_ci_high",
    "run_files",
    "no_users_csv",
    "wanted",
)

Reader = Callable[[Path, Mapping], pd.DataFrame | None]


@dataclass(frozen=True)
class Claim:
    """One claim test: ``a`` against ``b`` (each (loss, negatives)) on ``dataset``/``metric``; ``expect`` is the
    claimed relation of a to b: ``>``, ``≥``, ``<``, or ``level`` (|a - b| / b <= LEVEL_PCT %)."""

    text: str
    dataset: str
    metric: str
    a: tuple[str, int]
    b: tuple[str, int]
    expect: str


def claim_specs(curves: pd.DataFrame, claims: pd.DataFrame) -> list[Claim]:
    """The report's claims with both sides in ``curves``, in report order: MML beats CCL at 10 negatives (each row
    of ``claims``), then per (dataset, metric): MML ≥ CCL and MML < BSL at 800, and each loss level from 100 to every
    larger number of negatives its curve has (200, 400, 800: the curve read point by point, not only its ends)."""
    have = {(r.dataset, r.metric, r.loss, int(r.num_negatives)) for r in curves.itertuples()}
    out = [
        Claim(
            f"MML beats CCL at {int(c.num_negatives)} negatives (paper +{c.paper_relative_gain_pct:.1f}%)",
            c.dataset,
            c.metric,
            (c.loss, int(c.num_negatives)),
            (c.baseline, int(c.num_negatives)),
            ">",
        )
        for c in claims.itertuples()
    ]
    for dataset, metric in sorted({(d, m) for d, m, _, _ in have}):
        out += [
            Claim("MML ≥ CCL at 800 negatives", dataset, metric, ("mml", 800), ("ccl", 800), "≥"),
            Claim("MML < BSL at 800 negatives", dataset, metric, ("mml", 800), ("bsl", 800), "<"),
            *(
                Claim(
                    f"{loss.upper()}{LEVEL_PART}{n} negatives", dataset, metric, (loss, n), (loss, LEVEL_FROM), "level"
                )
                for loss in LEVEL_LOSSES
                for n in sorted({n for d, m, x, n in have if (d, m, x) == (dataset, metric, loss) and n > LEVEL_FROM})
            ),
        ]
    return [c for c in out if {(c.dataset, c.metric, *c.a), (c.dataset, c.metric, *c.b)} <= have]


def is_level_part(claims: pd.Series) -> pd.Series:
    """Which rows of ``claims.csv``'s ``claim`` column are the per-loss, per-point rows of the "level off" claim."""
    return claims.astype(str).str.contains(LEVEL_PART, regex=False)


def level_point(claim: str) -> str:
    """``MML levels off from 100 to 800 negatives`` -> ``MML 100→800``."""
    loss, rest = claim.split(LEVEL_PART)
    return f"{loss} {LEVEL_FROM}→{rest.split()[0]}"


def level_change(claim: str, rel_diff_pct: float, combined: str) -> str:
    """``MML 100→800 +2.9%``: one loss's change from 100 negatives to a point. Where the combined verdict reads point
    estimates (``combined``: its evidence; a row untested), a change beyond the band says so (``(beyond ±3%)``),
    tested or not: on point estimates that alone makes "all losses level off" fail."""
    digits = 2 if round(abs(rel_diff_pct), 1) == LEVEL_PCT else 1  # +3.04% beyond, +2.96% within: not both "+3.0%"
    text = f"{level_point(claim)} {rel_diff_pct:+.{digits}f}%"
    beyond = combined == POINT and abs(rel_diff_pct) > LEVEL_PCT
    return text + (f" (beyond ±{LEVEL_PCT:g}%)" if beyond else "")


def _cell(runs: pd.DataFrame, dataset: str, side: tuple[str, int]) -> pd.DataFrame:
    loss, n = side
    return runs[(runs["dataset"] == dataset) & (runs["loss"] == loss) & (runs["num_negatives"] == n)]


def _mean(curves: pd.DataFrame, claim: Claim, side: tuple[str, int]) -> float:
    hit = _cell(curves[curves["metric"] == claim.metric], claim.dataset, side)
    return float(hit["mean"].iloc[0])


def _per_user(rows: pd.DataFrame, metric: str, read: Callable[[Mapping], pd.DataFrame | None]) -> pd.Series | None:
    """Per user, ``metric`` averaged over the runs in ``rows`` (users in all of them); None if none has a file."""
    frames = [f[metric] for _, r in rows.iterrows() if (f := read(r)) is not None]
    return pd.concat(frames, axis=1, join="inner").mean(axis=1) if frames else None


def user_pairs(
    a_runs: pd.DataFrame, b_runs: pd.DataFrame, seeds: list, metric: str, read: Callable
) -> tuple[np.ndarray, np.ndarray, list]:
    """(a, b, seeds used): per test user in both, ``metric`` averaged over the common seeds where both cells have
    per-user files (a seed's several runs averaged first)."""
    a_cols, b_cols, used = [], [], []
    for seed in seeds:
        x = _per_user(a_runs[a_runs["seed"] == seed], metric, read)
        y = _per_user(b_runs[b_runs["seed"] == seed], metric, read)
        if x is not None and y is not None:
            a_cols.append(x)
            b_cols.append(y)
            used.append(seed)
    if not used:
        return np.empty(0), np.empty(0), []
    both = pd.concat(
        [pd.concat(a_cols, axis=1, join="inner").mean(axis=1), pd.concat(b_cols, axis=1, join="inner").mean(axis=1)],
        axis=1,
        join="inner",
    ).dropna()
    return both.iloc[:, 0].to_numpy(float), both.iloc[:, 1].to_numpy(float), used


def _cell_name(cell: pd.DataFrame, dataset: str, side: tuple[str, int]) -> str:
    """The cell id of the runs (``gowalla-mf-mml-N10-paper``), or ``<dataset>-<loss>-N<n>`` without runs."""
    return cell_id(cell.iloc[0]) if len(cell) else f"{dataset}-{side[0]}-N{side[1]}"


def _seed_means(cell: pd.DataFrame, seeds: list, metric: str) -> pd.Series:
    """``metric`` of a cell per seed of ``seeds``, in their order (a seed's several runs averaged first)."""
    return cell.groupby("seed")[metric].mean().loc[seeds]


def _seed_level(a_runs: pd.DataFrame, b_runs: pd.DataFrame, seeds: list, metric: str) -> dict:
    """``stats.seed_paired`` over the common seeds (``_seed_means``), as ``seed_*`` keys."""
    x, y = (_seed_means(cell, seeds, metric).tolist() if seeds else [] for cell in (a_runs, b_runs))
    test = seed_paired(x, y)
    return {f"seed_{k}": test[k] for k in ("mean_diff", "ci_low", "ci_high")} | {"seed_p": test["p"]}


def wanted_runs(a_runs: pd.DataFrame, b_runs: pd.DataFrame, names: tuple[str, str], read: Callable) -> str:
    """The runs whose per-user files would test a against b (``gowalla-mf-mml-N800-paper-seed2``): at the smallest
    seed where one cell has a per-user file and the other no run yet, the other's run; else both cells' runs at the
    first seed neither has run. A finished run without a per-user file is never asked for again: its weights are
    gone, and a plan never reruns a finished run."""
    with_users = [{int(r["seed"]) for _, r in cell.iterrows() if read(r) is not None} for cell in (a_runs, b_runs)]
    ran = [{int(s) for s in cell["seed"]} for cell in (a_runs, b_runs)]
    half = sorted((with_users[0] - ran[1]) | (with_users[1] - ran[0]))
    if half:
        seed = half[0]
        return f"{names[1] if seed in with_users[0] else names[0]}-seed{seed}"
    seed = int(max([*a_runs["seed"], *b_runs["seed"], 0])) + 1
    return f"{names[0]}-seed{seed} {names[1]}-seed{seed}"


def _provenance(a_runs: pd.DataFrame, b_runs: pd.DataFrame, seeds: list, used: list, read: Callable) -> dict:
    """The runs a row rests on (both cells, common seeds), their files (per-user if tested, else per-epoch; ``-``
    for none) and the runs without a per-user file."""
    on = pd.concat([a_runs[a_runs["seed"].isin(seeds)], b_runs[b_runs["seed"].isin(seeds)]])
    column = USERS_COLUMN if used else "epochs_csv"
    files = on[column] if column in on else pd.Series([""] * len(on), dtype=object)
    missing = [rid for rid, (_, r) in zip(on["run_id"], on.iterrows(), strict=True) if read(r) is None]
    return {
        "runs": " ".join(on["run_id"]),
        "run_files": " ".join(f if isinstance(f, str) and f else "-" for f in files),
        "no_users_csv": " ".join(missing),
    }


def run_files(row) -> list[tuple[str, str | None]]:
    """The (run id, file) pairs an evidence row (a Series or an ``itertuples`` row) links to; ``None`` for a run
    without a file (``-`` in ``run_files``); none where the row lists no files (a claim not run yet)."""
    ids, files = (getattr(row, c, None) for c in ("runs", "run_files"))
    ids = ids.split() if isinstance(ids, str) else []
    files = files.split() if isinstance(files, str) else []
    return [(r, None if f == "-" else f) for r, f in zip(ids, files, strict=False)]


def compare(
    a_runs: pd.DataFrame,
    b_runs: pd.DataFrame,
    metric: str,
    means: tuple[float, float],
    read: Callable,
    names: tuple[str, str],
) -> dict:
    """The evidence of cell a against cell b (``names``) on ``metric`` (``means``: the cells' means over all their
    seeds): the seed-level paired test over the common seeds, and the per-user test (Wilcoxon, bootstrap) where both
    have per-user files; else the runs that would bring them (``wanted_runs``) and the point estimate, the cells'
    means over the common seeds (over all seeds where they share none)."""
    mean_a, mean_b = means
    seeds = sorted(set(a_runs["seed"]) & set(b_runs["seed"]))
    x, y, used = user_pairs(a_runs, b_runs, seeds, metric, read)
    row = {
        "n_users": len(x),
        "n_seeds": len(seeds),
        "user_seeds": " ".join(str(s) for s in used),
        "mean_a": mean_a,
        "mean_b": mean_b,
        **_seed_level(a_runs, b_runs, seeds, metric),
        **_provenance(a_runs, b_runs, seeds, used, read),
        "wanted": "" if used else wanted_runs(a_runs, b_runs, names, read),
    }
    if used:
        return {**row, **bootstrap_diff(x, y), "p_wilcoxon": wilcoxon_p(x, y), "evidence": PER_USER}
    if seeds:  # the point estimate on the runs it names: one cell's extra seed would move it by seed noise alone
        mean_a, mean_b = (_seed_means(cell, seeds, metric).mean() for cell in (a_runs, b_runs))
    diff = mean_a - mean_b
    point = {"mean_a": mean_a, "mean_b": mean_b, "mean_diff": diff, "evidence": POINT}
    return {**row, **point, "rel_diff_pct": 100 * diff / mean_b if mean_b else math.nan}


def claim_row(claim: Claim, curves: pd.DataFrame, runs: pd.DataFrame, read: Callable) -> dict:
    """One row of ``claims.csv`` before Holm and the verdict: the point estimate from ``curves``, the seed-level
    paired test over the common seeds, and the per-user test where both cells have per-user files (``compare``)."""
    means = (_mean(curves, claim, claim.a), _mean(curves, claim, claim.b))
    a_runs, b_runs = (_cell(runs[runs["seed"].notna()], claim.dataset, side) for side in (claim.a, claim.b))
    names = (_cell_name(a_runs, claim.dataset, claim.a), _cell_name(b_runs, claim.dataset, claim.b))
    return {
        "claim": claim.text,
        "dataset": claim.dataset,
        "metric": claim.metric,
        "a": names[0],
        "b": names[1],
        "expect": claim.expect,
        **compare(a_runs, b_runs, claim.metric, means, read, names),
    }


def verdict(row: Mapping, alpha: float = ALPHA) -> str:
    """Per-user evidence: a difference not significant after Holm (``p_holm >= alpha``) is NOT RESOLVED, otherwise
    HOLDS / DOES NOT HOLD by its sign against ``expect`` (``>``, ``≥``: a > b; ``<``: a < b). ``level``: HOLDS when
    the bootstrap interval of the relative change lies within ±LEVEL_PCT %, DOES NOT HOLD when the change is
    significant and its interval lies outside, else NOT RESOLVED. Point estimate only: the sign of a - b (``≥``:
    a >= b), or |relative change| <= LEVEL_PCT % for ``level``. A claim whose cells have not run yet: NOT RESOLVED."""
    if row["evidence"] == NOT_RUN:
        return OPEN
    expect, diff = row["expect"], row["mean_diff"]
    if row["evidence"] != PER_USER:
        holds = {">": diff > 0, "≥": diff >= 0, "<": diff < 0, "level": abs(row["rel_diff_pct"]) <= LEVEL_PCT}
        return HOLDS if holds[expect] else FAILS
    significant = row["p_holm"] < alpha
    if expect == "level":
        lo, hi = row["rel_ci_low"], row["rel_ci_high"]
        if -LEVEL_PCT <= lo and hi <= LEVEL_PCT:
            return HOLDS
        return FAILS if significant and (lo > LEVEL_PCT or hi < -LEVEL_PCT) else OPEN
    if not significant:
        return OPEN
    return HOLDS if (diff > 0 if expect in (">", "≥") else diff < 0) else FAILS


def level_off(rows: pd.DataFrame) -> dict | None:
    """The combined "all losses level off by 100" row of one (dataset, metric) from its per-loss, per-point rows
    (each loss from 100 to each larger number of negatives): DOES NOT HOLD if a tested row does not, HOLDS if every
    row is tested and holds, NOT RESOLVED if every row is tested otherwise; with a row untested (and no tested
    failure), the point-estimate rule on every row. None (pending: the claim is about all of them) while a loss of
    ``LEVEL_LOSSES`` has no point past 100 and no tested row fails."""
    tested = rows[rows["evidence"] == PER_USER]
    failed = (tested["verdict"] == FAILS).any()
    if not failed and not set(LEVEL_LOSSES) <= {c.split(LEVEL_PART)[0].lower() for c in rows["claim"]}:
        return None
    if failed or len(tested) == len(rows):
        evidence = PER_USER
        result = FAILS if failed else HOLDS if (rows["verdict"] == HOLDS).all() else OPEN
    else:
        evidence = POINT
        result = HOLDS if (rows["rel_diff_pct"].abs() <= LEVEL_PCT).all() else FAILS
    first = rows.iloc[0]
    return {
        "claim": LEVEL_CLAIM,
        "dataset": first["dataset"],
        "metric": first["metric"],
        "expect": "level",
        "n_users": int(rows["n_users"].min()),
        "n_seeds": int(rows["n_seeds"].min()),
        "evidence": evidence,
        "verdict": result,
        **_each_run_once(rows),
        "no_users_csv": _words_once(rows["no_users_csv"]),
        "wanted": _words_once(rows["wanted"]),
    }


def _words_once(column: pd.Series) -> str:
    """The words of a column's strings, each once, in order of first appearance."""
    return " ".join(dict.fromkeys(w for x in column if isinstance(x, str) for w in x.split()))


def _each_run_once(rows: pd.DataFrame) -> dict[str, str]:
    """``runs`` and ``run_files`` of rows that share runs (every point of a loss pairs with its 100-negative run),
    each run once with its first file, in order of first appearance."""
    files: dict[str, str] = {}
    for ids, paths in zip(rows["runs"], rows["run_files"], strict=True):
        for run, path in zip(str(ids).split(), str(paths).split(), strict=True):
            files.setdefault(run, path)
    return {"runs": " ".join(files), "run_files": " ".join(files.values())}


def cached_reader(base: Path | None = None, reader: Reader | None = None) -> Callable[[Mapping], pd.DataFrame | None]:
    """A run row -> its per-user file (``reader``, default ``export.read_per_user``, relative to ``base``), indexed
    by user; each run's file read once."""
    load = reader or read_per_user
    cache: dict[str, pd.DataFrame | None] = {}

    def read(row: Mapping) -> pd.DataFrame | None:
        key = str(row.get("run_id"))
        if key not in cache:
            frame = load(base or Path("."), row)
            cache[key] = frame.set_index("user") if frame is not None and "user" in frame else frame
        return cache[key]

    return read


def claim_rows(curves: pd.DataFrame, claims: pd.DataFrame, runs: pd.DataFrame | None, read: Callable) -> pd.DataFrame:
    """The rows of ``claims.csv`` before Holm and the verdicts (``claim_row`` of each ``claim_specs``)."""
    specs = claim_specs(curves, claims) if len(curves) else []
    if runs is None:
        runs = pd.DataFrame(columns=["dataset", "loss", "num_negatives", "seed", "run_id"])
    return pd.DataFrame([claim_row(c, curves, runs, read) for c in specs], columns=list(COLUMNS))


def judge(rows: pd.DataFrame, others: Sequence[float] = ()) -> pd.DataFrame:
    """Holm-adjust the per-user Wilcoxon p-values of ``rows`` in one family with ``others`` (the p-values of the
    report's other claim tests), decide each verdict, and after each (dataset, metric)'s per-loss level rows add
    their combined "all losses level off by 100" row (once ``level_off`` can decide it)."""
    rows = rows.copy()
    p = rows["p_wilcoxon"].to_numpy(float)
    rows["p_holm"] = holm(np.concatenate([p, np.asarray(others, dtype=float)]))[: len(p)]
    rows["verdict"] = [verdict(r) for _, r in rows.iterrows()]
    key = rows[["dataset", "metric"]].assign(level=rows["expect"] == "level")
    blocks = (key != key.shift()).any(axis=1).cumsum()  # consecutive rows of one (dataset, metric, level or not)
    out = []
    for _, group in rows.groupby(blocks, sort=False):
        out.append(group)
        if group["expect"].iloc[0] == "level" and (combined := level_off(group)) is not None:
            out.append(pd.DataFrame([combined], columns=list(COLUMNS)))
    return pd.concat(out, ignore_index=True) if out else rows


def claim_tests(
    curves: pd.DataFrame,
    claims: pd.DataFrame,
    runs: pd.DataFrame | None = None,
    base: Path | None = None,
    reader: Reader | None = None,
    others: Sequence[float] = (),
) -> pd.DataFrame:
    """``claims.csv``: one row per claim test (``claim_specs``), Holm-adjusted over every per-user Wilcoxon p-value
    in it and in ``others`` (the family: all claim tests of the report), with its verdict; after each (dataset,
    metric)'s per-loss level rows, their combined "all losses level off by 100" row. ``runs``: the Figure 3 runs
    (with ``seed``, ``run_id`` and ``users_csv`` relative to ``base``, read with ``reader``, default
    ``export.read_per_user``); without them every verdict is a point estimate."""
    return judge(claim_rows(curves, claims, runs, cached_reader(base, reader)), others)

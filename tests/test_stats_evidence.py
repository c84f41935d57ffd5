"""The evidence behind the claim verdicts, checked against values computed here independently: Holm on a hand
example, the Wilcoxon signed-rank p-value against the exact distribution enumerated here and against the normal
approximation with Pratt's zeros and tied ranks written out by hand, the bootstrap interval (covers a known shift,
deterministic, the same draws as scipy's), the seed-level t-test, and the verdicts on synthetic per-user files."""

import itertools
import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mmlexp.report import evidence
from mmlexp.report.runs import ReportError
from mmlexp.report.stats import bootstrap_diff, holm, mean_ci, negative_curves, seed_paired, wilcoxon_p
from mmlexp.report.status import claim_verdicts


def test_holm_on_a_hand_example():
    # sorted: 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, 1*0.04 = 0.02, 0.03, 0.06, 0.04 -> running max
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    # NaN: kept and not counted (m = 2); capped at 1
    out = holm([0.3, math.nan, 0.6])
    assert out[0] == pytest.approx(0.6) and math.isnan(out[1]) and out[2] == pytest.approx(0.6)
    assert holm([0.7, 0.9]).tolist() == [1.0, 1.0] and holm([]).size == 0


def _exact_two_sided(d: np.ndarray) -> float:
    """Every one of the 2^n sign assignments of the ranks of |d| (no ties, no zeros): two-sided p of W+."""
    ranks = np.argsort(np.argsort(np.abs(d))) + 1
    observed = ranks[d > 0].sum()
    sums = np.array([ranks[list(signs)].sum() for signs in itertools.product([False, True], repeat=len(d))])
    mean = ranks.sum() / 2
    return min(1.0, float(np.mean(np.abs(sums - mean) >= abs(observed - mean) - 1e-9)))


def test_wilcoxon_matches_the_exact_distribution():
    # ranks of |d|: 0.1->1 (negative), 0.2->2, 0.3->3, 0.5->4, 0.8->5, 0.9->6: W- = 1; P(W- <= 1) = 2/64, p = 4/64
    d = np.array([0.5, -0.1, 0.3, 0.8, 0.2, 0.9])
    assert wilcoxon_p(d, np.zeros(6)) == pytest.approx(4 / 64, rel=1e-12)
    rng = np.random.default_rng(7)
    for _ in range(3):
        d = rng.normal(0.3, 1.0, 10)
        assert wilcoxon_p(d, np.zeros(10)) == pytest.approx(_exact_two_sided(d), rel=1e-9)
    assert wilcoxon_p(np.ones(5), np.ones(5)) == 1.0 and math.isnan(wilcoxon_p([], []))


def test_wilcoxon_normal_approximation_with_pratt_zeros_and_ties_by_hand():
    d = np.array([0, 0, 0.1, -0.1, 0.2, 0.2, 0.2, -0.3, 0.4, 0.5, 0.6, -0.7, 0.8, 0.9, 1.0])  # 15 > 13: normal
    # ranks of |d| with ties averaged: zeros 1.5 1.5 (ranked, then dropped: Pratt); ±0.1 -> 3.5; 0.2 x3 -> 6
    ranks = np.array([3.5, 3.5, 6, 6, 6, 8, 9, 10, 11, 12, 13, 14, 15])
    positive = np.array([1, 0, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1], dtype=bool)
    w_plus = ranks[positive].sum()  # 93.5
    z = (w_plus - ranks.sum() / 2) / math.sqrt((ranks**2).sum() / 4)  # null: each rank + or - with prob 1/2
    assert w_plus == 93.5
    assert wilcoxon_p(d, np.zeros(len(d))) == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-12)


def test_bootstrap_covers_a_known_shift_and_is_deterministic():
    rng = np.random.default_rng(1)
    b = rng.uniform(0.05, 0.35, 2000)
    a = b + 0.02 + rng.normal(0, 0.05, 2000)  # true mean difference 0.02
    first = bootstrap_diff(a, b, n_resamples=2000)
    assert first == bootstrap_diff(a, b, n_resamples=2000)  # same seed, same numbers
    assert first["ci_low"] < 0.02 < first["ci_high"] and first["ci_low"] < first["mean_diff"] < first["ci_high"]
    assert first["mean_diff"] == pytest.approx(a.mean() - b.mean(), abs=1e-15)
    assert first["rel_ci_low"] < first["rel_diff_pct"] < first["rel_ci_high"]
    ref = stats.bootstrap(
        (a, b),
        lambda x, y, axis: x.mean(axis=axis) - y.mean(axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=2000,
        batch=250,
        method="percentile",
        rng=np.random.default_rng(0),
    )
    assert (first["ci_low"], first["ci_high"]) == pytest.approx(tuple(ref.confidence_interval), rel=1e-12)
    covered = 0
    for seed in range(20):  # 95% intervals of 20 fresh samples: nearly all cover the true shift
        r = np.random.default_rng(100 + seed)
        y = r.uniform(0.05, 0.35, 500)
        ci = bootstrap_diff(y + 0.02 + r.normal(0, 0.05, 500), y, n_resamples=1000)
        covered += ci["ci_low"] <= 0.02 <= ci["ci_high"]
    assert covered >= 17


def test_seed_paired_is_mean_ci_and_ttest_rel():
    x, y = [0.18, 0.181, 0.183], [0.177, 0.18, 0.179]
    out = seed_paired(x, y)
    ci = mean_ci([a - b for a, b in zip(x, y, strict=True)])
    assert out["mean_diff"] == pytest.approx(ci["mean"]) and out["ci_low"] == pytest.approx(ci["ci_low"])
    assert out["p"] == pytest.approx(stats.ttest_rel(x, y).pvalue, rel=1e-12)
    assert math.isnan(seed_paired([0.1], [0.2])["p"])


USERS = 1000


def _synthetic(folder, seeds=(1,), with_files=True) -> pd.DataFrame:
    """Per-user files and their runs: MML clearly above CCL at 10; at 800 MML clearly below CCL and equal to BSL
    up to symmetric noise; every loss the same at 100 and 800 up to symmetric noise."""
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        u = rng.uniform(0.05, 0.35, USERS)
        z = rng.normal(0, 0.01, USERS // 2)
        noise = np.concatenate([z, -z])  # mean exactly 0, symmetric

        step = 0.001 * (seed - 1)  # seeds differ a little (a seed-level t-test needs differences that vary)
        base = {("ccl", 10): u, ("mml", 10): u + 0.05 + step, ("ccl", 100): u + 0.10 + step, ("mml", 100): u + 0.08}
        base |= {
            ("ccl", 800): base[("ccl", 100)] + rng.permutation(noise),
            ("mml", 800): base[("mml", 100)] + rng.permutation(noise),
        }
        base |= {
            ("bsl", 100): base[("mml", 100)] + rng.permutation(noise),
            ("bsl", 800): base[("mml", 800)] + rng.permutation(noise) + step / 10,
        }
        for (loss, n), recall in base.items():
            stem = f"toy-mf-{loss}-N{n}-paper-seed{seed}"
            frame = pd.DataFrame({"user": np.arange(USERS), "recall@20": recall, "ndcg@20": 0.8 * recall})
            if with_files:
                (folder / "users").mkdir(exist_ok=True)
                frame.to_csv(folder / "users" / f"{stem}.csv.gz", index=False)
            rows.append(
                {
                    "run_id": f"{loss}{n}s{seed}".ljust(32, "0"),
                    "dataset": "toy",
                    "encoder": "mf",
                    "loss": loss,
                    "num_negatives": n,
                    "early_stop": "N",
                    "selection": "paper",
                    "seed": seed,
                    "epochs": 100,
                    "recall@20": recall.mean(),
                    "ndcg@20": (0.8 * recall).mean(),
                    "epochs_csv": f"epochs/{stem}.csv",
                    "users_csv": f"users/{stem}.csv.gz" if with_files else float("nan"),
                }
            )
    return pd.DataFrame(rows)


CLAIMS = pd.DataFrame(
    [
        {
            "dataset": "toy",
            "metric": m,
            "num_negatives": 10,
            "loss": "mml",
            "baseline": "ccl",
            "paper_relative_gain_pct": g,
        }
        for m, g in (("recall@20", 13.0), ("ndcg@20", 15.1))
    ]
)


def test_verdicts_on_synthetic_per_user_files(tmp_path):
    runs = _synthetic(tmp_path)
    tests = evidence.claim_tests(negative_curves(runs), CLAIMS, runs, tmp_path)
    rec = tests[tests["metric"] == "recall@20"].set_index("claim")
    assert rec.loc["MML beats CCL at 10 negatives (paper +13.0%)", "verdict"] == "HOLDS"
    assert rec.loc["MML ≥ CCL at 800 negatives", "verdict"] == "DOES NOT HOLD"
    assert rec.loc["MML < BSL at 800 negatives", "verdict"] == "NOT RESOLVED"
    assert (
        rec.loc[[f"{x} levels off from 100 to 800 negatives" for x in ("MML", "CCL", "BSL")], "verdict"] == "HOLDS"
    ).all()
    assert rec.loc["all losses level off by 100 negatives", "verdict"] == "HOLDS"
    # the family: 2 metrics x (1 + 2 + 3) tests, Holm over all of them
    family = tests[tests["p_wilcoxon"].notna()]
    assert len(family) == 12 and (family["evidence"] == "per-user").all()
    assert family["p_holm"].to_numpy() == pytest.approx(holm(family["p_wilcoxon"].to_numpy()))
    beats = rec.loc["MML beats CCL at 10 negatives (paper +13.0%)"]
    assert beats["n_users"] == USERS and beats["n_seeds"] == 1 and beats["mean_diff"] == pytest.approx(0.05)
    assert beats["ci_low"] < 0.05 < beats["ci_high"] and beats["p_holm"] < 1e-10
    assert beats["runs"] == f"{'mml10s1'.ljust(32, '0')} {'ccl10s1'.ljust(32, '0')}"
    assert beats["run_files"] == "users/toy-mf-mml-N10-paper-seed1.csv.gz users/toy-mf-ccl-N10-paper-seed1.csv.gz"
    md = "\n".join(claim_verdicts(tests))
    assert "toy recall@20: MML beats CCL at 10 negatives (paper +13.0%): **HOLDS**, ours +" in md
    assert f"per-user test over {USERS} test users, 1 seed (1): mean difference +0.05" in md and "Holm p = " in md
    assert "[mml10s10](users/toy-mf-mml-N10-paper-seed1.csv.gz)" in md and "its 12 tests" in md
    assert "MML < BSL at 800 negatives: **NOT RESOLVED**" in md
    # a tested "≥" / "<" line gives the per-user relative difference the README reads, beside the cells' means
    mml, ccl = (
        pd.read_csv(tmp_path / f"users/toy-mf-{x}-N800-paper-seed1.csv.gz")["recall@20"] for x in ("mml", "ccl")
    )
    rel = 100 * (mml - ccl).mean() / ccl.mean()
    at_800 = next(line for line in md.splitlines() if line.startswith("* toy recall@20: MML ≥ CCL at 800"))
    assert f"(each cell over its seeds {mml.mean():.4f} vs {ccl.mean():.4f}, difference " in at_800
    assert f"; per user, seed 1: {rel:+.1f}% [95% CI " in at_800
    assert rec.loc["MML ≥ CCL at 800 negatives", "rel_diff_pct"] == pytest.approx(rel)
    assert not [line for line in md.splitlines() if line.startswith("* ") and "NOT tested" in line]
    # a loss that keeps rising from 100 to 800 (+10%) does not level off
    up = runs.copy()
    up.loc[(up["loss"] == "ccl") & (up["num_negatives"] == 800), ["recall@20", "ndcg@20"]] *= 1.1
    for rel in up[(up["loss"] == "ccl") & (up["num_negatives"] == 800)]["users_csv"]:
        frame = pd.read_csv(tmp_path / rel)
        frame[["recall@20", "ndcg@20"]] *= 1.1
        frame.to_csv(tmp_path / rel, index=False)
    level = evidence.claim_tests(negative_curves(up), CLAIMS, up, tmp_path).set_index(["metric", "claim"])
    assert level.loc[("recall@20", "CCL levels off from 100 to 800 negatives"), "verdict"] == "DOES NOT HOLD"
    assert level.loc[("recall@20", "all losses level off by 100 negatives"), "verdict"] == "DOES NOT HOLD"


def _add_point(runs: pd.DataFrame, folder, loss: str, n: int, factor: float, seed: int = 1) -> pd.DataFrame:
    """A run of ``loss`` at ``n`` negatives whose per-user metrics are its 100-negative run's times ``factor``, with
    symmetric noise (mean exactly 0) added."""
    at100 = runs[(runs["loss"] == loss) & (runs["num_negatives"] == 100) & (runs["seed"] == seed)].iloc[0]
    frame = pd.read_csv(folder / at100["users_csv"])
    z = np.random.default_rng(n).normal(0, 0.01, USERS // 2)
    frame["recall@20"] = frame["recall@20"] * factor + np.concatenate([z, -z])
    frame["ndcg@20"] = 0.8 * frame["recall@20"]
    stem = f"toy-mf-{loss}-N{n}-paper-seed{seed}"
    frame.to_csv(folder / "users" / f"{stem}.csv.gz", index=False)
    row = at100.copy()
    row[["run_id", "num_negatives", "epochs_csv", "users_csv"]] = [
        f"{loss}{n}s{seed}".ljust(32, "0"), n, f"epochs/{stem}.csv", f"users/{stem}.csv.gz"]  # fmt: skip
    row[["recall@20", "ndcg@20"]] = [frame["recall@20"].mean(), frame["ndcg@20"].mean()]
    return pd.concat([runs, row.to_frame().T], ignore_index=True).astype({"num_negatives": int, "seed": int})


def test_level_off_is_read_point_by_point_along_the_curve(tmp_path):
    """Issue 27 item 3: with curve points between 100 and 800, each loss is tested from 100 to every one of them. A
    loss whose curve bulges +10% at 400 and comes back by 800 does not level off, though its two ends agree."""
    runs = _synthetic(tmp_path)
    for loss in evidence.LEVEL_LOSSES:
        runs = _add_point(runs, tmp_path, loss, 200, 1.0)
        runs = _add_point(runs, tmp_path, loss, 400, 1.1 if loss == "bsl" else 1.0)
    tests = evidence.claim_tests(negative_curves(runs), CLAIMS, runs, tmp_path)
    rec = tests[tests["metric"] == "recall@20"].set_index("claim")
    parts = [
        f"{loss.upper()} levels off from 100 to {n} negatives"
        for loss in ("mml", "ccl", "bsl")
        for n in (200, 400, 800)
    ]
    assert [c for c in rec.index if evidence.LEVEL_PART in c] == parts  # each loss, its points in order
    verdicts = rec.loc[parts, "verdict"]
    assert verdicts.loc["BSL levels off from 100 to 400 negatives"] == "DOES NOT HOLD"
    assert (verdicts.drop("BSL levels off from 100 to 400 negatives") == "HOLDS").all()
    assert rec.loc[evidence.LEVEL_CLAIM, "verdict"] == "DOES NOT HOLD"
    bsl400 = rec.loc["BSL levels off from 100 to 400 negatives"]
    assert bsl400["rel_diff_pct"] == pytest.approx(10.0, abs=0.5) and bsl400["rel_ci_low"] > evidence.LEVEL_PCT
    # every point tested is one more member of the Holm family: 2 metrics x (1 + 2 + 3 losses x 3 points)
    assert tests["p_wilcoxon"].notna().sum() == 2 * (1 + 2 + 9)
    md = "\n".join(claim_verdicts(tests))
    assert "all losses level off by 100 negatives (read here as: from 100 negatives on" in md
    assert "BSL 100→400 +10." in md and "MML 100→200 " in md and "CCL 100→800 " in md
    assert "% (beyond ±3%)" not in md  # tested points: their interval decides, not the point estimate
    # the combined row names each run once: every point of a loss pairs with the same 100-negative run
    combined = evidence.run_files(rec.loc[evidence.LEVEL_CLAIM])
    points = [evidence.run_files(rec.loc[c]) for c in parts]
    assert [r for r, _ in combined] == list(dict.fromkeys(r for pair in points for r, _ in pair))
    assert len(combined) == 3 * 4  # each loss: its runs at 100, 200, 400 and 800


def test_a_tested_point_beyond_the_band_is_marked_where_the_combined_verdict_reads_points(tmp_path):
    """With one loss untested, "all losses level off" reads every row's point estimate: a tested point at +3.3%
    whose own interval straddles the band (NOT RESOLVED) decides it, and says so like an untested one."""
    runs = _synthetic(tmp_path)
    runs.loc[runs["run_id"].str.startswith("ccl800s1"), "users_csv"] = ""  # CCL at 800: a point estimate
    at100 = pd.read_csv(tmp_path / "users" / "toy-mf-mml-N100-paper-seed1.csv.gz")
    z = np.random.default_rng(7).normal(0, 0.1, USERS // 2)  # wide, symmetric: the mean moves by exactly +3.3%
    at800 = at100.assign(**{"recall@20": at100["recall@20"] * 1.033 + np.concatenate([z, -z])})
    at800.to_csv(tmp_path / "users" / "toy-mf-mml-N800-paper-seed1.csv.gz", index=False)
    runs.loc[runs["run_id"].str.startswith("mml800s1"), "recall@20"] = at800["recall@20"].mean()
    tests = evidence.claim_tests(negative_curves(runs), CLAIMS, runs, tmp_path)
    rec = tests[tests["metric"] == "recall@20"].set_index("claim")
    mml = rec.loc["MML levels off from 100 to 800 negatives"]
    assert mml["evidence"] == evidence.PER_USER and mml["verdict"] == "NOT RESOLVED"
    assert mml["rel_ci_low"] < evidence.LEVEL_PCT < mml["rel_ci_high"] and mml["rel_diff_pct"] == pytest.approx(3.3)
    combined = rec.loc[evidence.LEVEL_CLAIM]
    assert (combined["evidence"], combined["verdict"]) == (evidence.POINT, "DOES NOT HOLD")
    line = next(x for x in claim_verdicts(tests) if "recall@20: all losses level off" in x)
    assert "MML 100→800 +3.3% (beyond ±3%) [95% CI " in line and ": NOT RESOLVED" in line
    assert re.search(r"CCL 100→800 [+-]\d\.\d%(?! \(beyond)", line) and "BSL 100→800 " in line


@pytest.mark.parametrize(
    ("change", "text"),
    [(3.04, "MML 100→800 +3.04% (beyond ±3%)"), (2.96, "MML 100→800 +2.96%"),
     (-3.01, "MML 100→800 -3.01% (beyond ±3%)"), (3.2, "MML 100→800 +3.2% (beyond ±3%)"),
     (2.9, "MML 100→800 +2.9%"), (0.04, "MML 100→800 +0.0%")],
)  # fmt: skip
def test_a_level_point_near_the_band_shows_the_digit_that_decides_it(change, text):
    """A point estimate whose one-decimal text would read 3.0% on either side of the band gets a second decimal, so
    "+3.0% (beyond ±3%)" never prints; where every point is tested (the combined verdict per user), none is marked."""
    claim = "MML levels off from 100 to 800 negatives"
    assert evidence.level_change(claim, change, evidence.POINT) == text
    assert "beyond" not in evidence.level_change(claim, change, evidence.PER_USER)


def test_all_losses_level_off_waits_for_every_loss(tmp_path):
    """With only MML past 100 negatives, "all losses level off" is pending (no combined row), though MML levels off;
    a loss that does not level off decides it at once."""
    runs = _synthetic(tmp_path)
    only_mml = runs[(runs["num_negatives"] != 800) | (runs["loss"] == "mml")]
    tests = evidence.claim_tests(negative_curves(only_mml), CLAIMS, only_mml, tmp_path)
    assert (tests.set_index("claim").loc["MML levels off from 100 to 800 negatives", "verdict"] == "HOLDS").all()
    assert evidence.LEVEL_CLAIM not in set(tests["claim"])
    assert evidence.LEVEL_CLAIM not in "\n".join(claim_verdicts(tests))
    rising = _add_point(only_mml, tmp_path, "ccl", 400, 1.1)
    tests = evidence.claim_tests(negative_curves(rising), CLAIMS, rising, tmp_path)
    assert (tests.set_index("claim").loc[evidence.LEVEL_CLAIM, "verdict"] == "DOES NOT HOLD").all()


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # a level row: equal seed differences
def test_seed_level_and_per_user_over_two_seeds(tmp_path):
    runs = _synthetic(tmp_path, seeds=(1, 2))
    # seed 2 of CCL at 10 has no per-user file: only seed 1 is paired per user for that claim
    runs.loc[(runs["loss"] == "ccl") & (runs["num_negatives"] == 10) & (runs["seed"] == 2), "users_csv"] = ""
    tests = evidence.claim_tests(negative_curves(runs), CLAIMS, runs, tmp_path)
    row = tests[(tests["metric"] == "recall@20") & (tests["expect"] == ">")].iloc[0]
    assert row["n_seeds"] == 2 and row["user_seeds"] == "1" and row["n_users"] == USERS
    cell = runs.set_index(["loss", "num_negatives", "seed"])["recall@20"]
    x, y = [cell[("mml", 10, s)] for s in (1, 2)], [cell[("ccl", 10, s)] for s in (1, 2)]
    assert row["seed_p"] == pytest.approx(stats.ttest_rel(x, y).pvalue, rel=1e-12)
    assert row["seed_mean_diff"] == pytest.approx(np.mean(np.subtract(x, y)), abs=1e-15)
    assert row["no_users_csv"] == "ccl10s2".ljust(32, "0")
    both = tests[(tests["metric"] == "recall@20") & (tests["claim"] == "MML ≥ CCL at 800 negatives")].iloc[0]
    assert both["user_seeds"] == "1 2"  # per user: averaged over both seeds, then paired
    assert both["mean_diff"] == pytest.approx(
        np.mean([cell[("mml", 800, s)] - cell[("ccl", 800, s)] for s in (1, 2)]), abs=1e-12
    )
    md = "\n".join(claim_verdicts(tests))
    assert "seed level (2 seeds): mean difference" in md and "2 seeds (1, 2): mean difference" in md


def test_without_per_user_files_the_verdict_is_a_point_estimate(tmp_path):
    runs = _synthetic(tmp_path, with_files=False)
    tests = evidence.claim_tests(negative_curves(runs), CLAIMS, runs, tmp_path)
    assert (tests["evidence"] == "point estimate").all() and tests["p_wilcoxon"].isna().all()
    rec = tests[tests["metric"] == "recall@20"].set_index("claim")
    assert rec.loc["MML < BSL at 800 negatives", "verdict"] in ("HOLDS", "DOES NOT HOLD")  # never NOT RESOLVED
    md = "\n".join(claim_verdicts(tests))
    assert "the family is empty and no verdict is tested" in md
    line = next(x for x in md.splitlines() if "MML beats CCL at 10 negatives (paper +13.0%)" in x)
    assert "**HOLDS**" in line and "no per-user evidence: point estimate only, NOT tested (1 seed: runs " in line
    assert "[mml10s10](epochs/toy-mf-mml-N10-paper-seed1.csv)" in line
    assert "per-user files of toy-mf-mml-N10-paper-seed2, toy-mf-ccl-N10-paper-seed2" in line
    assert "[ccl10s10](epochs/toy-mf-ccl-N10-paper-seed1.csv) have no per-user file;" in line  # neither has one


def test_a_point_estimate_compares_the_cells_on_the_seeds_both_ran(tmp_path):
    """Without per-user files, a verdict reads the cells' means over the seeds both ran (the runs it names): a seed
    that only one cell has would move it by seed noise alone. Here MML at 800 has a seed 2 that CCL lacks, far above
    CCL: over all of MML's seeds the claim "MML ≥ CCL at 800" would hold; on seed 1, the common seed, it does not."""
    runs = _synthetic(tmp_path, seeds=(1, 2), with_files=False)
    runs = runs[~((runs["loss"] == "ccl") & (runs["num_negatives"] == 800) & (runs["seed"] == 2))].copy()
    runs.loc[runs["run_id"].str.startswith("mml800s2"), "recall@20"] = 0.9
    cell = runs.set_index(["loss", "num_negatives", "seed"])["recall@20"].sort_index()
    assert (cell[("mml", 800, 1)] + 0.9) / 2 > cell[("ccl", 800, 1)] > cell[("mml", 800, 1)]  # the two readings differ
    tests = evidence.claim_tests(negative_curves(runs), CLAIMS, runs, tmp_path)
    row = tests[(tests["metric"] == "recall@20") & (tests["claim"] == "MML ≥ CCL at 800 negatives")].iloc[0]
    assert (row["evidence"], row["n_seeds"], row["verdict"]) == ("point estimate", 1, "DOES NOT HOLD")
    assert (row["mean_a"], row["mean_b"]) == (cell[("mml", 800, 1)], cell[("ccl", 800, 1)])
    assert row["rel_diff_pct"] == pytest.approx(100 * (cell[("mml", 800, 1)] / cell[("ccl", 800, 1)] - 1), rel=1e-12)
    level = tests[(tests["metric"] == "recall@20") & (tests["claim"] == "MML levels off from 100 to 800 negatives")]
    mml100 = cell.loc[("mml", 100)].mean()  # both seeds at 100 and at 800: the same means as the curve's
    assert level["mean_a"].iloc[0] == pytest.approx((cell[("mml", 800, 1)] + 0.9) / 2, rel=1e-15)
    assert level["mean_b"].iloc[0] == pytest.approx(mml100, rel=1e-15)
    line = next(x for x in claim_verdicts(tests) if "recall@20: MML ≥ CCL at 800 negatives" in x)
    assert f"({cell[('mml', 800, 1)]:.4f} vs {cell[('ccl', 800, 1)]:.4f}, " in line and "(1 seed: runs " in line


def test_a_point_estimate_names_the_run_without_a_per_user_file(tmp_path):
    runs = _synthetic(tmp_path)
    runs.loc[runs["run_id"].str.startswith("ccl10s1"), "users_csv"] = ""  # MML at 10 keeps its file
    tests = evidence.claim_tests(negative_curves(runs), CLAIMS, runs, tmp_path)
    md = "\n".join(claim_verdicts(tests))
    line = next(x for x in md.splitlines() if "recall@20: MML beats CCL at 10 negatives (paper +13.0%)" in x)
    assert "point estimate only, NOT tested (1 seed: runs [mml10s10](epochs/toy-mf-mml-N10-paper-seed1.csv)" in line
    assert ", of which ccl10s10 has no per-user file;" in line and "have no per-user file" not in line
    # CCL's seed-1 run is finished: it is never rerun, so the pair has to come from seed 2 of both
    assert "per-user files of toy-mf-mml-N10-paper-seed2, toy-mf-ccl-N10-paper-seed2)" in line


def test_the_evidence_asks_for_the_run_that_completes_a_pair(tmp_path):
    # seed 2 of MML at 100 has its per-user file, nothing at 800 has one: the pair needs MML at 800 on seed 2 only
    runs = _synthetic(tmp_path, seeds=(1, 2))
    runs.loc[~((runs["loss"] == "mml") & (runs["num_negatives"] == 100) & (runs["seed"] == 2)), "users_csv"] = ""
    runs = runs[~((runs["num_negatives"] == 800) & (runs["seed"] == 2))]
    tests = evidence.claim_tests(negative_curves(runs), CLAIMS, runs, tmp_path)
    rec = tests[tests["metric"] == "recall@20"].set_index("claim")
    assert (rec["evidence"] == "point estimate").all()
    assert rec.loc["MML levels off from 100 to 800 negatives", "wanted"] == "toy-mf-mml-N800-paper-seed2"
    assert rec.loc["CCL levels off from 100 to 800 negatives", "wanted"] == (
        "toy-mf-ccl-N800-paper-seed3 toy-mf-ccl-N100-paper-seed3"  # seed 2 of CCL at 100 has no file either
    )
    line = next(x for x in claim_verdicts(tests) if "recall@20: all losses level off" in x)
    assert "per-user files of toy-mf-mml-N800-paper-seed2, toy-mf-ccl-N800-paper-seed3, " in line


def test_a_named_per_user_file_that_is_missing_is_an_error(tmp_path):
    runs = _synthetic(tmp_path)
    (tmp_path / runs["users_csv"].iloc[0]).unlink()
    with pytest.raises(ReportError, match="no per-user file"):
        evidence.claim_tests(negative_curves(runs), CLAIMS, runs, tmp_path)


def test_a_verdict_says_where_its_two_tests_disagree(tmp_path):
    """The mean's bootstrap interval and the Wilcoxon test can disagree (Yelp2018, MML vs CCL at 800 negatives): the
    verdict line then says which says what, and that the verdict follows Wilcoxon; where they agree it says nothing."""
    runs = _synthetic(tmp_path)
    tests = evidence.claim_tests(negative_curves(runs), CLAIMS, runs, tmp_path)
    tested = tests[tests["evidence"] == evidence.PER_USER]
    agree = ((tested["ci_low"] > 0) | (tested["ci_high"] < 0)) == (tested["p_holm"] < evidence.ALPHA)
    assert agree.all() and "disagree" not in "\n".join(claim_verdicts(tests))
    at = tests.index[(tests["claim"] == "MML beats CCL at 10 negatives (paper +13.0%)")][0]

    def line(ci_low: float, ci_high: float, p_holm: float) -> str:
        changed = tests.copy()
        changed.loc[at, ["ci_low", "ci_high", "p_holm"]] = [ci_low, ci_high, p_holm]
        return next(x for x in claim_verdicts(changed) if "MML beats CCL at 10" in x and x.startswith("* "))

    assert "the mean's interval excludes 0 but the Wilcoxon test is not significant after Holm" in line(1e-3, 2e-3, 0.3)
    assert "the Wilcoxon test is significant after Holm but the mean's interval (uncorrected) includes 0" in line(
        -1e-4, 2e-3, 0.01
    )
    assert "the verdict follows Wilcoxon" in line(-2e-3, -1e-3, 0.5)
    assert "disagree" not in line(-2e-3, -1e-3, 0.01) + line(-1e-4, 2e-3, 0.2)

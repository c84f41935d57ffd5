"""The report's sections on the seed papers' other systems (``mmlexp.report.seed_systems``): the SSM paper's Table 2,
its claim (LightGCN + SSM > MF + SSM) and the MML paper's early-stopping claims, the long tail in 10 groups of equal
interactions, results/README.md. Real tiny runs on the embedded ``sample`` (the conftest store plus the runs of these
systems) render the sections with none, some and all of the cells run; every number is checked against values
computed here (MLflow, scipy's Wilcoxon on the per-user files, Holm written out, the paper CSVs)."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats

from mmlexp.report import evidence, overview, seed_systems, selection
from mmlexp.report.__main__ import main
from mmlexp.report.export import cell_id, write_gzip
from mmlexp.report.status import explanation_section, off_cells
from mmlexp.report.tables import paper_table
from tests.conftest import EXPERIMENT, REPO, SHARED_DATA

SYSTEMS = "seed-systems"
COMMON = ["dataset=sample", "trainer.progress=false", "tracking.save_checkpoint=false", "trainer.num_threads=1"]
SWEEPS = (  # the SSM cells (2 seeds), MF x {CCL, MML} with early stopping, SimpleX x {CCL, MML} x early stop N / Y
    ["+experiment=ssm_paper", "encoder=lightgcn,mf", "seed=1,2", "num_negatives=2047", "trainer.epochs=3",
     "trainer.patience=1", "encoder.dim=16"],
    ["loss=mml,ccl", "num_negatives=100", "seed=1", "trainer.epochs=3", "trainer.patience=1",
     "trainer.batch_size=8192"],
    ["encoder=simplex", "loss=mml,ccl", "num_negatives=100", "seed=1", "trainer.epochs=2", "trainer.patience=null,1",
     "trainer.batch_size=8192"],
)  # fmt: skip
ALPHA = 0.05


@pytest.fixture(scope="module")
def systems_store(store):
    """The conftest store (MF x {MML, CCL} x {10, 100} negatives, seeds 1-2, no early stop) with the runs of these
    systems added in the experiment SYSTEMS."""
    uri, tmp = store
    env = dict(os.environ, PYTHONUNBUFFERED="1", MMLEXP_CACHE_DIR=str(tmp / "cache"), MMLEXP_DATA_DIR=str(SHARED_DATA))
    for sweep in SWEEPS:
        cmd = [sys.executable, "-m", "mmlexp", "-m", *COMMON, *sweep, f"tracking.experiment={SYSTEMS}",
               f"tracking.uri={uri}", f"tracking.artifact_location={tmp}/artifacts"]  # fmt: skip
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]
    return uri


def build(uri: str, out: Path, name: str, *extra: str) -> Path:
    args = ["--tracking-uri", uri, "--experiment", EXPERIMENT, SYSTEMS, "--out", str(out), "--name", name]
    assert main([*args, "--export-csv", *extra]) == 0
    return out / name


@pytest.fixture(scope="module")
def full(systems_store, tmp_path_factory):
    return build(systems_store, tmp_path_factory.mktemp("systems"), "all")


def section(md: str, heading: str) -> str:
    return md.split(f"## {heading}")[1].split("\n## ")[0]


def holm_by_hand(p: list[float]) -> list[float]:
    """Holm (1979): the i-th smallest of m p-values times (m - i + 1), then the running maximum, capped at 1."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    out, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, (len(p) - rank) * p[i])
        out[i] = min(1.0, running)
    return out


def expected_verdict(row) -> str:
    if row["p_holm"] >= ALPHA:
        return evidence.OPEN
    better = row["mean_diff"] > 0
    return evidence.HOLDS if better == (row["expect"] in (">", "≥")) else evidence.FAILS


# ------------------------------------------------------------------------------------------ real runs on sample


def test_no_run_of_these_systems(systems_store, tmp_path):
    """Only MF at 10 negatives: the SSM cells pending, every claim NOT RESOLVED (not run yet), no long tail."""
    folder = build(systems_store, tmp_path, "none", "--filter", "params.num_negatives = '10'")
    md = (folder / "report.md").read_text()
    ssm = section(md, "SSM paper Table 2: LightGCN + SSM and MF + SSM")
    assert "0 of 8 cells have runs" in ssm  # 2 systems x (yelp2018, gowalla) x 2 metrics: the paper's
    assert (
        ssm.count("| pending |") == 3 * 4
        and "| LightGCN + SSM | Gowalla | pending | 0.1869 | — | pending | 0.1571 |" in ssm
    )
    claims = pd.read_csv(folder / "systems_claims.csv")
    assert len(claims) == 10 and (claims["verdict"] == "NOT RESOLVED").all()
    assert (claims["evidence"] == "not run yet").all() and claims["p_holm"].isna().all()
    text = section(md, "Claims of the SSM paper and of the MML paper's Table 2")
    assert text.count("**NOT RESOLVED** — not run yet") == 10
    assert "no finished run of sample-lightgcn-ssm-N2047-paper-es, sample-mf-ssm-N2047-paper-es" in text
    assert "no finished run of sample-mf-ccl-N100-paper-es, sample-mf-ccl-N100-paper)" in text
    assert "How a verdict is decided" in text  # no Figure 3 claim on sample: the method is written here
    assert (
        "has long-tail metrics" in section(md, "Long tail of these systems")
        and not (folder / "long_tail_deciles.csv").exists()
    )


def test_some_of_these_systems(systems_store, tmp_path):
    """SSM and MF run, SimpleX not: its claims stay NOT RESOLVED; the others are tested on the per-user files."""
    folder = build(systems_store, tmp_path, "some", "--encoder", "mf", "lightgcn")
    claims = pd.read_csv(folder / "systems_claims.csv").set_index(["claim", "metric"])
    simplex = claims[claims.index.get_level_values(0).str.contains("SimpleX")]
    assert len(simplex) == 4 and (simplex["evidence"] == "not run yet").all()
    tested = claims[~claims.index.get_level_values(0).str.contains("SimpleX")]
    assert len(tested) == 6 and (tested["evidence"] == "per-user").all()
    assert (tested["n_users"] > 0).all() and tested["verdict"].isin(["HOLDS", "DOES NOT HOLD", "NOT RESOLVED"]).all()
    ssm = section((folder / "report.md").read_text(), "SSM paper Table 2: LightGCN + SSM and MF + SSM")
    # the sample rows have runs (no paper number), yelp2018 and gowalla are pending (both metrics and the runs)
    assert "4 of 12 cells have runs" in ssm and ssm.count("| pending |") == 3 * 4


def test_all_of_these_systems_numbers_and_verdicts(systems_store, full):
    """Every claim tested on the per-user files: Wilcoxon p from scipy on the files averaged over the common seeds,
    Holm over the report's whole family (with the Figure 3 claims), the verdict from p_holm and the sign."""
    runs = pd.read_csv(full / "runs.csv")
    claims = pd.read_csv(full / "systems_claims.csv")
    figure3 = pd.read_csv(full / "claims.csv")
    assert len(claims) == 10 and (claims["evidence"] == "per-user").all()
    for row in claims.itertuples():
        sides = []
        for name in (row.a, row.b):
            cell = runs[[cell_id(r) == name for _, r in runs.iterrows()]]
            assert len(cell), name
            sides.append(cell)
        seeds = sorted(set(sides[0]["seed"]) & set(sides[1]["seed"]))
        assert row.n_seeds == len(seeds) and row.user_seeds == " ".join(str(s) for s in seeds)
        users = [
            pd.concat(
                [
                    pd.read_csv(full / f).set_index("user")[row.metric]
                    for f in cell[cell["seed"].isin(seeds)]["users_csv"]
                ],
                axis=1,
            ).mean(axis=1)
            for cell in sides
        ]
        x, y = (u.loc[users[0].index.intersection(users[1].index)] for u in users)
        d = (x - y).to_numpy()
        assert row.n_users == len(d) and row.mean_diff == pytest.approx(d.mean(), abs=1e-12)
        p = 1.0 if not d.any() else stats.wilcoxon(d, zero_method="pratt").pvalue
        assert row.p_wilcoxon == pytest.approx(p, rel=1e-9)
    family = pd.concat([figure3["p_wilcoxon"], claims["p_wilcoxon"]]).dropna().tolist()
    assert len(family) == len(claims) + figure3["p_wilcoxon"].notna().sum()
    assert claims["p_holm"].tolist() == pytest.approx(holm_by_hand(family)[-len(claims) :], rel=1e-12)
    assert list(claims["verdict"]) == [expected_verdict(r) for _, r in claims.iterrows()]
    # the SSM claim expects LightGCN above MF; the early-stopping ones early stop below none
    assert list(claims["expect"]) == [">"] * 2 + ["<"] * 8
    lines = section((full / "report.md").read_text(), "Claims of the SSM paper and of the MML paper's Table 2")
    for r in claims.itertuples():
        assert f"{r.dataset} {r.metric}: {r.claim}: **{r.verdict}**" in lines


def test_ssm_table_and_long_tail_are_the_tracked_numbers(systems_store, full):
    client = MlflowClient(systems_store)
    exp = client.get_experiment_by_name(SYSTEMS)
    tracked = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("sweep.role") != "parent"]
    ssm = [r for r in tracked if r.data.tags.get("choice.loss") == "ssm"]
    assert len(ssm) == 4
    table = pd.read_csv(full / "ssm_table2.csv")
    for encoder in ("lightgcn", "mf"):
        mine = [r for r in ssm if r.data.tags["choice.encoder"] == encoder]
        for metric, key in (("recall@20", "best/recall_at_20"), ("ndcg@20", "best/ndcg_at_20")):
            row = table[(table["encoder"] == encoder) & (table["dataset"] == "sample") & (table["metric"] == metric)]
            assert row["mean"].item() == pytest.approx(np.mean([r.data.metrics[key] for r in mine]), rel=1e-12)
            assert math.isnan(row["paper"].item())  # the paper has no sample
        paper = table[(table["encoder"] == encoder) & (table["dataset"] == "gowalla")]
        expect = {"lightgcn": (0.1869, 0.1571), "mf": (0.1231, 0.0878)}[encoder]
        assert paper.set_index("metric").loc[["recall@20", "ndcg@20"], "paper"].tolist() == list(expect)
    tail = pd.read_csv(full / "long_tail_deciles.csv")
    assert sorted(tail["groups"].unique()) == [5, 10]
    for encoder in ("lightgcn", "mf"):
        mine = [r for r in ssm if r.data.tags["choice.encoder"] == encoder]
        deciles = tail[(tail["encoder"] == encoder) & (tail["loss"] == "ssm") & (tail["groups"] == 10)]
        tracked_g = [np.mean([r.data.metrics[f"best/tail_recall_at_20_g{g}"] for r in mine]) for g in range(10)]
        assert deciles["mean"].tolist() == pytest.approx(tracked_g, rel=1e-12, abs=1e-15)
        recall = np.mean([r.data.metrics["best/recall_at_20"] for r in mine])
        assert deciles["mean"].sum() == pytest.approx(recall, rel=1e-9)  # the groups sum to Recall@20
        halves = tail[(tail["encoder"] == encoder) & (tail["loss"] == "ssm") & (tail["groups"] == 5)]
        assert halves["mean"].tolist() == pytest.approx([tracked_g[2 * g] + tracked_g[2 * g + 1] for g in range(5)])
    mf = tail[(tail["encoder"] == "mf") & (tail["loss"] == "ccl")]
    assert set(mf["groups"]) == {5} and set(mf["native_groups"].astype(str)) == {"5"}  # default: 5 groups only
    md = (full / "report.md").read_text()
    assert (
        "![Long tail, SSM paper grouping](long_tail_deciles.png)" in md and (full / "long_tail_deciles.svg").is_file()
    )


def test_rebuild_from_csv_gives_the_same_bytes(full, tmp_path):
    assert main(["--from-csv", str(full / "runs.csv"), "--out", str(tmp_path), "--name", "all"]) == 0
    for name in ("report.md", "ssm_table2.csv", "systems_claims.csv", "long_tail_deciles.csv", "claims.csv"):
        assert (tmp_path / "all" / name).read_bytes() == (full / name).read_bytes(), name


# ------------------------------------------------------------------------------------ synthetic per-user files


def _synthetic(tmp_path: Path) -> pd.DataFrame:
    """Runs of gowalla's cells with per-user files: LightGCN + SSM far above MF + SSM (2 seeds); MF + CCL with and
    without early stop differ by +-d alternately (p = 1); MF + MML with early stop above none; SimpleX + CCL both
    run without per-user files (a point estimate); SimpleX + MML only with early stop."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 400, 300) / 1024  # binary fractions: base +- 1/128 - base is exactly +-1/128
    users = np.arange(300)
    shift = {("lightgcn", "ssm", "Y"): 0.05, ("mf", "ccl", "Y"): 0.0, ("mf", "mml", "Y"): 0.02}
    plan = [("lightgcn", "ssm", 2047, "Y", s) for s in (1, 2)] + [("mf", "ssm", 2047, "Y", s) for s in (1, 2)]
    plan += [(e, loss, 100, stop, 1) for e, loss in seed_systems.ES_ROWS for stop in "YN"]
    plan.remove(("simplex", "mml", 100, "N", 1))
    rows = []
    for i, (encoder, loss, n, stop, seed) in enumerate(plan):
        values = base + shift.get((encoder, loss, stop), 0.0) + rng.normal(0, 0.01, 300) * (loss == "ssm")
        if (encoder, loss, stop) == ("mf", "ccl", "Y"):
            values = base + np.where(users % 2 == 0, 1, -1) / 128
        rel = f"users/{i}.csv.gz" if encoder != "simplex" else None
        if rel:
            frame = pd.DataFrame({"user": users, "recall@20": values, "ndcg@20": values / 2})
            write_gzip(tmp_path / rel, frame.to_csv(index=False).encode())
        mean = 0.15 - 0.01 * (stop == "Y") if encoder == "simplex" else float(values.mean())
        rows.append({"run_id": f"{i:032d}", "dataset": "gowalla", "encoder": encoder, "loss": loss,
                     "num_negatives": n, "early_stop": stop, "selection": "paper", "seed": seed, "users_csv": rel,
                     "recall@20": mean, "ndcg@20": mean / 2})  # fmt: skip
    return pd.DataFrame(rows)


def test_verdicts_follow_the_holm_adjusted_p_values(tmp_path):
    runs = _synthetic(tmp_path)
    rows = seed_systems.claim_rows(runs, evidence.cached_reader(tmp_path))
    figure3_p = [0.004, 0.3]  # two Figure 3 tests of the same report: one family
    tests = evidence.judge(rows, figure3_p)
    by = tests.set_index(["claim", "metric"])
    ssm = by.loc[("LightGCN + SSM beats MF + SSM (paper +51.8%)", "recall@20")]
    a = np.mean([pd.read_csv(tmp_path / f"users/{i}.csv.gz")["recall@20"] for i in (0, 1)], axis=0)
    b = np.mean([pd.read_csv(tmp_path / f"users/{i}.csv.gz")["recall@20"] for i in (2, 3)], axis=0)
    assert ssm["p_wilcoxon"] == pytest.approx(stats.wilcoxon(a - b, zero_method="pratt").pvalue, rel=1e-12)
    assert ssm["user_seeds"] == "1 2" and ssm["n_users"] == 300
    tested = tests["p_wilcoxon"].notna()
    assert tested.sum() == 6  # SSM, MF + CCL, MF + MML, each on both metrics
    assert tests.loc[tested, "p_holm"].tolist() == pytest.approx(
        holm_by_hand([*tests.loc[tested, "p_wilcoxon"], *figure3_p])[:6], rel=1e-12
    )
    assert [expected_verdict(r) for _, r in tests[tested].iterrows()] == list(tests.loc[tested, "verdict"])
    verdicts = {(c.split(" (")[0], m): v for (c, m), v in by["verdict"].items()}
    assert verdicts[("LightGCN + SSM beats MF + SSM", "ndcg@20")] == "HOLDS"
    assert verdicts[("early stopping costs MF + CCL accuracy", "recall@20")] == "NOT RESOLVED"  # +-d: p = 1
    assert by.loc[("early stopping costs MF + CCL accuracy (paper -8.5%)", "recall@20"), "p_wilcoxon"] == 1.0
    assert verdicts[("early stopping costs MF + MML accuracy", "recall@20")] == "DOES NOT HOLD"  # early stop above
    point = by.loc[("early stopping costs SimpleX + CCL accuracy (paper -2.5%)", "recall@20")]
    assert point["evidence"] == "point estimate" and point["verdict"] == "HOLDS"  # 0.14 < 0.15, not tested
    missing = by.loc[("early stopping costs SimpleX + MML accuracy (paper -3.8%)", "ndcg@20")]
    assert missing["verdict"] == "NOT RESOLVED" and missing["missing"] == "gowalla-simplex-mml-N100-paper"
    text = "\n".join(seed_systems.claims_section(tests, []))
    assert "gowalla ndcg@20: early stopping costs SimpleX + MML accuracy (paper -3.8%): **NOT RESOLVED** — not run " \
        "yet (no finished run of gowalla-simplex-mml-N100-paper)" in text  # fmt: skip
    assert "no per-user evidence: point estimate only, NOT tested" in text
    # results/README.md reads the verdicts back from systems_claims.csv
    (tmp_path / "results" / "gowalla").mkdir(parents=True)
    tests.to_csv(tmp_path / "results" / "gowalla" / seed_systems.CLAIMS_CSV, index=False)
    listed = {(r[0], r[1]): r for r in overview.systems_rows(tmp_path / "results", "gowalla")}
    assert len(listed) == 10
    assert listed[("early stopping costs MF + MML accuracy (paper -3.3%)", "recall@20")][2] == "**DOES NOT HOLD**"
    assert listed[("early stopping costs SimpleX + MML accuracy (paper -3.6%)", "recall@20")][2:5] == [
        "**NOT RESOLVED**", "—", "not run yet"]  # fmt: skip
    yelp = overview.systems_rows(tmp_path / "results", "yelp2018")  # no results: every claim not run yet
    assert len(yelp) == 10 and {r[2] for r in yelp} == {"**NOT RESOLVED**"} and yelp[0][0].endswith("(paper +44.8%)")


def test_ssm_cells_far_from_the_paper_are_flagged(tmp_path):
    cells = pd.DataFrame(
        [
            {"dataset": "gowalla", "encoder": enc, "loss": "ssm", "num_negatives": 2047, "early_stop": "Y",
             "selection": "paper", "metric": m, "n": 1, "mean": v, "std": math.nan, "ci_low": math.nan,
             "ci_high": math.nan, "ci_half": math.nan, "seeds": "1", "run_ids": f"{enc:a<32}", "epochs": "1000"}
            for enc, m, v in (("lightgcn", "recall@20", 0.1869 * 0.96), ("lightgcn", "ndcg@20", 0.1571 * 1.01),
                              ("mf", "recall@20", 0.1231 * 1.02), ("mf", "ndcg@20", 0.0878 * 0.99))
        ]
    )  # fmt: skip
    table = paper_table(seed_systems.SSM_TABLE, cells, ["paper"])
    off = off_cells({seed_systems.SSM_TABLE: table})
    assert off["cell"].tolist() == ["gowalla-lightgcn-ssm-N2047-paper-es"] and off["metric"].tolist() == ["recall@20"]
    runs = pd.DataFrame({"run_id": ["lightgcna" + "a" * 23, "mfaaaaaaa" + "a" * 23], "best_epoch": [120, 40]})
    rows = {(r[0], r[1]): r for r in seed_systems.ssm_rows(table, runs)}
    light = rows[("LightGCN + SSM", "Gowalla")]
    assert light[2:8] == ["0.1794", "0.1869", f"{100 * (0.96 - 1):+.1f} ⚠", "0.1587", "0.1571", "+1.0"]
    assert light[8] == "120" and rows[("MF + SSM", "Yelp2018")][2] == "pending"
    (tmp_path / "explanations.md").write_text("## other\n\nx\n")
    md = "\n".join(explanation_section({seed_systems.SSM_TABLE: table}, tmp_path))
    assert "**1 NEED AN EXPLANATION**: gowalla-lightgcn-ssm-N2047-paper-es" in md


def test_early_stopping_replayed_on_a_full_run_keeps_the_best_epoch_before_it_stops(tmp_path):
    # MF + CCL seed 1: recall rises, then 3 epochs at or under 0.30 (epochs 4-6) stop it after epoch 6, keeping
    # epoch 3; the full run kept epoch 8 (0.40). MF + MML never stops within its curve: it keeps its own best.
    recall = {"c": [0.10, 0.20, 0.30, 0.30, 0.25, 0.29, 0.35, 0.40], "m": [0.1, 0.2, 0.3]}
    runs = pd.DataFrame([
        {"run_id": "c", "dataset": "gowalla", "encoder": "mf", "loss": "ccl", "num_negatives": 100, "early_stop": "N",
         "selection": "paper", "seed": 1, "best_epoch": 8},
        {"run_id": "m", "dataset": "gowalla", "encoder": "mf", "loss": "mml", "num_negatives": 100, "early_stop": "N",
         "selection": "paper", "seed": 2, "best_epoch": 3},
        {"run_id": "x", "dataset": "gowalla", "encoder": "mf", "loss": "ccl", "num_negatives": 100, "early_stop": "Y",
         "selection": "paper", "seed": 1, "best_epoch": 2},  # an early-stopping run is not replayed
    ])  # fmt: skip
    history = pd.concat(
        [
            pd.DataFrame({"run_id": r, "epoch": range(1, len(v) + 1), "recall@20": v, "ndcg@20": [x / 2 for x in v]})
            for r, v in {**recall, "x": [0.1, 0.2]}.items()
        ]  # fmt: skip
    )
    replays = seed_systems.early_stop_replays(runs, history).set_index(["run_id", "metric"])
    assert set(replays.index.get_level_values(0)) == {"c", "m"}
    c = replays.loc[("c", "recall@20")]
    assert (c["stop_epoch"], c["kept_epoch"], c["full_epoch"]) == (6, 3, 8)
    assert (c["replayed"], c["full"]) == (0.30, 0.40) and c["diff_pct"] == pytest.approx(-25.0)
    assert replays.loc[("c", "ndcg@20"), "replayed"] == 0.15
    m = replays.loc[("m", "recall@20")]
    assert (m["stop_epoch"], m["kept_epoch"], m["diff_pct"]) == (3, 3, 0.0)
    md = seed_systems.replay_section(runs, history, tmp_path)
    assert "* gowalla MF + CCL, seed 1 (c): stops after epoch 6 and keeps epoch 3, where the full run kept epoch 8: " \
        "Recall@20 0.3000 against 0.4000 (-25.0%), NDCG@20 0.1500 against 0.2000 (-25.0%)." in md  # fmt: skip
    assert pd.read_csv(tmp_path / seed_systems.REPLAY_CSV)["run_id"].tolist() == ["c", "c", "m", "m"]


def test_early_stopping_is_replayed_on_the_metric_the_run_monitored(tmp_path):
    # SimpleX_gowalla_m1 monitors NDCG@20: its NDCG peaks at epoch 3 and falls for 3 epochs (stop after 6, keep 3),
    # while its Recall@20 still rises (a Recall@20 replay would never stop and keep epoch 6).
    runs = pd.DataFrame([
        {"run_id": "s", "dataset": "gowalla", "encoder": "simplex", "loss": "ccl", "num_negatives": 100,
         "early_stop": "N", "selection": "paper", "seed": 1, "best_epoch": 3,
         "overrides": "encoder=simplex loss=ccl trainer.monitor=ndcg@20 eval.longtail.groups=10"},
        {"run_id": "m", "dataset": "gowalla", "encoder": "mf", "loss": "ccl", "num_negatives": 100,
         "early_stop": "N", "selection": "paper", "seed": 1, "best_epoch": 6, "overrides": "loss=ccl"},
    ])  # fmt: skip
    recall, ndcg = [0.10, 0.20, 0.30, 0.31, 0.32, 0.33], [0.10, 0.20, 0.30, 0.29, 0.28, 0.27]
    history = pd.concat(
        pd.DataFrame({"run_id": r, "epoch": range(1, 7), "recall@20": recall, "ndcg@20": ndcg}) for r in ("s", "m")
    )
    assert [selection.run_monitor(r) for r in runs.itertuples()] == ["ndcg@20", "recall@20"]
    replays = seed_systems.early_stop_replays(runs, history).set_index(["run_id", "metric"])
    s, m = replays.loc[("s", "ndcg@20")], replays.loc[("m", "recall@20")]
    assert (s["monitor"], s["stop_epoch"], s["kept_epoch"], s["diff_pct"]) == ("ndcg@20", 6, 3, 0.0)
    assert (m["monitor"], m["stop_epoch"], m["kept_epoch"], m["diff_pct"]) == ("recall@20", 6, 6, 0.0)
    md = "\n".join(seed_systems.replay_section(runs, history, tmp_path))
    assert "seed 1 (s): stops after epoch 6 (on NDCG@20) and keeps epoch 3, where the full run kept epoch 3" in md
    assert "seed 1 (m): stops after epoch 6 and keeps epoch 6" in md


# ------------------------------------------------------------------------------------------- committed results

COMMITTED = sorted(p.parent for p in (REPO / "results").glob("*/runs.csv"))


@pytest.mark.parametrize("folder", COMMITTED, ids=[f.name for f in COMMITTED])
def test_committed_sections_are_what_the_committed_csvs_give(tmp_path, folder):
    assert main(["--from-csv", str(folder / "runs.csv"), "--out", str(tmp_path), "--name", folder.name]) == 0
    for name in ("ssm_table2.csv", "systems_claims.csv", seed_systems.REPLAY_CSV):
        assert (tmp_path / folder.name / name).read_bytes() == (folder / name).read_bytes(), name
    tail = folder / "long_tail_deciles.csv"
    assert (tmp_path / folder.name / tail.name).is_file() == tail.is_file()
    if tail.is_file():
        assert (tmp_path / folder.name / tail.name).read_bytes() == tail.read_bytes()


def test_overview_names_a_run_without_a_file_by_its_id():
    row = pd.Series({"runs": "aaaaaaaa11 bbbbbbbb22", "run_files": "users/x-seed2.csv.gz -"})
    assert overview._links(row, "gowalla") == "[x-seed2](gowalla/users/x-seed2.csv.gz), bbbbbbbb (no file)"
    assert overview._links(pd.Series({"runs": None, "run_files": None}), "gowalla") == "—"

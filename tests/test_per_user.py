"""Per-user Recall@K / NDCG@K (issue 27): equal to a plain-Python ranking on small examples, averaging to
``evaluate_embeddings``; saved by a finished run as ``per_user.csv.gz`` (file and MLflow artifact); rebuilt by the
backfill command from ``best.pt``; exported beside the per-epoch CSVs by ``--export-csv``."""

import gzip
import math
import subprocess
import sys
from importlib import resources

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from mlflow.tracking import MlflowClient

from mmlexp.data import load_dataset
from mmlexp.evaluation import evaluate_embeddings
from mmlexp.evaluation.per_user import PER_USER_FILE, per_user_metrics, write_per_user
from mmlexp.report import fetch_runs
from mmlexp.report.export import export_runs, read_per_user, read_runs, stage
from mmlexp.report.per_user_backfill import main as backfill
from mmlexp.report.runs import ReportError
from mmlexp.run import load_checkpoint, train
from tests.conftest import EXPERIMENT

TINY = ("trainer.epochs=2", "trainer.batch_size=8192", "num_negatives=10")


def loop_metrics(scores: np.ndarray, train: set, test: set, k: int) -> tuple[float, float]:
    """Recall@k and NDCG@k of one user by the definitions, in plain Python (train items not in test masked)."""
    ranked = sorted((i for i in range(len(scores)) if i not in train - test), key=lambda i: -scores[i])[:k]
    hits = [i in test for i in ranked]
    dcg = sum(1 / math.log2(r + 2) for r, hit in enumerate(hits) if hit)
    idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(test))))
    return sum(hits) / len(test), dcg / idcg


def test_hand_example():
    # scores = item value for every user (1-D embeddings): ranking 5 > 4 > 3 > 2 > 1 > 0
    user_emb = torch.ones(3, 1, dtype=torch.float64)
    item_emb = torch.arange(6, dtype=torch.float64)[:, None]
    train = sp.csr_matrix(np.array([[0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0, 0]]))
    test = sp.csr_matrix(np.array([[0, 0, 0, 1, 0, 0], [0, 0, 1, 0, 1, 0], [0, 0, 0, 0, 0, 0]]))
    got = per_user_metrics(user_emb, item_emb, train, test, ks=(2,))
    # user 0: item 5 masked, top-2 = 4, 3: hit at rank 2 -> recall 1, ndcg (1/log2 3) / 1
    # user 1: item 4 is in train and test (kept), top-2 = 5, 4: hit at rank 2 of 2 test items
    #         -> recall 1/2, ndcg (1/log2 3) / (1 + 1/log2 3); user 2 has no test item: no row
    assert list(got.columns) == ["user", "recall@2", "ndcg@2"] and list(got["user"]) == [0, 1]
    assert list(got["recall@2"]) == [1.0, 0.5]
    assert got["ndcg@2"].tolist() == pytest.approx([1 / math.log2(3), (1 / math.log2(3)) / (1 + 1 / math.log2(3))])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_matrices_equal_the_plain_python_loop(seed):
    rng = np.random.default_rng(seed)
    n_users, n_items = 25, 40
    train = sp.csr_matrix((rng.random((n_users, n_items)) < 0.15).astype(np.float32))
    test = sp.csr_matrix((rng.random((n_users, n_items)) < 0.1).astype(np.float32))
    user_emb = torch.from_numpy(rng.normal(size=(n_users, 8)))
    item_emb = torch.from_numpy(rng.normal(size=(n_items, 8)))
    got = per_user_metrics(user_emb, item_emb, train, test, ks=(5, 20)).set_index("user")
    scores = (user_emb @ item_emb.T).numpy()
    dense_train, dense_test = train.toarray() > 0, test.toarray() > 0
    users = [u for u in range(n_users) if dense_test[u].any()]
    assert list(got.index) == users
    for u in users:
        tr, te = set(np.flatnonzero(dense_train[u])), set(np.flatnonzero(dense_test[u]))
        for k in (5, 20):
            recall, ndcg = loop_metrics(scores[u], tr, te, k)
            assert got.loc[u, f"recall@{k}"] == pytest.approx(recall, abs=1e-15)
            assert got.loc[u, f"ndcg@{k}"] == pytest.approx(ndcg, rel=1e-12)


def test_mean_over_users_is_the_aggregate_metric_on_the_sample():
    data = load_dataset("sample")
    gen = torch.Generator().manual_seed(0)
    user_emb, item_emb = torch.randn(data.n_users, 16, generator=gen), torch.randn(data.n_items, 16, generator=gen)
    aggregate = evaluate_embeddings(user_emb, item_emb, data.train, data.test, ks=(20, 50))
    got = per_user_metrics(user_emb, item_emb, data.train, data.test, ks=(20, 50))
    assert len(got) == int((data.test.getnnz(axis=1) > 0).sum()) and got["user"].is_monotonic_increasing
    assert list(got.columns) == ["user", "recall@20", "ndcg@20", "recall@50", "ndcg@50"]
    for col in got.columns[1:]:
        assert float(torch.tensor(got[col].to_numpy()).mean()) == aggregate[col], col  # the same numbers averaged
        assert got[col].mean() == pytest.approx(aggregate[col], rel=1e-12)


def test_file_is_exact_and_byte_deterministic(tmp_path):
    frame = pd.DataFrame({"user": [0, 3, 7], "recall@20": [1 / 3, 0.0, 0.1 + 0.2], "ndcg@20": [0.5, 1e-17, 2 / 7]})
    a = write_per_user(frame, tmp_path / "a.csv.gz").read_bytes()
    b = write_per_user(frame, tmp_path / "b.csv.gz").read_bytes()
    assert a == b and a[4:8] == b"\0\0\0\0"  # gzip header: no time, no name
    back = pd.read_csv(tmp_path / "a.csv.gz")
    assert back.equals(frame) and gzip.decompress(a).decode().startswith("user,recall@20,ndcg@20\n0,")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _tracked_run(make_cfg, tmp_path, monkeypatch, *overrides):
    """Train a tiny run in ``tmp_path`` (run directory under outputs/); returns (client, run, run directory)."""
    monkeypatch.chdir(tmp_path)
    train(make_cfg(*TINY, *overrides))
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("mmlexp").experiment_id])
    (run_dir,) = {p.parent for p in (tmp_path / "outputs").rglob("best.pt")}
    return client, run, run_dir


@pytest.mark.parametrize("selection", ["paper", "valid"])
def test_a_finished_run_saves_its_per_user_metrics(make_cfg, tmp_path, monkeypatch, selection):
    client, run, run_dir = _tracked_run(make_cfg, tmp_path, monkeypatch, f"eval.selection={selection}")
    assert run.info.status == "FINISHED" and "per_user.error" not in run.data.tags
    assert PER_USER_FILE in {a.path for a in client.list_artifacts(run.info.run_id)}
    stored = client.download_artifacts(run.info.run_id, PER_USER_FILE, str(tmp_path))
    frame = pd.read_csv(stored)
    assert (tmp_path / PER_USER_FILE).read_bytes() == (run_dir / PER_USER_FILE).read_bytes()
    assert list(frame.columns) == ["user", "recall@20", "ndcg@20"]  # K = 20 only: the claims' K
    for col in frame.columns[1:]:  # the test metrics at the selected epoch (under valid: chosen on the slice)
        assert frame[col].mean() == pytest.approx(run.data.metrics[f"best/{col.replace('@', '_at_')}"], rel=1e-12)
    ckpt = load_checkpoint(run_dir / "best.pt")
    assert frame["recall@20"].mean() == pytest.approx(ckpt["metrics"]["recall@20"], rel=1e-12)


def test_backfill_rebuilds_and_logs_the_file_of_an_older_run(make_cfg, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("mmlexp.run.save_run_per_user", lambda *args: None)  # a run from before the file existed
    client, run, run_dir = _tracked_run(make_cfg, tmp_path, monkeypatch, "eval.selection=valid")
    assert not (run_dir / PER_USER_FILE).exists()
    assert PER_USER_FILE not in {a.path for a in client.list_artifacts(run.info.run_id)}
    uri, run_id = f"sqlite:///{tmp_path}/mlflow.db", run.info.run_id
    args = ["--checkpoint", str(run_dir / "best.pt"), "--tracking-uri", uri, "--run-id", run_id]
    assert backfill(args) == 0 and "logged to run" in capsys.readouterr().out
    frame = pd.read_csv(run_dir / PER_USER_FILE)
    assert frame["recall@20"].mean() == pytest.approx(run.data.metrics["best/recall_at_20"], rel=1e-12)
    assert frame["ndcg@20"].mean() == pytest.approx(run.data.metrics["best/ndcg_at_20"], rel=1e-12)
    stored = client.download_artifacts(run_id, PER_USER_FILE, str(tmp_path))
    assert open(stored, "rb").read() == (run_dir / PER_USER_FILE).read_bytes()  # noqa: SIM115
    assert backfill(["--checkpoint", str(run_dir / "best.pt"), "--out", str(tmp_path / "again.csv.gz")]) == 0
    assert (tmp_path / "again.csv.gz").read_bytes() == (run_dir / PER_USER_FILE).read_bytes()


def _other_dataset(folder, swap: bool, drop_users: int = 0) -> None:
    """A custom dataset from the sample's files: train and test swapped, or the last users left out."""
    sample = resources.files("mmlexp") / "resources" / "sample"
    train, test = ((sample / f).read_text().splitlines() for f in ("train.txt", "test.txt"))
    if swap:
        train, test = test, train
    folder.mkdir()
    for name, lines in (("train.txt", train), ("test.txt", test)):
        (folder / name).write_text("\n".join(lines[: len(lines) - drop_users]) + "\n")


def test_backfill_bad_input_is_a_clear_error(make_cfg, tmp_path, monkeypatch, capsys):
    client, run, run_dir = _tracked_run(make_cfg, tmp_path, monkeypatch)
    best = run_dir / "best.pt"
    assert backfill(["--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert f"--checkpoint {tmp_path / 'none.pt'}: no such file" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert backfill(["--checkpoint", str(tmp_path / "junk.pt")]) == 2
    assert "junk.pt: cannot be read" in capsys.readouterr().err
    assert backfill(["--checkpoint", str(best), "--run-id", run.info.run_id]) == 2
    assert "--tracking-uri and --run-id go together" in capsys.readouterr().err
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert backfill(["--checkpoint", str(best), "--tracking-uri", uri, "--run-id", "f" * 32]) == 2
    assert f"--run-id {'f' * 32}: no such run" in capsys.readouterr().err
    none = f"sqlite:///{tmp_path}/none.db"
    assert backfill(["--checkpoint", str(best), "--tracking-uri", none, "--run-id", run.info.run_id]) == 2
    assert "no MLflow store" in capsys.readouterr().err and not (tmp_path / "none.db").exists()
    ckpt = load_checkpoint(best)
    ckpt["metrics"]["ndcg@20"] += 0.01  # another run's checkpoint
    torch.save(ckpt, tmp_path / "other.pt")
    assert (
        backfill(["--checkpoint", str(tmp_path / "other.pt"), "--tracking-uri", uri, "--run-id", run.info.run_id]) == 2
    )
    assert "best/ndcg_at_20" in capsys.readouterr().err and not (tmp_path / PER_USER_FILE).exists()
    for name, swap, drop, expect in (
        ("swapped", True, 0, "not the data or weights of the run"),
        ("fewer", False, 10, "do not fit dataset 'custom'"),
    ):
        _other_dataset(tmp_path / name, swap, drop)
        ckpt = load_checkpoint(best)
        ckpt["config"] = (
            ckpt["config"].replace("name: sample", "name: custom").replace("path: null", f"path: {tmp_path / name}")
        )
        torch.save(ckpt, tmp_path / f"{name}.pt")
        assert backfill(["--checkpoint", str(tmp_path / f"{name}.pt"), "--out", str(tmp_path / "x.csv.gz")]) == 2
        err = capsys.readouterr().err
        assert expect in err and "error:" in err, err
    assert not (tmp_path / "x.csv.gz").exists()
    assert PER_USER_FILE in {a.path for a in client.list_artifacts(run.info.run_id)}  # left as training wrote it


def test_export_copies_each_runs_file_beside_its_epochs(store, tmp_path):
    uri, _ = store
    runs = fetch_runs(uri, [EXPERIMENT])
    for name in ("a", "b"):  # exported twice: the same bytes
        (tmp_path / name).mkdir()
        export_runs(runs, uri, tmp_path / name)
    folder = tmp_path / "a"
    exported = pd.read_csv(folder / "runs.csv")
    expect = exported["epochs_csv"].str.replace(r"^epochs/(.*)\.csv$", r"users/\1.csv.gz", regex=True)
    assert len(exported) == 8 and (exported["users_csv"] == expect).all()
    for _, row in exported.iterrows():
        users = read_per_user(folder, row)
        assert users is not None and list(users.columns[:3]) == ["user", "recall@20", "ndcg@20"]
        assert users["recall@20"].mean() == pytest.approx(row["recall@20"], rel=1e-12)
        assert users["ndcg@20"].mean() == pytest.approx(row["ndcg@20"], rel=1e-12)
        assert (tmp_path / "b" / row["users_csv"]).read_bytes() == (folder / row["users_csv"]).read_bytes()
    (tmp_path / "c").mkdir()  # --from-csv copies them
    stage(read_runs(folder / "runs.csv"), None, folder, tmp_path / "c")
    assert sorted((tmp_path / "c" / "users").iterdir()) == sorted(
        tmp_path / "c" / "users" / p.name for p in (folder / "users").iterdir()
    )
    # a metric another dataset's runs logged (an empty column in this frame) is left out of runs.csv
    (tmp_path / "d").mkdir()
    export_runs(runs.assign(**{"tail_recall@20_g9": float("nan")}), uri, tmp_path / "d")
    assert list(pd.read_csv(tmp_path / "d" / "runs.csv").columns) == list(exported.columns)
    row = exported.iloc[0].copy()
    row["users_csv"] = float("nan")  # an empty cell: the run has no per-user file
    assert read_per_user(folder, row) is None and read_per_user(folder, row.drop("users_csv")) is None
    row["users_csv"] = "users/none.csv.gz"
    with pytest.raises(ReportError, match="no per-user file"):
        read_per_user(folder, row)


def test_backfill_module_runs_as_a_command(tmp_path):
    cmd = [sys.executable, "-m", "mmlexp.report.per_user_backfill", "--checkpoint", str(tmp_path / "best.pt")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "best.pt: no such file" in proc.stderr and "Traceback" not in proc.stderr

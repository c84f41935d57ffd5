"""dataset=interactions: CSV / TSV / Parquet / RecBole .inter files, filters, splits, cache, errors, the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mmlexp.data.interactions as mint
from mmlexp.data import DataError, load_dataset

INTER = """user_id:token\titem_id:token\trating:float\ttimestamp:float
1\t10\t5\t100
1\t11\t4\t200
1\t12\t2\t300
2\t10\t5\t50
2\t13\t5\t60
3\t11\t5\t10
1\t10\t5\t400
"""


def load(path, cache, **options):
    return load_dataset("interactions", path=path, options=options, cache_dir=cache)


def pairs(data, mat, original=True) -> set[tuple[str, str]]:
    """The matrix's (user, item) pairs in the file's ids, read back through the logged mappings."""
    import io

    users = pd.read_csv(io.StringIO(data.artifacts["dataset/user_ids.csv"]), dtype=str)["user_id"].tolist()
    items = pd.read_csv(io.StringIO(data.artifacts["dataset/item_ids.csv"]), dtype=str)["item_id"].tolist()
    coo = mat.tocoo()
    return {(users[u], items[i]) for u, i in zip(coo.row, coo.col, strict=True)}


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def test_recbole_inter_positives_duplicates_leave_one_out_latest(tmp_path, cache):
    path = tmp_path / "log.inter"
    path.write_text(INTER)
    data = load(path, cache, rating_col="rating", min_rating=4, time_col="timestamp", split="leave_one_out")
    # rating 2 dropped; (1,10) twice: the earliest (t=100) kept; user 3 has one item -> test only -> dropped
    assert pairs(data, data.train) == {("1", "10"), ("2", "10")}
    assert pairs(data, data.test) == {("1", "11"), ("2", "13")}
    assert data.fingerprint() == {
        "users": 2,
        "items": 3,
        "train": 2,
        "test": 2,
        "dropped_users": 1,
        "hash": __import__("hashlib").sha256(INTER.encode()).hexdigest(),
    }
    record = json.loads(data.artifacts["dataset/interactions.json"])
    assert record["stats"] == {
        "rows": 7,
        "below_min_rating": 1,
        "duplicates": 1,
        "k_core_removed": 0,
        "dropped_users": 1,
        "dropped_interactions": 1,
    }
    assert record["settings"]["split"] == "leave_one_out" and record["settings"]["seed"] == 2019


def test_tsv_with_string_ids_random_split_per_user(tmp_path, cache):
    rng = np.random.default_rng(0)
    rows = [(f"user-{u}", f"item {i}") for u in range(40) for i in rng.choice(60, size=1 + u % 12, replace=False)]
    path = tmp_path / "log.tsv"
    pd.DataFrame(rows, columns=["uid", "iid"]).to_csv(path, sep="\t", index=False)
    data = load(path, cache, user_col="uid", item_col="iid")
    train, test = pairs(data, data.train), pairs(data, data.test)
    assert train | test == set(rows) and not train & test
    for u in range(40):
        n = 1 + u % 12
        n_test = sum(1 for p in test if p[0] == f"user-{u}")
        assert n_test == int(np.floor(0.2 * n + 0.5)), (u, n, n_test)  # round(0.2 n), half up: 3 -> 1, 8 -> 2
    assert data.fingerprint()["dropped_users"] == 0
    again = load(path, cache / "other", user_col="uid", item_col="iid")
    assert pairs(again, again.test) == test  # seeded
    other = load(path, cache, user_col="uid", item_col="iid", seed=7)
    assert pairs(other, other.test) != test


def test_parquet_integer_ids_temporal_split_keeps_numeric_order(tmp_path, cache):
    frame = pd.DataFrame(
        {
            "user": [5, 5, 5, 5, 5, 20, 20, 20, 20, 20, 3],
            "item": [100, 7, 9, 30, 2, 7, 9, 100, 30, 2, 7],
            "ts": pd.to_datetime(
                [
                    "2024-01-05",
                    "2024-01-01",
                    "2024-01-02",
                    "2024-01-03",
                    "2024-01-04",
                    "2024-02-05",
                    "2024-02-04",
                    "2024-02-03",
                    "2024-02-02",
                    "2024-02-01",
                    "2024-03-01",
                ]
            ),
        }
    )
    path = tmp_path / "log.parquet"
    frame.to_parquet(path)
    data = load(path, cache, user_col="user", item_col="item", time_col="ts", split="temporal")
    assert pairs(data, data.test) == {("5", "100"), ("20", "7")}  # each user's latest round(0.2 * 5) = 1
    assert len(pairs(data, data.train)) == 8 + 1  # user 3: one item, round(0.2) = 0 test items, kept in train
    users = data.artifacts["dataset/user_ids.csv"].split()
    assert users == ["index,user_id", "0,3", "1,5", "2,20"]  # numeric, not string, order


def test_parquet_errors_name_the_row(tmp_path, cache):
    path = tmp_path / "log.parquet"
    pd.DataFrame({"user_id": ["a", "b", None], "item_id": ["x", "y", "z"]}).to_parquet(path)
    with pytest.raises(DataError, match=r"log.parquet, row 3, column 'user_id' \(dataset.user_col\): empty id"):
        load(path, cache)


def test_k_core_is_iterated_to_a_fixed_point():
    # user 0: items 0,1; user 1: items 0,1; user 2: items 1,2. min 2 per user and per item:
    # pass 1 drops item 2 (1 user) -> user 2 has 1 item -> pass 2 drops user 2 -> item 1 still has 2 users.
    users = np.array([0, 0, 1, 1, 2, 2])
    items = np.array([0, 1, 0, 1, 1, 2])
    keep = mint.k_core(users, items, 2, 2)
    assert keep.tolist() == [True, True, True, True, False, False]
    one_pass = (np.bincount(users)[users] >= 2) & (np.bincount(items)[items] >= 2)
    assert one_pass.sum() == 5  # a single pass would have kept user 2's item 1


def test_cache_is_reused_and_rebuilt_when_the_file_changes(tmp_path, cache, monkeypatch):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id\n" + "".join(f"u{u},i{i}\n" for u in range(5) for i in range(5)))
    first = load(path, cache)
    assert len(list(cache.glob("interactions-*.npz"))) == 1
    monkeypatch.setattr(mint, "build", lambda *a: pytest.fail("the cache was not used"))
    cached = load(path, cache)
    assert cached.fingerprint() == first.fingerprint() and cached.artifacts == first.artifacts
    monkeypatch.undo()
    path.write_text(path.read_text() + "u9,i0\nu9,i1\nu9,i2\nu9,i3\nu9,i4\n")
    changed = load(path, cache)
    assert changed.n_users == 6 and changed.fingerprint()["hash"] != first.fingerprint()["hash"]
    assert len(list(cache.glob("interactions-*.npz"))) == 2


def cli(tmp_path, *overrides):
    env = dict(os.environ, PYTHONUNBUFFERED="1", MMLEXP_CACHE_DIR=str(tmp_path / "cache"))
    cmd = [
        sys.executable,
        "-m",
        "mmlexp",
        "dataset=interactions",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        f"tracking.artifact_location={tmp_path}/artifacts",
        f"hydra.run.dir={tmp_path}/run",
        "trainer.progress=false",
        "trainer.epochs=1",
        "num_negatives=20",
        *overrides,
    ]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_cli_trains_on_a_csv_with_string_ids_and_logs_the_mapping(tmp_path):
    from mlflow.tracking import MlflowClient

    rng = np.random.default_rng(1)
    rows = [(f"u{u:03d}", f"item-{i}", t) for u in range(150) for t, i in enumerate(rng.choice(300, 12, replace=False))]
    path = tmp_path / "my log.csv"
    pd.DataFrame(rows, columns=["customer", "product", "when"]).to_csv(path, index=False)
    proc = cli(
        tmp_path,
        f"dataset.path='{path}'",
        "dataset.user_col=customer",
        "dataset.item_col=product",
        "dataset.time_col=when",
        "dataset.split=temporal",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "best epoch 1" in proc.stdout
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("mmlexp").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["dataset"] == "interactions"
    assert run.data.tags["dataset.users"] == "150" and run.data.tags["dataset.test"] == str(150 * 2)
    assert run.data.tags["dataset.hash"] == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    assert run.data.params["dataset.split"] == "temporal"
    artifacts = Path(urllib.parse.urlparse(run.info.artifact_uri).path)  # a local store (tracking.artifact_location)
    assert {p.name for p in (artifacts / "dataset").iterdir()} == {"user_ids.csv", "item_ids.csv", "interactions.json"}
    users = pd.read_csv(artifacts / "dataset" / "user_ids.csv")
    assert users["user_id"].tolist() == [f"u{u:03d}" for u in range(150)]

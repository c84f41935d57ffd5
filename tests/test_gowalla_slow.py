"""Real-data checks on Gowalla (`make test-slow`, also run by .ci/run): minutes on 2 cores."""

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from mmlexp.data import load_dataset
from mmlexp.evaluation import evaluate_embeddings
from mmlexp.run import train

pytestmark = pytest.mark.slow


def naive_recall_ndcg(user_emb, item_emb, train, test, k):
    """Per-user loop straight from paper-reference §8."""
    recalls, ndcgs = [], []
    scores = (user_emb @ item_emb.T).numpy()
    for u in range(train.shape[0]):
        truth = set(test.indices[test.indptr[u] : test.indptr[u + 1]])
        if not truth:
            continue
        s = scores[u].copy()
        s[train.indices[train.indptr[u] : train.indptr[u + 1]]] = -np.inf
        top = np.argsort(-s, kind="stable")[:k]
        hits = [1.0 if i in truth else 0.0 for i in top]
        recalls.append(sum(hits) / len(truth))
        dcg = sum(h / np.log2(r + 2) for r, h in enumerate(hits))
        idcg = sum(1 / np.log2(r + 2) for r in range(min(k, len(truth))))
        ndcgs.append(dcg / idcg)
    return np.mean(recalls), np.mean(ndcgs)


def test_full_ranking_on_gowalla_matches_a_per_user_loop():
    data = load_dataset("gowalla")
    rng = np.random.default_rng(0)
    users = np.sort(rng.choice(data.n_users, 400, replace=False))
    train, test = data.train[users], data.test[users]
    g = torch.Generator().manual_seed(0)
    user_emb = torch.randn(len(users), 64, generator=g, dtype=torch.float64)
    # popularity plus noise: a ranking with real hits, no ties
    pop = torch.from_numpy(np.asarray(data.train.sum(axis=0)).ravel()).double()
    item_emb = torch.randn(data.n_items, 64, generator=g, dtype=torch.float64) * 0.01
    item_emb[:, 0] += torch.log1p(pop)
    user_emb[:, 0] = 10.0
    got = evaluate_embeddings(user_emb, item_emb, train, test, ks=(20,))
    recall, ndcg = naive_recall_ndcg(user_emb, item_emb, train, test, 20)
    assert got["recall@20"] == pytest.approx(recall, abs=1e-9) and recall > 0.01
    assert got["ndcg@20"] == pytest.approx(ndcg, abs=1e-9)


def test_paper_mml_setting_learns_on_gowalla_in_one_epoch(make_cfg):
    """MF + MML with the paper's Gowalla setting: one epoch reaches Recall@20 > 0.05
    (random ranking: ~0.0005; the paper's 100-epoch figure: 0.1816)."""
    cfg = make_cfg("loss=mml", "dataset=gowalla", "trainer.epochs=1", "eval.ks=[20]")
    assert list(cfg.loss.margins) == [0.7, 0.8, 0.9] and cfg.trainer.batch_size == 256
    recall = train(cfg)
    assert recall > 0.05
    client = MlflowClient(cfg.tracking.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("mmlexp").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["dataset.items"] == "40981" and run.data.tags["dataset.train"] == "810128"
    assert run.data.metrics["best/recall_at_20"] == pytest.approx(recall)

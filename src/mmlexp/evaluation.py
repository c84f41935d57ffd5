"""Placeholder full-ranking evaluation (being replaced by the fast version)."""

import numpy as np
import torch


def evaluate_embeddings(user_emb, item_emb, train, test, ks=(20,), *, chunk_size=None, progress=False):
    ks = list(ks)
    k_max = max(ks)
    n_users = user_emb.shape[0]
    test_counts = np.diff(test.indptr)
    users = np.flatnonzero(test_counts > 0)
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg", "precision", "hit")}
    disc = 1.0 / np.log2(np.arange(2, k_max + 2))
    chunk = chunk_size or 1024
    for s in range(0, len(users), chunk):
        us = users[s:s + chunk]
        scores = (user_emb[torch.from_numpy(us)] @ item_emb.T).float().cpu()
        tr = train[us].tocoo()
        scores[torch.from_numpy(tr.row).long(), torch.from_numpy(tr.col).long()] = float("-inf")
        top = np.array(torch.topk(scores, k_max, dim=1).indices)
        te = test[us]
        hits = np.take_along_axis(te.toarray(), top, axis=1).astype(np.float64)
        n_test = test_counts[us]
        for k in ks:
            h = hits[:, :k]
            nh = h.sum(1)
            idcg = np.cumsum(disc)[np.minimum(k, n_test) - 1]
            sums[f"recall@{k}"] += (nh / n_test).sum()
            sums[f"precision@{k}"] += (nh / k).sum()
            sums[f"hit@{k}"] += (nh > 0).sum()
            sums[f"ndcg@{k}"] += ((h * disc[:k]).sum(1) / idcg).sum()
    return {k: float(v / len(users)) for k, v in sums.items()}

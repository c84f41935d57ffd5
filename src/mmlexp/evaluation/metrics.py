"""Top-K metrics of full ranking (paper-reference §8, LightGCN protocol).

Every user with at least one test item is ranked against ALL items by the dot product of the
given embeddings; the user's train items are excluded from the ranking (an item that is also in
the user's test set is never excluded). With ``T_u`` the test set and ``R_u`` the top-K list:

- ``recall@K    = |R_u ∩ T_u| / |T_u|``
- ``ndcg@K      = DCG / IDCG``, ``DCG = sum_{r<=K} 1[R_u[r] in T_u] / log2(r+1)``,
  ``IDCG = sum_{r<=min(K,|T_u|)} 1 / log2(r+1)``
- ``precision@K = |R_u ∩ T_u| / K``
- ``hit@K       = 1[|R_u ∩ T_u| > 0]``

each averaged (unweighted) over the evaluated users.

The ranking itself is :mod:`mmlexp.evaluation.ranking`; the long-tail metrics, :mod:`mmlexp.evaluation.longtail`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import scipy.sparse as sp
import torch

from mmlexp.evaluation._checks import _as_csr, _check_embeddings, _check_ks
from mmlexp.evaluation.longtail import LongTail, _longtail_metrics
from mmlexp.evaluation.ranking import _rank

METRICS = ("recall", "ndcg", "precision", "hit")
# Best-epoch selection protocols (eval.selection): on the test split (the paper's), or on a
# validation slice held out of train (mmlexp.data.splits.holdout), reporting the test metrics there.
SELECTIONS = ("paper", "valid")


def metric_key_for_mlflow(key: str) -> str:
    """``"recall@20"`` -> ``"recall_at_20"`` (MLflow rejects ``@`` in metric names)."""
    name, sep, k = str(key).partition("@")
    if not sep or not name or not k:
        raise ValueError(f"metric key must look like 'name@K' (e.g. 'recall@20'), got {key!r}")
    return f"{name}_at_{k}"


def evaluate_embeddings(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    train: sp.csr_matrix,
    test: sp.csr_matrix,
    ks=(20,),
    *,
    chunk_size: int | None = None,
    progress: bool = False,
    longtail: LongTail | None = None,
) -> dict[str, float]:
    """Recall/NDCG/Precision/HitRate@K for every K in ``ks`` (see module docstring).

    ``user_emb`` [n_users, d], ``item_emb`` [n_items, d]: any float dtype, any (common) device;
    scores are computed there, metrics on CPU. ``train``/``test``: [n_users, n_items] sparse
    interaction matrices (nonzero = interaction). Users without test items are skipped.
    Returns ``{"recall@K", "ndcg@K", "precision@K", "hit@K"}`` floats, K in the order of ``ks``;
    with ``longtail`` (a :class:`LongTail` over the same items) also, for every K,
    ``tail_recall@K_g{g}`` (g = 0..G-1, 0 the least popular group), ``avg_popularity@K`` and
    ``coverage@K``.
    """
    n_users, n_items = _check_embeddings(user_emb, item_emb)
    ks = _check_ks(ks, n_items)
    train = _as_csr(train, "train", (n_users, n_items))
    test = _as_csr(test, "test", (n_users, n_items))
    if longtail is not None:
        if not isinstance(longtail, LongTail):
            raise TypeError(f"longtail must be a LongTail (LongTail.from_train), got {type(longtail).__name__}")
        if longtail.groups.shape != (n_items,) or longtail.popularity.shape != (n_items,):
            raise ValueError(
                f"longtail covers {longtail.groups.shape[0]} items, but the embeddings "
                f"have n_items={n_items}; build it from this dataset's train matrix"
            )
    n_test = np.diff(test.indptr)
    users = np.flatnonzero(n_test)
    if users.size == 0:
        raise ValueError("test has no interactions: there is no user to evaluate")
    exclude = _without(train, test)
    top = _rank(user_emb, item_emb, exclude, max(ks), users, chunk_size, "auto", progress)
    hits = _hits(top, test[users])
    n_test_t = torch.from_numpy(n_test[users]).double()
    out = _metrics(hits, n_test_t, ks)
    if longtail is not None:
        out |= _longtail_metrics(top, hits, n_test_t, ks, longtail, n_items)
    return out


def _without(train: sp.csr_matrix, test: sp.csr_matrix) -> sp.csr_matrix:
    """train minus the pairs also in test (test items are never excluded)."""
    both = train.multiply(test)
    if both.nnz == 0:
        return train
    out = (train != 0).astype(np.int8) - (both != 0).astype(np.int8)
    out.eliminate_zeros()
    return sp.csr_matrix(out)


def _hits(top: torch.Tensor, test_rows: sp.csr_matrix) -> torch.Tensor:
    """[n, k] float64: 1 where top[i, r] is in row i of test_rows (canonical CSR)."""
    n, n_items = test_rows.shape
    counts = torch.from_numpy(np.diff(test_rows.indptr).astype(np.int64))
    keys = torch.repeat_interleave(torch.arange(n) * n_items, counts) + torch.from_numpy(
        test_rows.indices.astype(np.int64)
    )  # sorted: rows, then items
    query = (torch.arange(n)[:, None] * n_items + top).view(-1)
    pos = torch.searchsorted(keys, query).clamp_(max=keys.numel() - 1)
    return (keys[pos] == query).view(n, -1).double()


def _metrics(hits: torch.Tensor, n_test: torch.Tensor, ks: Iterable[int]) -> dict[str, float]:
    k_max = hits.shape[1]
    disc = 1.0 / torch.log2(torch.arange(2, k_max + 2, dtype=torch.float64))
    n_hit = hits.cumsum(dim=1)
    dcg = (hits * disc).cumsum(dim=1)
    idcg = disc.cumsum(dim=0)
    out: dict[str, float] = {}
    for k in ks:
        nh = n_hit[:, k - 1]
        ideal = idcg[(n_test.clamp(max=k) - 1).long()]
        out[f"recall@{k}"] = float((nh / n_test).mean())
        out[f"ndcg@{k}"] = float((dcg[:, k - 1] / ideal).mean())
        out[f"precision@{k}"] = float((nh / k).mean())
        out[f"hit@{k}"] = float((nh > 0).double().mean())
    return out

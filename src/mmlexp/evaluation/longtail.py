"""Long-tail metrics: recall per item-popularity group, mean popularity and catalogue coverage of the top-K lists.

Long-tail metrics (``longtail=LongTail.from_train(train, n_groups, split)``; the SSM paper's,
Wu et al. TOIS'24, Eq. 29). Items are sorted by training popularity ``p_i`` (the number of training
interactions of item i; ties by item id) and cut into ``G`` groups, ``g = 0`` the least popular:
``equal_items`` gives every group the same number of items (sizes differ by at most one),
``equal_interactions`` (the SSM paper's) about the same share of training interactions (item i, with
``c_i`` the interactions of the items sorted before it and ``P`` the total, goes to group
``min(G-1, floor(G * (c_i + p_i / 2) / P))``; an item more popular than ``P / G`` can leave a group
empty). With ``I_g`` the items of group g, for every K in ``ks``:

- ``tail_recall@K_g{g} = |R_u ∩ T_u ∩ I_g| / |T_u|`` (same denominator as Recall), so that
  ``sum_g tail_recall@K_g{g} = recall@K``;
- ``avg_popularity@K = mean_u (1/K) sum_{i in R_u} p_i``: the mean RAW training-interaction count of
  the recommended items (not normalised), averaged over the evaluated users;
- ``coverage@K = |union_u R_u| / n_items``: the share of the whole catalogue that appears in at least
  one evaluated user's top-K.

They reuse the top-K lists of the ranking (one gather of ``p`` and of the groups on them).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from mmlexp.evaluation._checks import _as_csr, _is_int

LONGTAIL_SPLITS = ("equal_interactions", "equal_items")


@dataclass(frozen=True, eq=False)
class LongTail:
    """Item popularity groups for the long-tail metrics (see module docstring).

    ``groups`` [n_items] int64 in 0..n_groups-1 (0: least popular), ``popularity`` [n_items] int64
    training-interaction counts (numpy arrays). Build with :meth:`from_train`.
    """

    groups: np.ndarray
    popularity: np.ndarray
    n_groups: int
    split: str = "equal_interactions"

    @classmethod
    def from_train(cls, train: sp.spmatrix, n_groups: int = 5, split: str = "equal_interactions") -> LongTail:
        if not _is_int(n_groups) or n_groups < 1:
            raise ValueError(f"n_groups={n_groups!r}: must be an integer >= 1")
        if split not in LONGTAIL_SPLITS:
            raise ValueError(f"split={split!r}: must be one of {', '.join(LONGTAIL_SPLITS)}")
        if not sp.issparse(train):
            raise TypeError(f"train must be a scipy.sparse matrix, got {type(train).__name__}")
        csr = _as_csr(train, "train", train.shape)
        pop = np.bincount(csr.indices, minlength=csr.shape[1]).astype(np.int64)
        groups = popularity_groups(pop, int(n_groups), split)
        return cls(groups, pop, int(n_groups), split)


def popularity_groups(popularity: np.ndarray, n_groups: int, split: str) -> np.ndarray:
    """Group of each item (0: least popular) from its training popularity (module docstring)."""
    pop = np.asarray(popularity, dtype=np.int64)
    n_items = pop.size
    order = np.lexsort((np.arange(n_items), pop))  # ascending popularity, ties by item id
    sorted_group = np.empty(n_items, dtype=np.int64)
    if split == "equal_items":
        sorted_group[:] = np.arange(n_items) * n_groups // max(n_items, 1)
    elif split == "equal_interactions":
        p = pop[order]
        total = int(p.sum())
        if total == 0:
            sorted_group[:] = 0
        else:
            mid2 = 2 * (np.cumsum(p) - p) + p  # 2 * (interactions before + half the item's own)
            sorted_group[:] = np.minimum(n_groups - 1, (mid2 * n_groups) // (2 * total))
    else:
        raise ValueError(f"split={split!r}: must be one of {', '.join(LONGTAIL_SPLITS)}")
    groups = np.empty(n_items, dtype=np.int64)
    groups[order] = sorted_group
    return groups


def _longtail_metrics(
    top: torch.Tensor, hits: torch.Tensor, n_test: torch.Tensor, ks: Iterable[int], lt: LongTail, n_items: int
) -> dict[str, float]:
    """tail_recall@K_g*, avg_popularity@K, coverage@K from the top-K lists (module docstring).

    numpy on the CPU tensors (~10 ms on Gowalla at K=20, 50; torch's scatter/index ops cost ~10x):
    group recalls from the hits only (each hit adds 1/|T_u| to its item's group), popularity as
    exact int64 sums (every user has K items, so the mean of means is the total over n*K).
    """
    top_np, hits_np, n_test_np = top.numpy(), hits.numpy(), n_test.numpy()
    n = top_np.shape[0]
    row, pos = np.nonzero(hits_np)
    weight = 1.0 / n_test_np[row]
    hit_group = lt.groups[top_np[row, pos]]
    pop_sum = np.cumsum(lt.popularity[top_np], axis=1, dtype=np.int64)
    out: dict[str, float] = {}
    for k in ks:
        within = pos < k
        recall_g = np.bincount(hit_group[within], weights=weight[within], minlength=lt.n_groups) / n
        for g in range(lt.n_groups):
            out[f"tail_recall@{k}_g{g}"] = float(recall_g[g])
        out[f"avg_popularity@{k}"] = float(pop_sum[:, k - 1].sum()) / (n * k)
        seen = np.zeros(n_items, dtype=bool)
        seen[top_np[:, :k]] = True
        out[f"coverage@{k}"] = float(seen.sum()) / n_items
    return out

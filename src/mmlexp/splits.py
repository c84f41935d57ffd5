"""Held-out validation slice of the training interactions (``eval.selection=valid``).

``holdout(train, fraction, seed)`` moves, for every user, ``n_valid(u) = min(n_u - 1,
floor(fraction * n_u + 1/2))`` of the user's ``n_u`` training items (chosen uniformly at random)
into a validation matrix and keeps the rest for training. At least one item stays in training for
every user: a user with a single training item keeps it, and a user whose share rounds to zero
(``fraction * n_u < 1/2``) has no validation item (that user is not evaluated on the slice).

The draw depends only on the (canonical) matrix, ``fraction`` and ``seed``: one uniform key per
interaction from ``numpy.random.Generator(PCG64(seed))`` in row-major order, and each user's
``n_valid(u)`` items with the smallest keys (ties by item id) go to validation, so the split is the
same on every machine and platform and does not touch numpy's or torch's global random state.
"""

from __future__ import annotations

import numbers

import numpy as np
import scipy.sparse as sp

__all__ = ["holdout", "valid_counts"]


def _canonical(m) -> sp.csr_matrix:
    if not sp.issparse(m):
        raise TypeError(f"train must be a scipy.sparse matrix, got {type(m).__name__}")
    csr = sp.csr_matrix(m, copy=True)
    csr.sum_duplicates()  # also sorts the indices
    csr.eliminate_zeros()
    return csr


def valid_counts(n_train: np.ndarray, fraction: float) -> np.ndarray:
    """Validation items per user: ``min(n_u - 1, floor(fraction * n_u + 1/2))``, never below 0."""
    n = np.asarray(n_train, dtype=np.int64)
    want = np.floor(fraction * n + 0.5).astype(np.int64)
    return np.clip(np.minimum(want, n - 1), 0, None)


def holdout(train: sp.spmatrix, fraction: float, seed: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Split ``train`` [users, items] into ``(train_part, valid_part)``: disjoint binary CSR matrices
    of the same shape whose union is ``train`` (see module docstring for the rule)."""
    if not isinstance(fraction, numbers.Real) or isinstance(fraction, bool) or not 0 < float(fraction) < 1:
        raise ValueError(f"fraction={fraction!r}: must be a number in (0, 1)")
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed={seed!r}: must be an integer >= 0")
    csr = _canonical(train)
    n_users, n_items = csr.shape
    counts = np.diff(csr.indptr).astype(np.int64)
    rows = np.repeat(np.arange(n_users, dtype=np.int64), counts)
    keys = np.random.Generator(np.random.PCG64(int(seed))).random(csr.nnz)
    # rank of each interaction inside its row by key (ties: the item order of the CSR, i.e. item id)
    order = np.lexsort((np.arange(csr.nnz), keys, rows))  # rows are already grouped: stays in-row
    rank = np.empty(csr.nnz, dtype=np.int64)
    rank[order] = np.arange(csr.nnz) - np.repeat(csr.indptr[:-1].astype(np.int64), counts)
    is_valid = rank < valid_counts(counts, float(fraction))[rows]
    items = csr.indices.astype(np.int64)

    def build(mask: np.ndarray) -> sp.csr_matrix:
        m = sp.csr_matrix((np.ones(int(mask.sum()), np.float32), (rows[mask], items[mask])), shape=(n_users, n_items))
        m.sum_duplicates()
        return m

    return build(~is_valid), build(is_valid)

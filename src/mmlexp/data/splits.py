"""Per-user holdouts: the one rule behind the test split of ``dataset=interactions`` and the validation slice
of ``eval.selection=valid``.

``per_user_holdout(users, n_out, keys, largest=...)`` holds out, for every user ``u``, the ``n_out[u]`` of its
interactions with the smallest keys (ties: the earlier row), or with ``largest=True`` the largest keys (ties: the
later row).  Random keys come from ``random_keys(n, seed)``: one uniform draw per interaction, in row order, from
``numpy.random.Generator(PCG64(seed))``, so a split is the same on every machine and leaves numpy's and torch's
global random state alone.  The two callers keep their own (pinned) conventions:

* ``holdout(train, fraction, seed)`` (the validation slice): random keys over the canonical CSR in row-major
  order, the *smallest* keys held out; ``n_valid(u) = min(n_u - 1, floor(fraction * n_u + 1/2))`` of the user's
  ``n_u`` training items, so at least one item stays in training for every user (a user whose share rounds to
  zero has no validation item and is not evaluated on the slice).
* ``mmlexp.data.interactions.split_test``: random keys (or the times) over the file's rows, the *largest* keys
  held out as test.
"""

from __future__ import annotations

import numbers

import numpy as np
import scipy.sparse as sp

__all__ = ["holdout", "per_user_holdout", "random_keys", "valid_counts"]


def random_keys(n: int, seed: int) -> np.ndarray:
    """``n`` uniform [0, 1) keys from ``Generator(PCG64(seed))`` (the stream of ``numpy.random.default_rng``)."""
    return np.random.Generator(np.random.PCG64(int(seed))).random(n)


def per_user_holdout(users: np.ndarray, n_out: np.ndarray, keys: np.ndarray, *, largest: bool = False) -> np.ndarray:
    """Mask of the held-out interactions: for each user ``u``, the ``n_out[u]`` of its interactions (``users`` is
    one user id per interaction, any order) with the smallest ``keys`` (ties: the earlier position), or with
    ``largest`` the largest ``keys`` (ties: the later position)."""
    n = users.size
    order = np.lexsort((np.arange(n), keys, users))
    counts = np.bincount(users, minlength=len(n_out))
    rank = np.empty(n, dtype=np.int64)  # of each interaction inside its user, by (key, position)
    rank[order] = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
    if largest:
        rank = counts[users] - 1 - rank
    return rank < n_out[users]


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
    is_valid = per_user_holdout(rows, valid_counts(counts, float(fraction)), random_keys(csr.nnz, seed))
    items = csr.indices.astype(np.int64)

    def build(mask: np.ndarray) -> sp.csr_matrix:
        m = sp.csr_matrix((np.ones(int(mask.sum()), np.float32), (rows[mask], items[mask])), shape=(n_users, n_items))
        m.sum_duplicates()
        return m

    return build(~is_valid), build(is_valid)

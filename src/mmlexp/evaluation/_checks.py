"""Argument checks of the evaluation API: each error names the argument, what it got and what is allowed."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _check_embeddings(user_emb, item_emb) -> tuple[int, int]:
    for name, t in (("user_emb", user_emb), ("item_emb", item_emb)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D [n, d], got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must have a floating dtype, got {t.dtype}")
    if user_emb.shape[1] != item_emb.shape[1]:
        raise ValueError(
            f"embedding sizes differ: user_emb has d={user_emb.shape[1]}, "
            f"item_emb has d={item_emb.shape[1]}; they must be equal"
        )
    if user_emb.device != item_emb.device:
        raise ValueError(
            f"user_emb is on {user_emb.device} but item_emb on {item_emb.device}; they must be on the same device"
        )
    if item_emb.shape[0] < 1:
        raise ValueError("item_emb has no rows: at least one item is needed")
    for name, t in (("user_emb", user_emb), ("item_emb", item_emb)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains NaN or inf; only finite embeddings can be ranked")
    return user_emb.shape[0], item_emb.shape[0]


def _check_ks(ks, n_items: int) -> list[int]:
    allowed = f"positive ints <= n_items ({n_items})"
    if _is_int(ks):
        ks = (ks,)
    try:
        ks = list(ks)
    except TypeError:
        raise ValueError(f"ks must be a non-empty sequence of {allowed}, got {ks!r}") from None
    if not ks:
        raise ValueError(f"ks must be a non-empty sequence of {allowed}, got an empty one")
    out: list[int] = []
    for k in ks:
        if not _is_int(k) or k < 1 or k > n_items:
            raise ValueError(f"ks contains {k!r}; allowed: {allowed}")
        if int(k) not in out:
            out.append(int(k))
    return out


def _as_csr(m, name: str, shape: tuple[int, int]) -> sp.csr_matrix:
    """Canonical binary CSR (stored zeros dropped, duplicates merged, indices sorted), no mutation."""
    if not sp.issparse(m):
        raise TypeError(f"{name} must be a scipy.sparse matrix (CSR), got {type(m).__name__}")
    if tuple(m.shape) != tuple(shape):
        raise ValueError(
            f"{name} has shape {tuple(m.shape)}, but the embeddings give "
            f"(n_users, n_items) = {tuple(shape)}; they must match"
        )
    csr = sp.csr_matrix(m)  # new object; data shared until modified below
    if not csr.has_canonical_format or (csr.data == 0).any():
        csr = csr.copy()
        csr.sum_duplicates()
        csr.eliminate_zeros()
    return csr


def _check_users(users, n_users: int) -> np.ndarray:
    if users is None:
        return np.arange(n_users, dtype=np.int64)
    if isinstance(users, torch.Tensor):
        users = users.detach().cpu().numpy()
    arr = np.asarray(users)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"users must be a 1-D sequence of user indices, got {users!r}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= n_users):
        raise ValueError(f"users must lie in [0, {n_users}), got values in [{arr.min()}, {arr.max()}]")
    return arr

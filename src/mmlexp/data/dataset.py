"""The dataset type (``InteractionData``: train and test CSR matrices), its error, and its on-disk cache.

Shared by the readers (``mmlexp.data.lightgcn``, ``mmlexp.data.interactions``): ``to_csr`` builds the canonical
binary matrix; ``read_cache`` / ``save_cache`` keep parsed matrices (and extra arrays) in ``cache_dir``.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs
import scipy.sparse as sp

CACHE_VERSION = 1


class DataError(ValueError):
    """Bad dataset name, missing/invalid files, or data that fails validation."""


@dataclass(frozen=True, eq=False)
class InteractionData:
    """Binary user-item interactions split into train and test CSR matrices."""

    name: str
    train: sp.csr_matrix
    test: sp.csr_matrix
    info: dict = field(default_factory=dict)  # more fingerprint entries (dataset=interactions: the file's hash)
    artifacts: dict = field(default_factory=dict)  # {name: text} logged with the run (id mappings)

    @property
    def n_users(self) -> int:
        return self.train.shape[0]

    @property
    def n_items(self) -> int:
        return self.train.shape[1]

    def fingerprint(self) -> dict:
        """Counts that identify the dataset: users, items, train and test nnz."""
        return {
            "users": self.n_users,
            "items": self.n_items,
            "train": int(self.train.nnz),
            "test": int(self.test.nnz),
        } | self.info

    def train_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(users, items) int64 arrays, one entry per train interaction, row-major."""
        counts = np.diff(self.train.indptr)
        users = np.repeat(np.arange(self.n_users, dtype=np.int64), counts)
        return users, self.train.indices.astype(np.int64)


def to_csr(users: np.ndarray, items: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """Canonical binary CSR (sorted indices, duplicates collapsed, float32 ones)."""
    key = np.sort(users * shape[1] + items)
    if key.size:  # drop duplicates (faster than np.unique)
        key = key[np.r_[True, key[1:] != key[:-1]]]
    indptr = np.zeros(shape[0] + 1, np.int64)
    np.cumsum(np.bincount(key // shape[1], minlength=shape[0]), out=indptr[1:])
    indices = (key % shape[1]).astype(np.int32)
    return sp.csr_matrix((np.ones(key.size, np.float32), indices, indptr.astype(np.int32)), shape=shape)


# ---------------------------------------------------------------- cache


def cache_dir(folder=None) -> Path:
    """``folder``, else $MMLEXP_CACHE_DIR, else the user cache dir."""
    return Path(folder or os.environ.get("MMLEXP_CACHE_DIR") or platformdirs.user_cache_dir("mmlexp"))


def read_cache(file: Path, name: str) -> tuple[InteractionData, dict] | None:
    """Cached matrices and the extra arrays saved with them, or None if absent or unreadable."""
    try:
        with np.load(file, allow_pickle=False) as z:
            arr = {k: z[k] for k in z.files}
        shape = tuple(int(s) for s in arr.pop("shape"))
        mats = [
            sp.csr_matrix(
                (np.ones(arr[f"{k}_indices"].size, np.float32), arr.pop(f"{k}_indices"), arr.pop(f"{k}_indptr")),
                shape=shape,
            )
            for k in ("train", "test")
        ]
        return InteractionData(name, *mats), arr
    except Exception:
        return None


def save_cache(file: Path, data: InteractionData, **extra: Any) -> None:
    """Atomically write the parsed matrices and ``extra`` arrays (temp file + os.replace); warn on failure."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=file.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(
                    fh,
                    shape=np.array(data.train.shape),
                    train_indptr=data.train.indptr,
                    train_indices=data.train.indices,
                    test_indptr=data.test.indptr,
                    test_indices=data.test.indices,
                    **extra,
                )
            os.replace(tmp, file)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as e:
        warnings.warn(f"could not write dataset cache {file}: {e}", stacklevel=2)

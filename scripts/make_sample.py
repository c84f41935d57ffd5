"""Build the embedded ``sample`` dataset: a fixed random subset of Gowalla users.

Usage: ``MMLEXP_DATA_DIR=/path/to/data python scripts/make_sample.py [--out DIR]``.
Deterministic: running it twice gives byte-identical files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mmlexp.data import load_dataset

SEED = 20240601
N_USERS = 5000  # users drawn before filtering
MIN_ITEM_COUNT = 10  # keep items with >= this many interactions within the subset
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "mmlexp" / "resources" / "sample"


def _write(path: Path, mat) -> None:
    """Write a CSR matrix as LightGCN text, one line per user, items ascending."""
    lines = [" ".join(map(str, [u, *mat.indices[mat.indptr[u] : mat.indptr[u + 1]]])) for u in range(mat.shape[0])]
    path.write_bytes(("\n".join(lines) + "\n").encode())


def main(out_dir: str | Path | None = None) -> dict:
    """Write ``train.txt``/``test.txt`` into ``out_dir`` and return the sample's counts."""
    out = Path(out_dir) if out_dir is not None else DEFAULT_OUT
    data = load_dataset("gowalla")
    rng = np.random.default_rng(SEED)
    users = np.sort(rng.choice(data.n_users, N_USERS, replace=False))
    train, test = data.train[users], data.test[users]
    counts = np.asarray((train + test).sum(axis=0)).ravel()
    items = np.flatnonzero(counts >= MIN_ITEM_COUNT)
    train, test = train[:, items], test[:, items]
    ok = (train.getnnz(axis=1) > 0) & (test.getnnz(axis=1) > 0)
    train, test = train[ok], test[ok]
    used = np.flatnonzero(train.getnnz(axis=0) + test.getnnz(axis=0))  # re-index items 0..n-1
    train, test = train[:, used].tocsr(), test[:, used].tocsr()
    train.sort_indices()
    test.sort_indices()
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "train.txt", train)
    _write(out / "test.txt", test)
    stats = {
        "users": train.shape[0],
        "items": train.shape[1],
        "train": int(train.nnz),
        "test": int(test.nnz),
        "bytes": sum((out / f).stat().st_size for f in ("train.txt", "test.txt")),
    }
    print(stats)
    return stats


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    main(parser.parse_args().out)

"""Datasets in the LightGCN text format (``user item item ...`` per line): parsing, validation, download, cache.

- ``sample``: a small Gowalla subset shipped inside the package (no download).
- ``gowalla`` / ``yelp2018``: the LightGCN split, read from ``data_dir/<name>/``, downloaded with pooch if
  missing, checked against a fingerprint, cached parsed.
- ``custom``: any directory holding ``train.txt`` and ``test.txt``.
"""

from __future__ import annotations

import hashlib
import os
import re
from importlib import resources
from pathlib import Path

import numpy as np
import platformdirs

from mmlexp.data.dataset import CACHE_VERSION, DataError, InteractionData, cache_dir, read_cache, save_cache, to_csr

DEFAULT_URL = "https://raw.githubusercontent.com/kuandeng/LightGCN/master/Data"
FILES = ("train.txt", "test.txt")
MAX_ID = 2**31 - 2  # indices are stored as int32

KNOWN_DATASETS: dict[str, dict] = {
    "gowalla": {
        "fingerprint": {"users": 29858, "items": 40981, "train": 810128, "test": 217242},
        "sha256": {
            "train.txt": "0f086326b28a56c2e6dcb81d86ee72d4ccb7eed3a8d26788392356d8f51111cc",
            "test.txt": "099a2a73924e4b754dc6efd730d764f492321b53c38eb93298850c83acf57be3",
        },
        "url": DEFAULT_URL,
    },
    "yelp2018": {
        "fingerprint": {"users": 31668, "items": 38048, "train": 1237259, "test": 324147},
        "sha256": {
            "train.txt": "5588ebbcbf9ab10cdf7a70aa300f2ef781030daa2a94ef0685598ed051a398da",
            "test.txt": "9cd9b37926cd1447a06625ffa7914527573fb097c10cb0bbdb1d1b8ded3742fe",
        },
        "url": DEFAULT_URL,
    },
}

# ---------------------------------------------------------------- parsing


def _line_of(data: bytes, pos: int) -> int:
    """1-based line number of byte offset ``pos``."""
    return data.count(b"\n", 0, pos) + 1


def _bad_token(data: bytes, source: str) -> DataError:
    """Locate the first token that is not a non-negative decimal integer."""
    for m in re.finditer(rb"\S+", data):
        tok = m.group()
        if not tok.isdigit():
            line = _line_of(data, m.start())
            what = "negative id" if re.fullmatch(rb"-[0-9]+", tok) else "non-integer token"
            return DataError(
                f"{source}, line {line}: {what} {tok.decode(errors='replace')!r}; "
                "expected 'user item item ...' with non-negative integer ids"
            )
    return DataError(f"{source}: unreadable content")


def _parse_bytes(
    data: bytes, source: str, n_users: int | None = None, n_items: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Parse LightGCN text. Returns (users, items, 1 + largest user id seen)."""
    if re.fullmatch(rb"[0-9\s]*", data) is None:
        raise _bad_token(data, source)
    toks = [ln.split() for ln in data.splitlines()]
    counts = np.fromiter(map(len, toks), np.int64, len(toks))
    lineno = np.flatnonzero(counts) + 1  # 1-based numbers of non-blank lines
    counts = counts[counts > 0]
    if counts.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    flat = np.array([t for row in toks for t in row])
    if flat.dtype.itemsize > 10:  # cannot fit in int32
        big = next(i for i, t in enumerate(flat) if len(t) > 10)
        line = lineno[np.searchsorted(np.cumsum(counts), big, side="right")]
        raise DataError(f"{source}, line {line}: id {flat[big].decode()} too large (ids must be <= {MAX_ID})")
    flat = flat.astype(np.int64)
    starts = np.cumsum(counts) - counts
    row_users = flat[starts]
    is_item = np.ones(flat.size, bool)
    is_item[starts] = False
    users = np.repeat(row_users, counts - 1)
    items = flat[is_item]
    item_line = np.repeat(lineno, counts - 1)
    for kind, ids, lines_of, limit in (("user", row_users, lineno, n_users), ("item", items, item_line, n_items)):
        top = MAX_ID + 1 if limit is None else limit
        bad = np.flatnonzero(ids >= top)
        if bad.size:
            i = bad[0]
            allowed = f"0..{top - 1}" + ("" if limit is None else f" ({limit} {kind}s expected)")
            raise DataError(f"{source}, line {lines_of[i]}: {kind} id {ids[i]} out of range; allowed {allowed}")
    return users, items, int(row_users.max()) + 1


def parse_lightgcn(
    path: Path, n_items: int | None = None, n_users: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Parse a LightGCN file into (users, items) int64 arrays and 1 + max user id.

    A line is ``user item item ...``; a line with only a user id is allowed.
    Ids >= ``n_users``/``n_items`` (when given) raise :class:`DataError`.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e
    return _parse_bytes(data, str(path), n_users, n_items)


def _build(name: str, raw: dict[str, bytes], sources: dict[str, str], expected: dict | None = None) -> InteractionData:
    """Parse train/test bytes into validated InteractionData."""
    lim_u = expected["users"] if expected else None
    lim_i = expected["items"] if expected else None
    parsed = {f: _parse_bytes(raw[f], sources[f], lim_u, lim_i) for f in FILES}
    if parsed["train.txt"][1].size == 0:
        raise DataError(
            f"{name}: {sources['train.txt']} holds no interactions; expected lines 'user item item ...' "
            "with non-negative integer ids"
        )
    n_users = max(p[2] for p in parsed.values())
    n_items = max(int(p[1].max()) + 1 for p in parsed.values() if p[1].size)
    shape = (n_users, n_items)
    tr, te = (to_csr(*parsed[f][:2], shape) for f in FILES)
    overlap = tr.multiply(te).nnz
    if overlap:
        raise DataError(
            f"{name}: {overlap} interactions appear in both "
            f"{sources['train.txt']} and {sources['test.txt']}; train and "
            "test must be disjoint"
        )
    data = InteractionData(name, tr, te)
    if expected is not None and data.fingerprint() != expected:
        raise DataError(
            f"{name}: data does not match the known fingerprint; expected "
            f"{expected}, got {data.fingerprint()} (files: {sources['train.txt']}, "
            f"{sources['test.txt']}). Delete them to re-download."
        )
    return data


# ---------------------------------------------------------------- files, download, cache


def _data_dir(data_dir) -> Path:
    return Path(data_dir or os.environ.get("MMLEXP_DATA_DIR") or platformdirs.user_data_dir("mmlexp"))


def _fetch(name: str, folder: Path, base_url: str | None, download: bool) -> None:
    """Make sure ``folder/{train,test}.txt`` exist, downloading them if allowed."""
    for fname in FILES:
        target = folder / fname
        if target.is_file():
            continue
        if not download:
            raise DataError(
                f"{name}: missing file {target}; set MMLEXP_DATA_DIR (or data_dir=) "
                "to a folder holding <name>/train.txt and test.txt, or allow "
                "download=True"
            )
        import pooch

        base = base_url or os.environ.get("MMLEXP_DATA_URL") or KNOWN_DATASETS[name]["url"]
        url = f"{base.rstrip('/')}/{name}/{fname}"
        try:
            pooch.retrieve(
                url,
                known_hash="sha256:" + KNOWN_DATASETS[name]["sha256"][fname],
                fname=fname,
                path=folder,
                progressbar=True,
            )
        except Exception as e:  # hash mismatch (ValueError), HTTP/connection errors, OSError
            raise DataError(f"{name}: download of {url} into {target} failed: {e}") from e


def _load_cache(name: str, file: Path, expected: dict) -> InteractionData | None:
    """Cached matrices, or None if the cache file is absent, unreadable or inconsistent."""
    cached = read_cache(file, name)
    return cached[0] if cached is not None and cached[0].fingerprint() == expected else None


def load_known(
    name: str, data_dir=None, cache_folder=None, base_url: str | None = None, download: bool = True
) -> InteractionData:
    """``gowalla`` or ``yelp2018``: read (downloaded if missing and allowed), checked, cached parsed."""
    folder = _data_dir(data_dir) / name
    _fetch(name, folder, base_url, download)
    raw = {f: (folder / f).read_bytes() for f in FILES}
    digest = hashlib.sha256(raw["train.txt"] + b"\0" + raw["test.txt"]).hexdigest()[:20]
    cache = cache_dir(cache_folder) / f"{name}-v{CACHE_VERSION}-{digest}.npz"
    expected = KNOWN_DATASETS[name]["fingerprint"]
    data = _load_cache(name, cache, expected)
    if data is None:
        data = _build(name, raw, {f: str(folder / f) for f in FILES}, expected)
        save_cache(cache, data)
    return data


def load_sample() -> InteractionData:
    """The small Gowalla subset shipped inside the package."""
    folder = resources.files("mmlexp") / "resources" / "sample"
    raw = {f: (folder / f).read_bytes() for f in FILES}
    return _build("sample", raw, {f: f"<mmlexp sample>/{f}" for f in FILES})


def load_custom(path: str | Path | None) -> InteractionData:
    """``train.txt`` and ``test.txt`` of the directory ``path``."""
    if path is None:
        raise DataError("name='custom' needs path= a directory with train.txt and test.txt")
    folder = Path(path)
    allowed = "allowed: a directory holding LightGCN-format train.txt and test.txt"
    if not folder.is_dir():
        what = "is a file, not a directory" if folder.exists() else "does not exist"
        raise DataError(f"dataset.path={folder}: custom dataset directory {folder} {what}; {allowed}")
    for f in FILES:
        if not (folder / f).is_file():
            raise DataError(f"dataset.path={folder}: custom dataset file {folder / f} is missing; {allowed}")
    raw = {f: (folder / f).read_bytes() for f in FILES}
    return _build("custom", raw, {f: str(folder / f) for f in FILES})

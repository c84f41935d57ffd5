"""``dataset=interactions``: any interaction log (CSV, TSV, Parquet, RecBole atomic ``.inter``) as a dataset.

Steps, each recorded: read the user/item (and optional time/rating) columns; keep ``rating >= min_rating``;
drop duplicate (user, item) pairs (the earliest kept); k-core filter iterated to a fixed point; split per
user (``random``: a seeded ``round(test_fraction * n)`` of each user's items; ``temporal``: the latest
``round(test_fraction * n)``; ``leave_one_out``: one item, the latest or a seeded random one); users left
with no training item dropped and counted; ids remapped to 0-based (numeric order for integer ids).
The result is cached, keyed by the file's SHA-256 and these settings; the id mappings travel with the
data as run artifacts (``dataset/user_ids.csv``, ``dataset/item_ids.csv``, ``dataset/interactions.json``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmlexp.config import ConfigError
from mmlexp.data.dataset import CACHE_VERSION, DataError, InteractionData, cache_dir, read_cache, save_cache, to_csr
from mmlexp.data.splits import per_user_holdout, random_keys

log = logging.getLogger("mmlexp")
FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet", ".inter": "inter"}
SPLITS = ("random", "temporal", "leave_one_out")
DEFAULTS: dict[str, Any] = {
    "format": "auto",
    "sep": None,
    "encoding": "utf-8",
    "user_col": "user_id",
    "item_col": "item_id",
    "time_col": None,
    "rating_col": None,
    "min_rating": None,
    "min_user_interactions": 0,
    "min_item_interactions": 0,
    "split": "random",
    "test_fraction": 0.2,
    "leave_one_out": "latest",
    "seed": 2019,
}


def settings_of(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The loader's settings (defaults filled in), checked: a bad value names its key and what is allowed."""
    options = {k: v for k, v in (options or {}).items() if k not in ("name", "path", "download")}
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ConfigError(
            f"dataset.{unknown[0]}: unknown setting of dataset=interactions; allowed: {', '.join(DEFAULTS)}"
        )
    s = DEFAULTS | options
    fmt = s["format"]
    if fmt not in ("auto", *sorted(set(FORMATS.values()))):
        raise ConfigError(f"dataset.format={fmt!r}: allowed auto, csv, tsv, parquet, inter")
    if s["split"] not in SPLITS:
        raise ConfigError(f"dataset.split={s['split']!r}: allowed {', '.join(SPLITS)}")
    if s["leave_one_out"] not in ("latest", "random"):
        raise ConfigError(f"dataset.leave_one_out={s['leave_one_out']!r}: allowed latest, random")
    tf = s["test_fraction"]
    if isinstance(tf, bool) or not isinstance(tf, (int, float)) or not 0 < tf < 1:
        raise ConfigError(f"dataset.test_fraction={tf!r}: must be a number in (0, 1)")
    for key in ("min_user_interactions", "min_item_interactions", "seed"):
        if isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < 0:
            raise ConfigError(f"dataset.{key}={s[key]!r}: must be an integer >= 0")
    if s["min_rating"] is not None and (
        s["rating_col"] is None or isinstance(s["min_rating"], bool) or not isinstance(s["min_rating"], (int, float))
    ):
        raise ConfigError(f"dataset.min_rating={s['min_rating']!r}: must be a number, with dataset.rating_col set")
    needs_time = s["split"] == "temporal" or (s["split"] == "leave_one_out" and s["leave_one_out"] == "latest")
    if needs_time and not s["time_col"]:
        which = "split=temporal" if s["split"] == "temporal" else "split=leave_one_out with leave_one_out=latest"
        raise ConfigError(
            f"dataset.time_col=null: {which} orders each user's items by time; set "
            "dataset.time_col (e.g. timestamp), or use split=random / leave_one_out=random"
        )
    return s


# ---------------------------------------------------------------- reading


def _format_of(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if path.suffix.lower() not in FORMATS:
        raise DataError(
            f"{path}: cannot tell the format from the extension {path.suffix!r}; allowed "
            f"{', '.join(FORMATS)} (or set dataset.format=csv|tsv|parquet|inter)"
        )
    return FORMATS[path.suffix.lower()]


def _decode(raw: bytes, path: Path, encoding: str) -> str:
    try:
        return raw.decode("utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding)
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{path}, line {line}, column {column}: byte 0x{raw[e.start]:02x} is not valid "
            f"{encoding} text; save the file as UTF-8 or set dataset.encoding (e.g. latin-1)"
        ) from e
    except LookupError as e:
        raise DataError(f"dataset.encoding={encoding!r}: unknown encoding") from e


def read_table(path: Path, raw: bytes, s: dict[str, Any]) -> tuple[pd.DataFrame, str]:
    """The file as a DataFrame of strings (index = row number), and how a row is named in errors."""
    fmt = _format_of(path, s["format"])
    if fmt == "parquet":
        try:
            frame = pd.read_parquet(io.BytesIO(raw))
        except Exception as e:  # pyarrow's ArrowInvalid and friends
            raise DataError(f"{path}: not a readable Parquet file ({e})") from e
        frame.index = np.arange(1, len(frame) + 1)  # rows numbered from 1
        return frame, "row"
    text = _decode(raw, path, s["encoding"])
    if not text.strip():
        raise DataError(f"{path}: the file is empty; expected a header line and one interaction per line")
    sep = s["sep"] or ("," if fmt == "csv" else "\t")
    try:
        frame = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: {e}") from e
    if fmt == "inter":  # RecBole atomic file: "user_id:token\titem_id:token\trating:float\ttimestamp:float"
        frame.columns = [re.sub(r":(token|token_seq|float|float_seq)$", "", c) for c in frame.columns]
    blank = (frame == "").all(axis=1)
    frame = frame[~blank]
    frame.index = frame.index + 2  # data rows start on line 2, under the header
    return frame, "line"


def _column(frame: pd.DataFrame, name: str, key: str, path: Path) -> pd.Series:
    if name not in frame.columns:
        raise DataError(
            f"{path}: no column {name!r} (dataset.{key}); the file's columns are {', '.join(map(repr, frame.columns))}"
        )
    return frame[name]


def _numbers(col: pd.Series, name: str, key: str, path: Path, where: str, times: bool = False) -> np.ndarray:
    """A column as float64; the first value that is not a number (or a date, for times) is an error."""
    values = pd.to_numeric(col, errors="coerce")
    if times and values.isna().any() and not pd.api.types.is_numeric_dtype(col):
        dates = pd.to_datetime(col, errors="coerce", utc=True, format="mixed")
        if dates.notna().all():
            return (dates - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()
    bad = values.isna()
    if bad.any():
        first = bad.idxmax()
        expected = "a number or a date" if times else "a number"
        raise DataError(
            f"{path}, {where} {first}, column {name!r} (dataset.{key}): {col[first]!r} is not "
            f"{expected}; expected {expected} on every row"
        )
    return values.to_numpy(np.float64)


# ---------------------------------------------------------------- filtering and splitting


def _ids(col: pd.Series, name: str, key: str, path: Path, where: str) -> np.ndarray:
    values = col.astype(str).str.strip()
    empty = (values == "") | col.isna()
    if empty.any():
        raise DataError(
            f"{path}, {where} {empty.idxmax()}, column {name!r} (dataset.{key}): empty id; expected an id on every row"
        )
    return values.to_numpy(dtype=object)


def _codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0-based codes and the original ids in code order (numeric order when every id is an integer)."""
    uniques, codes = np.unique(values.astype(str), return_inverse=True)
    if all(re.fullmatch(r"-?\d{1,18}", u) for u in uniques):
        order = np.lexsort((uniques, uniques.astype(np.int64)))
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        return rank[codes], uniques[order]
    return codes, uniques


def k_core(users: np.ndarray, items: np.ndarray, min_user: int, min_item: int) -> np.ndarray:
    """Mask of the interactions kept by the iterated k-core (every user >= min_user, item >= min_item)."""
    keep = np.ones(users.size, bool)
    while True:
        u_cnt = np.bincount(users[keep], minlength=users.max() + 1 if users.size else 0)
        i_cnt = np.bincount(items[keep], minlength=items.max() + 1 if items.size else 0)
        new = keep & (u_cnt[users] >= min_user) & (i_cnt[items] >= min_item)
        if new.sum() == keep.sum():
            return new
        keep = new


def split_test(users: np.ndarray, times: np.ndarray, s: dict[str, Any]) -> np.ndarray:
    """Mask of the test interactions: per user, by ``s['split']``; the test items are each user's largest keys
    (random keys drawn with ``s['seed']``, or the times; ties: the later row)."""
    by_random = s["split"] == "random" or (s["split"] == "leave_one_out" and s["leave_one_out"] == "random")
    keys = random_keys(users.size, s["seed"]) if by_random else times
    counts = np.bincount(users, minlength=users.max() + 1)
    n_test = (
        np.ones_like(counts)
        if s["split"] == "leave_one_out"
        else np.floor(s["test_fraction"] * counts + 0.5).astype(np.int64)
    )  # round half up
    return per_user_holdout(users, n_test, keys, largest=True)


def _read_rows(path: Path, raw: bytes, s: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(user ids, item ids, times, stats) of the file's rows with ``rating >= min_rating``."""
    frame, where = read_table(path, raw, s)
    if frame.empty:
        raise DataError(f"{path}: no interactions (only a header); expected one interaction per {where}")
    users = _ids(_column(frame, s["user_col"], "user_col", path), s["user_col"], "user_col", path, where)
    items = _ids(_column(frame, s["item_col"], "item_col", path), s["item_col"], "item_col", path, where)
    times = (
        _numbers(_column(frame, s["time_col"], "time_col", path), s["time_col"], "time_col", path, where, True)
        if s["time_col"]
        else np.zeros(len(frame))
    )
    stats = {"rows": len(frame)}
    keep = np.ones(len(frame), bool)
    if s["rating_col"]:
        ratings = _numbers(
            _column(frame, s["rating_col"], "rating_col", path), s["rating_col"], "rating_col", path, where
        )
        if s["min_rating"] is not None:
            keep = ratings >= s["min_rating"]
    stats["below_min_rating"] = int((~keep).sum())
    users, items, times = users[keep], items[keep], times[keep]
    if not keep.any():
        raise DataError(f"{path}: no interaction has {s['rating_col']} >= dataset.min_rating={s['min_rating']}")
    return users, items, times, stats


def build(path: Path, raw: bytes, s: dict[str, Any]) -> tuple[InteractionData, dict[str, np.ndarray], dict]:
    """Parse, filter, split and remap: (data, {"user_ids", "item_ids"}, stats)."""
    users, items, times, stats = _read_rows(path, raw, s)
    u, _ = _codes(users)
    i, _ = _codes(items)
    first = np.lexsort((np.arange(u.size), times, i, u))  # duplicates: the earliest (then first) row kept
    pair = u[first] * (i.max() + 1) + i[first]
    keep = np.ones(u.size, bool)
    keep[first[1:]] = pair[1:] != pair[:-1]
    stats["duplicates"] = int(u.size - keep.sum())
    users, items, times, u, i = users[keep], items[keep], times[keep], u[keep], i[keep]
    keep = k_core(u, i, s["min_user_interactions"], s["min_item_interactions"])
    stats["k_core_removed"] = int(u.size - keep.sum())
    if not keep.any():
        raise DataError(
            f"{path}: no interactions left after min_rating, duplicates and the k-core filter "
            f"({stats}); lower dataset.min_rating / min_user_interactions / min_item_interactions"
        )
    users, items, times, u = users[keep], items[keep], times[keep], u[keep]
    test = split_test(np.unique(u, return_inverse=True)[1], times, s)
    train_users = np.unique(users[~test])
    no_train = ~np.isin(users, train_users)
    stats["dropped_users"] = int(np.unique(users[no_train]).size)
    stats["dropped_interactions"] = int(no_train.sum())
    users, items, test = users[~no_train], items[~no_train], test[~no_train]
    if not test.any():
        detail = (
            f"test_fraction={s['test_fraction']} rounds to 0 test items for every user"
            if s["split"] != "leave_one_out"
            else "no user keeps a training item"
        )
        raise DataError(
            f"{path}: split={s['split']} leaves no test interactions ({detail}; "
            f"{users.size} interactions of {train_users.size} users); use a larger dataset.test_fraction "
            "or dataset.split=leave_one_out"
        )
    u, user_ids = _codes(users)
    i, item_ids = _codes(items)
    shape = (user_ids.size, item_ids.size)
    data = InteractionData("interactions", to_csr(u[~test], i[~test], shape), to_csr(u[test], i[test], shape))
    return data, {"user_ids": user_ids, "item_ids": item_ids}, stats


# ---------------------------------------------------------------- cache, artifacts, entry point


def _with_artifacts(
    data: InteractionData, ids: dict[str, np.ndarray], s: dict, digest: str, stats: dict, path: Path
) -> InteractionData:
    info = {"hash": digest, "dropped_users": stats["dropped_users"]}
    log.info(
        "%s: %s; split=%s: %s",
        path,
        ", ".join(f"{k} {v}" for k, v in stats.items()),
        s["split"],
        ", ".join(f"{k} {v}" for k, v in data.fingerprint().items() if k != "hash"),
    )
    record = {
        "path": str(path),
        "sha256": digest,
        "settings": s,
        "stats": stats,
        "fingerprint": data.fingerprint() | info,
    }
    artifacts = {
        f"dataset/{k}.csv": pd.DataFrame({"index": np.arange(v.size), k[:-1]: v}).to_csv(index=False)
        for k, v in ids.items()
    }
    artifacts["dataset/interactions.json"] = json.dumps(record, indent=2, default=str)
    return InteractionData(data.name, data.train, data.test, info=info, artifacts=artifacts)


def load_interactions(path: str | Path, options: Mapping[str, Any] | None = None, cache_folder=None) -> InteractionData:
    """Load an interaction file as train/test matrices (see the module docstring); cached by content + settings."""
    path = Path(path).expanduser()
    s = settings_of(options)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(
            f"cannot read interaction file {path}: {e.strerror or e}; dataset.path must be a readable CSV, TSV, "
            "Parquet or RecBole .inter file"
        ) from e
    digest = hashlib.sha256(raw).hexdigest()
    key = hashlib.sha256(json.dumps([digest, s], sort_keys=True, default=str).encode()).hexdigest()[:20]
    cache = cache_dir(cache_folder) / f"interactions-v{CACHE_VERSION}-{key}.npz"
    cached = read_cache(cache, "interactions")
    if cached is not None and cached[1].get("sha256") == digest:
        data, extra = cached
        stats = json.loads(str(extra["stats"]))
        ids = {"user_ids": extra["user_ids"], "item_ids": extra["item_ids"]}
        return _with_artifacts(data, ids, s, digest, stats, path)
    data, ids, stats = build(path, raw, s)
    save_cache(
        cache,
        data,
        user_ids=ids["user_ids"].astype(str),
        item_ids=ids["item_ids"].astype(str),
        sha256=np.array(digest),
        stats=np.array(json.dumps(stats)),
    )
    return _with_artifacts(data, ids, s, digest, stats, path)

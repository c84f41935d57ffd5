"""Tests for mmlexp.data (LightGCN format): parsing, validation, cache, download, sample and custom data."""

from __future__ import annotations

import functools
import hashlib
import http.server
import importlib.util
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

import mmlexp.data.lightgcn as mdata
from mmlexp.data import DataError, load_dataset, parse_lightgcn

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLE_DIR = REPO / "src" / "mmlexp" / "resources" / "sample"
# Counts from the table in shared/data/README.md (typed in, not read from the code).
GOWALLA = {"users": 29858, "items": 40981, "train": 810128, "test": 217242}
YELP = {"users": 31668, "items": 38048, "train": 1237259, "test": 324147}
SAMPLE = {"users": 3847, "items": 2995, "train": 44060, "test": 13509}


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Data dir = the shared read-only copies, cache dir = an empty tmp folder."""
    assert (SHARED / "gowalla" / "train.txt").is_file(), f"benchmark data missing at {SHARED}"
    cache = tmp_path / "cache"
    monkeypatch.setenv("MMLEXP_DATA_DIR", str(SHARED))
    monkeypatch.setenv("MMLEXP_CACHE_DIR", str(cache))
    monkeypatch.delenv("MMLEXP_DATA_URL", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return cache


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())
    return path


def _rows(mat) -> list[list[int]]:
    return [mat.indices[mat.indptr[u] : mat.indptr[u + 1]].tolist() for u in range(mat.shape[0])]


def _doctored_gowalla(tmp_path: Path, edit) -> Path:
    """Copy gowalla into tmp_path/data/gowalla, apply edit(train_text, test_text)."""
    folder = tmp_path / "data" / "gowalla"
    folder.mkdir(parents=True)
    train, test = ((SHARED / "gowalla" / f).read_text() for f in ("train.txt", "test.txt"))
    train, test = edit(train, test)
    _write(folder / "train.txt", train)
    _write(folder / "test.txt", test)
    return folder.parent


# ---------------------------------------------------------------- parsing


def test_parse_handwritten_file(tmp_path):
    # trailing spaces, unordered items, a duplicate, a user without items, a blank line,
    # tabs and CRLF
    _write(tmp_path / "train.txt", "0 3 1 2  \n1\n2 0 3 3\n\n3 2\t1\r\n")
    _write(tmp_path / "test.txt", "0 0\n1 4 \n")
    users, items, n_rows = parse_lightgcn(tmp_path / "train.txt")
    assert users.tolist() == [0, 0, 0, 2, 2, 2, 3, 3]
    assert items.tolist() == [3, 1, 2, 0, 3, 3, 2, 1]
    assert n_rows == 4

    d = load_dataset("custom", path=tmp_path)
    assert (d.n_users, d.n_items) == (4, 5)
    assert d.fingerprint() == {"users": 4, "items": 5, "train": 7, "test": 2}
    assert _rows(d.train) == [[1, 2, 3], [], [0, 3], [1, 2]]
    assert _rows(d.test) == [[0], [4], [], []]
    for m in (d.train, d.test):
        assert m.format == "csr" and m.dtype == np.float32 and m.has_sorted_indices
        assert np.all(m.data == 1)
    u, i = d.train_pairs()
    assert u.dtype == i.dtype == np.int64
    assert u.tolist() == [0, 0, 0, 2, 2, 3, 3] and i.tolist() == [1, 2, 3, 0, 3, 1, 2]


@pytest.mark.parametrize(
    "text, line, token",
    [
        ("0 1 2\n1 2 x3\n", 2, "x3"),
        ("0 1\n1 2\n2 -5 3\n", 3, "-5"),
        ("0 1\n\n1 2.0\n", 3, "2.0"),
        ("0 1\n1 99999999999\n", 2, "99999999999"),
    ],
)
def test_parse_malformed(tmp_path, text, line, token):
    f = _write(tmp_path / "bad.txt", text)
    with pytest.raises(DataError) as e:
        parse_lightgcn(f)
    msg = str(e.value)
    assert "bad.txt" in msg and f"line {line}" in msg and token in msg
    if token.startswith("-"):
        assert "negative" in msg


def test_parse_range_limits(tmp_path):
    f = _write(tmp_path / "t.txt", "0 1 2\n1 0\n4 3\n")
    with pytest.raises(DataError, match=r"line 3: item id 3 out of range; allowed 0\.\.2"):
        parse_lightgcn(f, n_items=3)
    with pytest.raises(DataError, match=r"line 3: user id 4 out of range; allowed 0\.\.3"):
        parse_lightgcn(f, n_users=4)


# ---------------------------------------------------------------- names, custom, sample


def test_unknown_name_lists_allowed():
    with pytest.raises(DataError) as e:
        load_dataset("movielens")
    for name in ("movielens", "sample", "gowalla", "yelp2018", "custom"):
        assert name in str(e.value)


def test_custom_errors(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match=str(missing)):
        load_dataset("custom", path=missing)
    _write(tmp_path / "c" / "train.txt", "0 1\n")
    with pytest.raises(DataError, match="test.txt"):
        load_dataset("custom", path=tmp_path / "c")
    _write(tmp_path / "c" / "test.txt", "0 1 2\n")  # (0, 1) in both files
    with pytest.raises(DataError, match="disjoint"):
        load_dataset("custom", path=tmp_path / "c")
    with pytest.raises(DataError):
        load_dataset("custom")
    _write(tmp_path / "e" / "train.txt", "0\n1\n")
    _write(tmp_path / "e" / "test.txt", "")
    with pytest.raises(DataError, match="no interactions"):
        load_dataset("custom", path=tmp_path / "e")


def test_custom_shape_from_both_files(tmp_path):
    _write(tmp_path / "train.txt", "0 1\n1 0\n")
    _write(tmp_path / "test.txt", "0 7\n5\n")
    d = load_dataset("custom", path=str(tmp_path))
    assert d.fingerprint() == {"users": 6, "items": 8, "train": 2, "test": 1}


def test_sample():
    d = load_dataset("sample")
    assert d.name == "sample"
    assert d.fingerprint() == SAMPLE
    assert np.all(d.train.getnnz(axis=1) >= 1) and np.all(d.test.getnnz(axis=1) >= 1)
    assert d.train.multiply(d.test).nnz == 0
    assert d.train.indices.max() < d.n_items and d.test.indices.max() < d.n_items
    assert np.all(d.train.getnnz(axis=0) + d.test.getnnz(axis=0) >= 1)  # no unused item ids
    size = sum((SAMPLE_DIR / f).stat().st_size for f in ("train.txt", "test.txt"))
    assert size < 600_000


def test_make_sample_is_reproducible(env, tmp_path):
    spec = importlib.util.spec_from_file_location("make_sample", REPO / "scripts" / "make_sample.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    stats = mod.main(tmp_path / "out")
    assert {k: stats[k] for k in SAMPLE} == SAMPLE
    for f in ("train.txt", "test.txt"):
        assert (tmp_path / "out" / f).read_bytes() == (SAMPLE_DIR / f).read_bytes()


# ---------------------------------------------------------------- real datasets, cache


@pytest.mark.parametrize("name, expected", [("gowalla", GOWALLA), ("yelp2018", YELP)])
def test_real_datasets(env, name, expected):
    d = load_dataset(name, download=False)
    assert d.name == name and d.fingerprint() == expected
    assert d.train.multiply(d.test).nnz == 0
    assert d.train.has_sorted_indices and d.train.dtype == np.float32
    assert np.all(d.train.getnnz(axis=1) >= 1)  # README: every user has a training item
    u, i = d.train_pairs()
    assert u.size == expected["train"] and np.all(np.diff(u) >= 0)


def test_cache_hit_and_corrupt_cache(env, monkeypatch):
    first = load_dataset("gowalla", download=False)
    files = list(env.glob("*.npz"))
    assert len(files) == 1 and files[0].name.startswith("gowalla-")
    assert not list(env.glob("*.tmp"))

    def boom(*a, **k):
        raise AssertionError("parser called although the cache should be used")

    monkeypatch.setattr(mdata, "_parse_bytes", boom)
    second = load_dataset("gowalla", download=False)
    assert second.name == "gowalla" and second.fingerprint() == GOWALLA
    assert (second.train != first.train).nnz == 0 and (second.test != first.test).nnz == 0

    files[0].write_bytes(b"not an npz file")  # corrupt cache: ignored and rebuilt
    monkeypatch.undo()
    monkeypatch.setenv("MMLEXP_DATA_DIR", str(SHARED))
    monkeypatch.setenv("MMLEXP_CACHE_DIR", str(env))
    third = load_dataset("gowalla", download=False)
    assert third.fingerprint() == GOWALLA
    assert mdata._load_cache("gowalla", files[0], GOWALLA) is not None


def test_out_of_range_item_in_doctored_copy(env, tmp_path):
    data_dir = _doctored_gowalla(tmp_path, lambda tr, te: (tr, te + "0 40981\n"))
    with pytest.raises(DataError) as e:
        load_dataset("gowalla", data_dir=data_dir, download=False)
    msg = str(e.value)
    assert "40981" in msg and "test.txt" in msg and "line 29859" in msg and "0..40980" in msg
    assert not env.exists() or not any(env.iterdir())


def test_fingerprint_mismatch_writes_no_cache(env, tmp_path):
    def truncate(tr, te):
        return "\n".join(tr.splitlines()[:-5]) + "\n", te

    data_dir = _doctored_gowalla(tmp_path, truncate)
    before = sorted(p.name for p in (data_dir / "gowalla").iterdir())
    with pytest.raises(DataError, match="expected .*810128.*got"):
        load_dataset("gowalla", data_dir=data_dir, download=False)
    assert not env.exists() or not any(env.iterdir())
    assert sorted(p.name for p in (data_dir / "gowalla").iterdir()) == before


def test_missing_files_without_download(env, tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("yelp2018", data_dir=tmp_path / "empty", download=False)
    msg = str(e.value)
    assert str(tmp_path / "empty" / "yelp2018" / "train.txt") in msg and "MMLEXP_DATA_DIR" in msg


# ---------------------------------------------------------------- download over loopback HTTP


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _Corrupt(_Quiet):
    """Serves every file with its first byte changed."""

    def do_GET(self):
        body = bytearray((SHARED / self.path.lstrip("/")).read_bytes())
        body[0] ^= 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Interrupted(_Quiet):
    """Announces the full length, sends half, then drops the connection."""

    def do_GET(self):
        body = (SHARED / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def serve():
    """serve(handler) -> base URL of a loopback server for SHARED; all stopped at teardown."""
    servers = []

    def start(handler=_Quiet):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(SHARED)))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_download_from_loopback(env, tmp_path, serve):
    data_dir = tmp_path / "dl"
    d = load_dataset("gowalla", data_dir=data_dir, base_url=serve())
    assert d.fingerprint() == GOWALLA
    for f in ("train.txt", "test.txt"):
        got = hashlib.sha256((data_dir / "gowalla" / f).read_bytes()).hexdigest()
        assert got == hashlib.sha256((SHARED / "gowalla" / f).read_bytes()).hexdigest()
    assert sorted(p.name for p in (data_dir / "gowalla").iterdir()) == ["test.txt", "train.txt"]


def test_download_env_url(env, tmp_path, serve, monkeypatch):
    monkeypatch.setenv("MMLEXP_DATA_URL", serve() + "/")
    monkeypatch.setenv("MMLEXP_DATA_DIR", str(tmp_path / "dl"))
    assert load_dataset("gowalla").fingerprint() == GOWALLA


@pytest.mark.parametrize("handler", [_Corrupt, _Interrupted])
def test_bad_download_leaves_nothing(env, tmp_path, serve, handler):
    data_dir = tmp_path / "dl"
    with pytest.raises(DataError, match="download"):
        load_dataset("gowalla", data_dir=data_dir, base_url=serve(handler))
    folder = data_dir / "gowalla"
    assert not folder.exists() or not any(folder.iterdir())
    assert not env.exists() or not any(env.iterdir())
    # a rerun against a good server starts cleanly and succeeds
    assert load_dataset("gowalla", data_dir=data_dir, base_url=serve()).fingerprint() == GOWALLA


def test_partial_download_dir_is_completed(env, tmp_path, serve):
    """train.txt already present: only test.txt is fetched, train.txt untouched."""
    folder = tmp_path / "dl" / "gowalla"
    folder.mkdir(parents=True)
    shutil.copy(SHARED / "gowalla" / "train.txt", folder / "train.txt")
    mtime = (folder / "train.txt").stat().st_mtime_ns
    d = load_dataset("gowalla", data_dir=tmp_path / "dl", base_url=serve())
    assert d.fingerprint() == GOWALLA
    assert (folder / "train.txt").stat().st_mtime_ns == mtime

"""Resource faults of one run (issue 31 item 4): the disk fills up while a checkpoint is written, ``checkpoint.pt``
is truncated or corrupt, the SQLite MLflow store or Optuna storage is locked by another process, SIGTERM arrives
during an evaluation. Each ends with a clear error or a KILLED run, the last good checkpoint intact, and the same
command, once the fault is gone, ends bit-identical to the uninterrupted reference (0 bytes lost)."""

import random
import resource
import subprocess
import sys
import time

import pytest
import torch

from tests.faults import harness
from tests.faults.test_kill9 import check_single


def recover(runner, tmp_path, ref, log: str = "again.log") -> tuple[int, int]:
    """The same command with no fault: it ends FINISHED; (bytes lost, duplicates) against the reference."""
    rc = runner.run(harness.command("single", tmp_path), tmp_path, tmp_path / log)
    assert rc == 0, (tmp_path / log).read_text()[-4000:]
    return check_single(tmp_path, ref)


def killed_after_epoch_1(runner, templates, tmp_path) -> bytes:
    """A single run killed (kill -9) during its second evaluation: its checkpoint is epoch 1's; returns its bytes."""
    harness.copy_stores(templates, tmp_path, "mlflow.db")
    rc = runner.run(harness.command("single", tmp_path), tmp_path, tmp_path / "first.log", fault="eval:2")
    assert rc == -9, (tmp_path / "first.log").read_text()[-3000:]
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    return (tmp_path / "run" / "checkpoint.pt").read_bytes()


@pytest.mark.slow
def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(runner, templates, references, record, tmp_path):
    """The run stops (``stop`` action) at its second evaluation; its file size limit is lowered under the size of a
    checkpoint (``RLIMIT_FSIZE``, SIGXFSZ ignored: a write then fails with EFBIG, as on a full disk)."""
    ref = references("single")
    harness.copy_stores(templates, tmp_path, "mlflow.db")
    args = harness.command("single", tmp_path)
    proc = runner.start(args, tmp_path, tmp_path / "full.log", fault="eval:2:stop", ignore_sigxfsz=True)
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    fields = dict(scenario="single", fault="disk full writing checkpoint.pt", point="checkpoint", k=2, seed=0)
    injected = recovered = False
    lost = dups = 0
    try:
        harness.wait_stopped(proc.pid)
        before = checkpoint.read_bytes()
        limit = len(before) // 2
        assert (tmp_path / "mlflow.db").stat().st_size < limit  # the store can still be written
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (limit, limit))
        injected = True
        subprocess.run(["kill", "-CONT", str(proc.pid)], check=True)
        rc = proc.wait()
        out = (tmp_path / "full.log").read_text()
        assert rc == 1 and "Traceback" not in out, out[-3000:]  # one line, no traceback
        assert f"cannot write the checkpoint {checkpoint} (File too large" in out
        assert f"the previous {checkpoint} is left as it was" in out
        assert checkpoint.read_bytes() == before and not list(checkpoint.parent.glob(".*.tmp"))
        (run,) = harness.all_runs(f"sqlite:///{tmp_path}/mlflow.db")
        assert run.info.status == "FAILED"
        lost, dups = recover(runner, tmp_path, ref)
        recovered = lost == 0
    finally:
        record(**fields, injected=injected, recovered=recovered, bytes_lost=lost, duplicates=dups)
    assert lost == 0


def flip_a_bit(data: bytes, seed: int) -> bytes:
    """``data`` with one bit flipped at a seeded offset in its second half (tensor data)."""
    rng = random.Random(seed)
    at = rng.randrange(len(data) // 2, len(data) - 4096)
    return data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1 :]


@pytest.mark.slow
def test_a_damaged_checkpoint_is_refused_naming_the_file(runner, templates, references, record, tmp_path):
    """Truncated, then one bit flipped: no older checkpoint is kept, so there is no fallback: each time a clear error
    (exit 2) naming the file, nothing written; once the file is good again the same command resumes from it."""
    ref = references("single")
    good = killed_after_epoch_1(runner, templates, tmp_path)
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    refused: list[str] = []
    recovered, lost, dups = False, 0, 0
    try:
        for damage, bad in (("truncated", good[: len(good) // 2]), ("one bit flipped", flip_a_bit(good, 31))):
            checkpoint.write_bytes(bad)
            rc = runner.run(harness.command("single", tmp_path), tmp_path, tmp_path / "refused.log")
            out = (tmp_path / "refused.log").read_text()
            assert rc == 2 and f"cannot load the checkpoint {checkpoint}" in out, out[-3000:]
            assert "truncated or corrupt" in out and "Traceback" not in out and checkpoint.read_bytes() == bad
            assert len(harness.all_runs(f"sqlite:///{tmp_path}/mlflow.db")) == 1  # no run started
            refused.append(damage)
        checkpoint.write_bytes(good)  # the file restored (from a backup): the run continues
        lost, dups = recover(runner, tmp_path, ref)
        recovered = lost == 0
    finally:
        for i, damage in enumerate(refused):
            record(scenario="single", fault=f"checkpoint.pt {damage}", point="resume", k=1, seed=31, injected=True,
                   recovered=recovered, bytes_lost=lost if i == 0 else 0, duplicates=dups if i == 0 else 0)  # fmt: skip
    assert lost == 0 and len(refused) == 2


@pytest.mark.slow
@pytest.mark.parametrize("k", [2, 3])
def test_sigterm_during_evaluation_ends_killed_and_resumes(runner, templates, references, record, tmp_path, k):
    """SIGTERM during evaluation k: the run ends KILLED, its checkpoint is epoch k - 1's (the last finished one),
    and the same command continues it to the reference's bits."""
    ref = references("single")
    harness.copy_stores(templates, tmp_path, "mlflow.db")
    fields = dict(scenario="single", fault="SIGTERM during evaluation", point="eval", k=k, seed=0)
    injected = recovered = False
    lost = dups = 0
    try:
        rc = runner.run(harness.command("single", tmp_path), tmp_path, tmp_path / "term.log", fault=f"eval:{k}:term")
        injected = True
        assert rc != 0, (tmp_path / "term.log").read_text()[-3000:]
        (run,) = harness.all_runs(f"sqlite:///{tmp_path}/mlflow.db")
        assert run.info.status == "KILLED"
        assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["epoch"] == k - 1
        lost, dups = recover(runner, tmp_path, ref)
        (again,) = harness.all_runs(f"sqlite:///{tmp_path}/mlflow.db")
        assert again.info.run_id == run.info.run_id and again.data.tags["resumed_at_epoch"] == str(k - 1)
        recovered = lost == 0
    finally:
        record(**fields, injected=injected, recovered=recovered, bytes_lost=lost, duplicates=dups)
    assert lost == 0


HOLD = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def lock():
    """``lock(db)``: another process holds an exclusive lock on the SQLite file ``db`` until the test ends."""
    held: list[subprocess.Popen] = []

    def take(db) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        held.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"

    yield take
    for proc in held:
        proc.communicate(timeout=30)  # stdin closed: the holder ends


@pytest.mark.slow
@pytest.mark.parametrize("store", ["MLflow store", "Optuna storage"])
def test_a_locked_sqlite_store_is_waited_for_then_a_clear_error(runner, templates, lock, record, tmp_path, store):
    """Another process holds the store (``BEGIN EXCLUSIVE``): the run or search waits a bounded time
    (``tracking.timeout`` for the MLflow store, SQLite's 5 s for the Optuna storage), then exits 2 naming the store,
    with nothing written."""
    harness.copy_stores(templates, tmp_path, "mlflow.db", "optuna.db")
    scenario = "single" if store == "MLflow store" else "optuna"
    args = harness.command(scenario, tmp_path, "tracking.timeout=2")
    db = tmp_path / ("mlflow.db" if store == "MLflow store" else "optuna.db")
    key = "tracking.uri" if store == "MLflow store" else "hydra.sweeper.storage"
    lock(db)
    before = db.read_bytes()
    start = time.monotonic()
    rc = runner.run(args, tmp_path, tmp_path / "locked.log")
    waited = time.monotonic() - start
    out = (tmp_path / "locked.log").read_text()
    record(scenario=scenario, fault=f"{store} locked", point="open", k=1, seed=0, injected=True, recovered=rc == 2,
           bytes_lost=0, duplicates=0)  # fmt: skip
    assert rc == 2 and "Traceback" not in out, out[-3000:]
    assert f"{key}=sqlite:///{db}" in out.replace("'", "") and "database is locked" in out, out[-2000:]
    assert waited < 60, f"waited {waited:.0f} s"
    assert db.read_bytes() == before and not (tmp_path / "sweep").exists()
    assert not list(tmp_path.glob("run/*.pt"))  # (a single run's directory is Hydra's: its config and log only)

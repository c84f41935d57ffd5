"""The grid ledger and the liveness rules, without Hydra: claims are exclusive, dead workers' points are
taken over, finished points are never handed out again, and dead MLflow runs are told from live ones."""

import socket
import subprocess
import sys
import time

import pytest

from mmlexp.sweep.errors import SweepError
from mmlexp.sweep.ledger import FAILED, FINISHED, PENDING, RUNNING, Ledger, fingerprint
from mmlexp.tracking import HEARTBEAT_TAG, HOST_TAG, PID_STARTED_TAG, PID_TAG, dead_reason

POINTS = [["num_negatives=10"], ["num_negatives=20"], ["num_negatives=30"]]


def ledger(tmp_path, pid: int | None = None, grace: float = 300.0) -> Ledger:
    led = Ledger(f"sqlite:///{tmp_path}/ledger.db", grace_period=grace)
    if pid is not None:  # another worker on this host
        led.pid, led.pid_started = pid, None
    led.open_grid(fingerprint(POINTS, "store"), POINTS, str(tmp_path / "sweep"), "cmd")
    return led


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_fingerprint_is_the_set_of_points_and_the_store():
    assert fingerprint(POINTS, "a") == fingerprint(POINTS[::-1], "a")  # the command line's order does not matter
    assert fingerprint([["a=1", "b=2"]], "a") == fingerprint([["b=2", "a=1"]], "a")
    assert fingerprint(POINTS, "a") != fingerprint(POINTS[:2], "a")
    assert fingerprint(POINTS, "a") != fingerprint(POINTS, "b")


def test_two_workers_never_claim_the_same_point(tmp_path):
    first, second = ledger(tmp_path), ledger(tmp_path, pid=1)  # pid 1 is alive: its claims stand
    a = first.claim(2)
    b = second.claim(5)
    assert [p.idx for p in a] == [0, 1] and [p.idx for p in b] == [2]
    assert second.claim(5) == [] and first.claim(5) == []
    assert first.states() == {0: RUNNING, 1: RUNNING, 2: RUNNING}


def test_finished_points_are_never_handed_out_again_and_failed_ones_are_retried_next_pass(tmp_path):
    led = ledger(tmp_path)
    for p in led.claim(3):
        led.finish(p.idx, FINISHED if p.idx != 1 else FAILED, "boom" if p.idx == 1 else None)
    assert led.claim(3) == []  # same pass: the failed point waits for the next invocation
    again = ledger(tmp_path)  # the same command again
    assert again.states() == {0: FINISHED, 1: PENDING, 2: FINISHED}
    assert [(p.idx, p.attempts) for p in again.claim(3)] == [(1, 2)]


def test_a_withdrawn_point_is_taken_back_by_one_worker_then_released(tmp_path):
    """A finished point whose runs were withdrawn: the first worker to take it back holds it (running, its pid) while
    it clears the run directory, a second one cannot; released, it is pending and claimed next. A point not
    finished (pending, running) cannot be taken back."""
    led, other = ledger(tmp_path), ledger(tmp_path, pid=1)
    for p in led.claim(2):
        led.finish(p.idx, FINISHED)
    assert led.take_back(0) and not other.take_back(0)
    assert led.states() == {0: RUNNING, 1: FINISHED, 2: PENDING}
    assert not led.take_back(2)  # pending: not finished
    assert [p.idx for p in other.claim(3)] == [2]  # point 0 is held by a live worker: not handed out
    assert not led.take_back(2)  # running
    led.release([0])
    assert led.states()[0] == PENDING and [p.idx for p in led.claim(3)] == [0]


def test_a_dead_workers_point_is_taken_over_on_this_host(tmp_path):
    gone = ledger(tmp_path, pid=dead_pid())
    assert [p.idx for p in gone.claim(1)] == [0]
    live = ledger(tmp_path)
    claimed = live.claim(3)
    assert [(p.idx, p.attempts) for p in claimed] == [(0, 2), (1, 1), (2, 1)]


def test_another_hosts_point_is_taken_over_after_the_grace_period_only(tmp_path):
    other = ledger(tmp_path, grace=0.5)
    other.host = "elsewhere"
    assert [p.idx for p in other.claim(1)] == [0]
    here = ledger(tmp_path, grace=0.5)
    assert [p.idx for p in here.claim(1)] == [1]  # point 0 has a fresh heartbeat
    time.sleep(0.7)
    assert [p.idx for p in here.claim(1)] == [0]  # no heartbeat for longer than the grace period


def test_heartbeats_keep_a_point_and_release_gives_it_back(tmp_path):
    other = ledger(tmp_path, grace=0.6)
    other.host = "elsewhere"
    other.claim(1)
    here = ledger(tmp_path, grace=0.6)
    here.claim(2)  # points 1 and 2
    for _ in range(3):
        time.sleep(0.3)
        other.beat([0])
    assert here.claim(1) == []
    here.release([1, 2])
    assert [p.idx for p in here.claim(3)] == [1, 2]


def test_fresh_starts_a_new_generation(tmp_path):
    led = ledger(tmp_path)
    for p in led.claim(3):
        led.finish(p.idx, FINISHED)
    fresh = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    grid = fresh.open_grid(fingerprint(POINTS, "store"), POINTS, str(tmp_path / "other"), "cmd", fresh=True)
    assert grid["generation"] == 2 and grid["parent_run_id"] is None
    assert fresh.states() == {0: PENDING, 1: PENDING, 2: PENDING}


def test_a_storage_that_cannot_be_opened_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(SweepError, match=r"hydra.sweeper.storage='sqlite:///.*file/x.db': cannot open the grid"):
        Ledger(f"sqlite:///{tmp_path}/file/x.db")


def test_dead_reason_tells_dead_processes_from_live_ones():
    import psutil

    me = psutil.Process()
    host, now = socket.gethostname(), time.time()
    alive = {HOST_TAG: host, PID_TAG: str(me.pid), PID_STARTED_TAG: str(me.create_time()), HEARTBEAT_TAG: "0"}
    assert dead_reason(alive, now) is None
    pid = dead_pid()
    assert f"process {pid} on {host} is gone" == dead_reason({**alive, PID_TAG: str(pid)}, now)
    # a reused pid: the process is younger than the run
    assert dead_reason({**alive, PID_STARTED_TAG: str(me.create_time() - 100)}, now) is not None
    remote = {HOST_TAG: "elsewhere", PID_TAG: "7", HEARTBEAT_TAG: str(now - 30)}
    assert dead_reason(remote, now, grace_s=60) is None
    assert "no heartbeat from elsewhere" in dead_reason(remote, now, grace_s=10)
    assert dead_reason({}, now) is None  # not ours: left alone

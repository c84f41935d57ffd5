"""What `make test-slurm` and `make test-postgres` share: a throwaway service's processes, the sweeps they run
(``python -m mmlexp -m ...``), waiting, timing, printing and the exit status.

    sys.path.insert(0, str(Path(__file__).resolve().parent))   # scripts/ (also there when run as a script)
    import _throwaway
    _throwaway.TAG = "test-slurm"                               # the prefix of every line printed

Exit status of :func:`run`: 0 passed, 1 a check failed (or crashed), 77 (:data:`SKIP`) skipped.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

SKIP = 77
TAG = "throwaway"  # set by the script: ``[test-slurm] ...``
TINY = ("trainer.epochs=1", "trainer.max_steps=5")  # a run of a few steps
SWEEPS: list[subprocess.Popen] = []  # every sweep started: none outlives the script


def log(message: str) -> None:
    print(f"[{TAG}] {message}", flush=True)


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def apt_install(*packages: str) -> None:
    """``apt-get install`` (root), quietly and without questions."""
    log(f"installing {' and '.join(packages)} (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env)


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:]


def start(cmd: list[str], out: Path, **popen: Any) -> subprocess.Popen:
    """``cmd`` with its stdout and stderr in the file ``out``."""
    with open(out, "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, **popen)


def daemon(out: Path, *cmd: str, cwd: Path | None = None) -> subprocess.Popen:
    """A server in its own session (stopped with its process group by :func:`stop`), its output in ``out``."""
    return start(list(cmd), out, start_new_session=True, cwd=cwd)


def stop(proc: subprocess.Popen, name: str, timeout: float = 20) -> None:
    """SIGTERM to the process group of a :func:`daemon`; SIGKILL if it is still there after ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log(f"{name} stopped")


def wait_until(
    ready: Callable[[], object], timeout: float, interval: float = 0.5, alive: Callable[[], object] | None = None
) -> bool:
    """Polls ``ready()`` every ``interval`` s: True once it is truthy; False after ``timeout`` s, or as soon as
    ``alive()`` (when given: the process it waits on) is falsy."""
    deadline = time.time() + timeout
    while not ready():
        if (alive is not None and not alive()) or time.time() > deadline:
            return False
        time.sleep(interval)
    return True


def sweep(cwd: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """``python -m mmlexp -m <args>`` in its own new working dir ``cwd`` (its stores there), logging to
    ``cwd/sweep.log``; killed at the end of :func:`run` if still running."""
    cwd.mkdir()
    cmd = [sys.executable, "-m", "mmlexp", "-m", *args]
    env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
    proc = start(cmd, cwd / "sweep.log", cwd=cwd, env=env)
    SWEEPS.append(proc)
    return proc


def finished(cwd: Path, proc: subprocess.Popen, name: str | None = None, timeout: float = 900) -> list[str]:
    """Waits for the sweep of :func:`sweep` (killed after ``timeout`` s); its failure, with the tail of its log,
    if it did not exit 0."""
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    return [] if code == 0 else [f"{name or cwd.name} exited {code}:\n" + tail(cwd / "sweep.log")]


@contextlib.contextmanager
def timed(what: str) -> Iterator[None]:
    """Logs ``<what> done in N s`` once the block has run (not when it raises)."""
    started = time.time()
    yield
    log(f"{what} done in {time.time() - started:.0f} s")


def kill_sweeps() -> None:
    """A check that crashed may leave its sweep running."""
    for proc in SWEEPS:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run(why_not: str | None, prefix: str, checks: Callable[[Path], list[str]], keep: str = "") -> int:
    """The script's exit status: skipped when ``why_not``; else ``checks`` on a new temp dir (``prefix``) and their
    failures printed; a crash is a failure. The temp dir goes afterwards, unless the variable ``keep`` is set."""
    if why_not is not None:
        log(f"skipped: {why_not}")
        return SKIP
    started = time.time()
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    tmp.chmod(0o755)
    try:
        failures = checks(tmp)
    except Exception as err:  # a service did not start, or a check crashed: a failure, after the teardown
        traceback.print_exc()
        failures = [f"{type(err).__name__}: {err}"]
    finally:
        kill_sweeps()
        if keep and os.environ.get(keep):  # debugging: keep the services' files and the sweeps' logs
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    for failure in failures:
        log(f"FAILED: {failure}")
    log(f"{'passed' if not failures else 'failed'} in {time.time() - started:.0f} s")
    return 1 if failures else 0

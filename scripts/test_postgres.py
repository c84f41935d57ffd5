"""`make test-postgres`: a multi-machine sweep against a throwaway PostgreSQL server.

1. Starts PostgreSQL from the system's binaries (installs the `postgresql` package with apt-get when they are
   missing and we are root; as root the server runs as the `postgres` user) in a temp dir, on a free loopback port.
2. Starts an MLflow tracking server on a free loopback port whose backend store is PostgreSQL.
3. Runs two sweep processes of the same Optuna study (`hparams_search=mml_optuna`, storage
   `postgresql+psycopg2://...`, tracking `http://127.0.0.1:<port>`), the second one started once the first is
   running trials: two workers, as on two machines.
4. Checks the study: exactly n_trials COMPLETE trials, none RUNNING, both workers ran trials, and every complete
   trial has exactly one FINISHED MLflow run under the study's parent run.
5. Runs two workers of another study, kills one (`kill -9`) once a trial of its has a checkpoint and starts it
   again: the killed trial ends FAIL, taken over by a complete trial with its parameters that continued from its
   checkpoint; the study ends with exactly n_trials complete trials, none RUNNING, no MLflow run RUNNING.
6. Runs two workers of the same grid (`-m loss=... num_negatives=...`, ledger in PostgreSQL) started together,
   and checks that every point ran exactly once (one FINISHED MLflow run each, one parent run, every ledger row
   finished at its first attempt) and that both workers ran points. Stops both servers.

Exit status 0: passed; 1: a check failed; 77: skipped (no PostgreSQL binaries and they cannot be installed).
"""

import contextlib
import glob
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/, for _throwaway wherever this is run from
import _throwaway  # noqa: E402
from _throwaway import TINY, daemon, finished, free_port, log, stop, tail, wait_until  # noqa: E402

_throwaway.TAG = "test-postgres"
N_TRIALS = 6
TAKEOVER = ("hydra.sweeper.study_name=mml_takeover",)
LONGER = ("trainer.epochs=4", "trainer.max_steps=null")
GRID = ["loss=mml,ccl,bsl,bpr", "num_negatives=10,20"]


def pg_bindir() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(out.stdout.strip())
    for path in reversed(candidates):
        if path and (Path(path) / "initdb").exists() and (Path(path) / "pg_ctl").exists():
            return Path(path)
    return None


def ensure_postgres() -> Path | None:
    bindir = pg_bindir()
    if bindir is None and os.geteuid() == 0 and shutil.which("apt-get"):
        _throwaway.apt_install("postgresql")
        bindir = pg_bindir()
    return bindir


def as_server_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: use the `postgres` user there."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


def server_program(bindir: Path, program: str, *args: str, check: bool = True) -> None:
    """One of PostgreSQL's programs (initdb, pg_ctl) as the server's user, its output dropped."""
    subprocess.run(as_server_user([str(bindir / program), *args]), check=check, stdout=subprocess.DEVNULL)


@contextlib.contextmanager
def postgres(bindir: Path, tmp: Path) -> Iterator[str]:
    data, port = tmp / "pgdata", free_port()
    if os.geteuid() == 0:
        shutil.chown(tmp, user="postgres")
    server_program(bindir, "initdb", "-D", str(data), "-U", "mmlexp", "--auth=trust", "-E", "UTF8")
    server_program(bindir, "pg_ctl", "-D", str(data), "-l", str(tmp / "postgres.log"),
                   "-o", f"-h 127.0.0.1 -p {port} -k {tmp}", "-w", "start")  # fmt: skip
    log(f"PostgreSQL {bindir.parent.name} on 127.0.0.1:{port}")
    try:
        for db in ("optuna", "mlflow"):
            subprocess.run(
                [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mmlexp", db], check=True
            )
        yield f"postgresql+psycopg2://mmlexp@127.0.0.1:{port}"
    finally:
        server_program(bindir, "pg_ctl", "-D", str(data), "-m", "fast", "stop", check=False)
        log("PostgreSQL stopped")


def healthy(url: str) -> bool:
    with contextlib.suppress(OSError):
        with urllib.request.urlopen(url + "/health", timeout=5) as response:
            return response.status == 200
    return False


@contextlib.contextmanager
def mlflow_server(backend: str, tmp: Path) -> Iterator[str]:
    port = free_port()
    url, out = f"http://127.0.0.1:{port}", tmp / "mlflow-server.log"
    server = daemon(out, str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", backend,
                    "--artifacts-destination", str(tmp / "mlartifacts"), "--host", "127.0.0.1", "--port", str(port),
                    "--workers", "1", cwd=tmp)  # fmt: skip
    try:
        if not wait_until(lambda: healthy(url), 300, interval=1, alive=lambda: server.poll() is None):
            raise RuntimeError("mlflow server did not start:\n" + tail(out))
        log(f"MLflow tracking server on {url} (backend: PostgreSQL)")
        yield url
    finally:
        stop(server, "MLflow server", timeout=30)


# A loaded machine (a queue beside CI) can keep the fresh server from answering within the default 10 s; what this
# test checks is two workers on one study, not the timeout (tests/test_bad_inputs.py checks that).
TIMEOUT = "tracking.timeout=120"


def worker(name: str, tmp: Path, *args: str, size: tuple[str, ...] = TINY) -> subprocess.Popen:
    """``python -m mmlexp -m <args>`` with tiny runs, in its own working dir (as on its own machine)."""
    return _throwaway.sweep(
        tmp / name, *args, "tracking.artifact_location=null", TIMEOUT, *size, "trainer.progress=false"
    )


def sweep_worker(name: str, storage: str, tracking: str, tmp: Path, *args: str, **kw: Any) -> subprocess.Popen:
    return worker(name, tmp, "hparams_search=mml_optuna", f"hydra.sweeper.storage={storage}",
                  f"hydra.sweeper.n_trials={N_TRIALS}", "hydra.sweeper.heartbeat_interval=5",
                  f"tracking.uri={tracking}", "num_negatives=10", *args, **kw)  # fmt: skip


def sql(url: str, statement: str) -> list:
    """The rows of one SQL statement on the database ``url`` (SQLAlchemy), read past Optuna and MLflow."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as db:
            return db.execute(text(statement)).fetchall()
    finally:
        engine.dispose()


def count_trials(url: str) -> int:
    """Read-only peek (opening the storage through Optuna would race the worker creating its tables)."""
    try:
        return sql(url, "SELECT count(*) FROM trials")[0][0] or 0
    except Exception:
        return 0


def mlflow_runs(tracking: str, experiment: str, where: str = "") -> list:
    """The runs of the MLflow experiment named ``experiment`` on the tracking server (filtered by ``where``)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking)
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id], filter_string=where)


def two_workers(storage: str, tracking: str, tmp: Path) -> list[str]:
    """Two workers of the study mml_sample, the second started once the first runs trials."""
    first = sweep_worker("worker1", storage, tracking, tmp)
    wait_until(lambda: count_trials(storage), 300, interval=1, alive=lambda: first.poll() is None)
    second = sweep_worker("worker2", storage, tracking, tmp)
    log(f"two sweep workers running (pids {first.pid}, {second.pid}), study mml_sample, n_trials={N_TRIALS}")
    return finished(tmp / "worker1", first) + finished(tmp / "worker2", second)


def check_study(storage: str, tracking: str) -> list[str]:
    """n_trials COMPLETE trials, none RUNNING, run by both workers; one FINISHED MLflow run each, under the
    study's parent run."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name="mml_sample", storage=storage)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    running = [t for t in study.trials if t.state == TrialState.RUNNING]
    skipped = [t for t in study.trials if t.user_attrs.get("skipped")]
    pids = {t.user_attrs.get("worker", {}).get("pid") for t in complete}
    log(
        f"study: {len(complete)} complete, {len(running)} running, {len(skipped)} surplus asks refused, "
        f"{len(study.trials)} trials; complete trials run by {len(pids)} workers"
    )
    failures = []
    if len(complete) != N_TRIALS:
        failures.append(f"{len(complete)} complete trials, expected {N_TRIALS}")
    if running:
        failures.append(f"trials left RUNNING: {[t.number for t in running]}")
    if len(pids) != 2:
        failures.append(f"complete trials were run by {len(pids)} worker(s), expected 2")
    runs = mlflow_runs(tracking, "mmlexp")
    parent_id = study.user_attrs.get("mlflow_parent_run_id")
    done = [r for r in runs if r.info.status == "FINISHED" and "optuna.trial_number" in r.data.tags]
    numbers = sorted(int(r.data.tags["optuna.trial_number"]) for r in done)
    if numbers != sorted(t.number for t in complete):
        failures.append(f"MLflow runs of trials {numbers} != complete trials {[t.number for t in complete]}")
    if any(r.data.tags.get("mlflow.parentRunId") != parent_id for r in done):
        failures.append("a trial's MLflow run is not a child of the study's parent run")
    log(f"MLflow: {len(done)} finished trial runs under parent {parent_id}, {len(runs)} runs in all")
    return failures


def checkpointed_trial(study, pid: int):
    """A RUNNING trial of the worker ``pid`` that has written a checkpoint, or None."""
    from optuna.trial import TrialState

    for trial in study.get_trials(states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker") or {}
        if worker.get("pid") == pid and (Path(worker.get("job_dir", "-")) / "checkpoint.pt").exists():
            return trial
    return None


def kill_one_worker(storage: str, tracking: str, tmp: Path) -> list[str]:
    """Two workers of one study; worker 1 killed with a trial half done, then started again. Returns failures."""
    import optuna

    first = sweep_worker("kill1", storage, tracking, tmp, *TAKEOVER, size=LONGER)
    deadline, victim, second = time.time() + 600, None, None
    while victim is None and time.time() < deadline and first.poll() is None:
        time.sleep(0.5)
        with contextlib.suppress(Exception):
            study = optuna.load_study(study_name="mml_takeover", storage=storage)
            if second is None and study.trials:  # the second starts once trials run (one parent run)
                second = sweep_worker("kill2", storage, tracking, tmp, *TAKEOVER, size=LONGER)
            victim = checkpointed_trial(study, first.pid)
    first.kill()
    first.wait()
    if victim is None or second is None:
        if second is not None:
            second.kill()
        return ["worker 1 never ran a trial to its first checkpoint:\n" + tail(tmp / "kill1" / "sweep.log")]
    log(f"killed worker 1 (pid {first.pid}) during trial {victim.number}; started again")
    again = sweep_worker("kill1-again", storage, tracking, tmp, *TAKEOVER, size=LONGER)
    failures = finished(tmp / "kill2", second) + finished(tmp / "kill1-again", again)
    return failures + check_takeover(storage, tracking, victim.number)


def check_takeover(storage: str, tracking: str, killed: int) -> list[str]:
    """The killed trial FAIL, taken over by a complete trial with its parameters that continued its MLflow run
    from its checkpoint; n_trials complete; nothing RUNNING in the study or in MLflow."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name="mml_takeover", storage=storage)
    trials = {t.number: t for t in study.trials}
    complete = [t for t in trials.values() if t.state == TrialState.COMPLETE]
    failures = [] if len(complete) == N_TRIALS else [f"takeover study: {len(complete)} complete trials"]
    if study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING)):
        failures.append("takeover study: trials left RUNNING or WAITING")
    by = trials[killed].user_attrs.get("taken_over_by")
    takeover = trials.get(by) if by is not None else None
    if trials[killed].state != TrialState.FAIL or takeover is None or takeover.state != TrialState.COMPLETE:
        failures.append(f"trial {killed} was not taken over by a complete trial (taken_over_by={by})")
    elif takeover.params != trials[killed].params:
        failures.append(f"trial {by} took over trial {killed} with other parameters")
    runs = mlflow_runs(tracking, "mmlexp", "tags.`optuna.study` = 'mml_takeover'")
    if [r.info.run_id for r in runs if r.info.status == "RUNNING"]:
        failures.append("MLflow runs left RUNNING in the takeover study")
    resumed = [r for r in runs if r.data.tags.get("optuna.takes_over") == str(killed)]
    if len(resumed) != 1 or "resumed_at_epoch" not in resumed[0].data.tags:
        failures.append(f"no MLflow run of trial {by} continued trial {killed}'s from its checkpoint")
    log(f"takeover: trial {killed} killed, taken over by trial {by}; {len(complete)} complete trials")
    return failures


def grid_worker(name: str, storage: str, tracking: str, tmp: Path) -> subprocess.Popen:
    return worker(name, tmp, *GRID, f"hydra.sweeper.storage={storage}", "hydra.sweeper.poll_interval=1",
                  f"tracking.uri={tracking}", "tracking.experiment=grid")  # fmt: skip


def check_grid(storage: str, tracking: str, tmp: Path) -> list[str]:
    """Two workers of one grid, started together: every point once, one parent run, both workers busy."""
    workers = [grid_worker(f"grid{i}", storage, tracking, tmp) for i in (1, 2)]
    log(f"two grid workers running (pids {workers[0].pid}, {workers[1].pid}), 8 points")
    failures = [f for i, proc in enumerate(workers, 1) for f in finished(tmp / f"grid{i}", proc, f"grid worker {i}")]
    rows = sql(storage, "SELECT idx, state, attempts, pid FROM mmlexp_grid_points")
    if sorted((r.idx, r.state, r.attempts) for r in rows) != [(i, "finished", 1) for i in range(8)]:
        failures.append(f"ledger rows: {sorted(tuple(r) for r in rows)}")
    runs = mlflow_runs(tracking, "grid")
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("sweep.role") != "parent"]
    points = sorted(int(r.data.tags["sweep.job_num"]) for r in children if r.info.status == "FINISHED")
    pids = {r.data.tags.get("mmlexp.pid") for r in children}
    log(
        f"grid: {len(rows)} ledger rows, {len(children)} runs of points {points}, {len(parents)} parent(s), "
        f"points run by {len(pids)} workers"
    )
    if points != list(range(8)) or len(children) != 8:
        failures.append(f"FINISHED runs of points {points} ({len(children)} runs), expected each of 0..7 once")
    if len(parents) != 1 or any(r.data.tags.get("mlflow.parentRunId") != parents[0].info.run_id for r in children):
        failures.append(f"{len(parents)} parent runs; every point must be a child of the one parent")
    if len(pids) != 2:
        failures.append(f"points were run by {len(pids)} worker(s), expected 2")
    return failures


def checks(tmp: Path, bindir: Path) -> list[str]:
    with postgres(bindir, tmp) as pg, mlflow_server(f"{pg}/mlflow", tmp) as tracking:
        storage = f"{pg}/optuna"
        failures = two_workers(storage, tracking, tmp) + check_study(storage, tracking)
        failures += kill_one_worker(storage, tracking, tmp)
        return failures + check_grid(storage, tracking, tmp)


def main() -> int:
    bindir = ensure_postgres()
    why_not = None if bindir else "no PostgreSQL binaries (initdb, pg_ctl), and not root with apt-get to install them"
    return _throwaway.run(why_not, "mmlexp-pg-", lambda tmp: checks(tmp, bindir), keep="TEST_POSTGRES_KEEP")


if __name__ == "__main__":
    sys.exit(main())

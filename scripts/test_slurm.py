"""`make test-slurm`: sweeps on a real single-node SLURM cluster, started from the system's packages.

1. Starts a throwaway cluster in a temp dir (installs `slurm-wlm` and `munge` with apt-get when they are missing
   and we are root): `munged` with its own key and socket, `slurmctld` and `slurmd` in the foreground of their own
   sessions, `slurm.conf` with `proctrack/linuxproc`, `task/none`, no accounting, `KillWait=5` and
   `AuthInfo=...,cred_expire=10` (a requeued job waits cred_expire seconds before it may start again: 120 by
   default), free loopback ports; waits until the node is idle.
2. A 2-point grid through `hydra/launcher=slurm_example` (`gpus_per_node=0`): both points FINISHED in the ledger
   and in MLflow.
3. An Optuna search (`hparams_search=mml_optuna`, 2 trials) on SLURM: 2 COMPLETE trials, none left RUNNING.
4. Two one-point sweeps of the same run side by side: a reference, and one whose job is requeued with
   `scontrol requeue` once it has an epoch checkpoint (SLURM kills it, holds it, starts it again in the same run
   directory). The requeued run must resume from its checkpoint and end bit-identical to the reference: the
   same weights, Adam state, best epoch and per-epoch metrics.
5. submitit polls `sacct`, which fails without accounting: each sweep's log must say so in one line and stop
   polling, not warn once per poll (`mmlexp.slurm_logging`, installed by `mmlexp.sweep`).
Stops every daemon (and cancels every job) it started, whatever happens.

Exit status 0: passed; 1: a check failed; 77: skipped (not root, or no SLURM/munge binaries and they cannot be
installed).
"""

import contextlib
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/, for _throwaway wherever this is run from
import _throwaway  # noqa: E402
from _throwaway import TINY, daemon, free_port, log, stop, timed, wait_until  # noqa: E402

_throwaway.TAG = "test-slurm"
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "sinfo", "scancel")
LAUNCHER = ("hydra/launcher=slurm_example", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=30", "hydra.launcher.array_parallelism=2",
            "trainer.num_threads=1")  # fmt: skip
BASE = ("num_negatives=10", "trainer.progress=false", "eval.longtail.enabled=false")
# 0.5 s (a 2024 Xeon) to 2 s each on `sample`. The job is requeued at its epoch-2 checkpoint or later, and must
# outlast the KillWait (5 s) that SLURM gives it after the SIGTERM: at 8 epochs a fast CPU finished first (no resume).
REQUEUE_EPOCHS = 40
SACCT_MARK, SACCT_SAID = "Bypassing sacct error", "SLURM accounting is disabled (sacct: "
# What the grid and the search sweeps must leave in their stores: the sweep's Optuna store's rows (SQL), what they
# are, the state each of the 2 must end in; what the log calls them and the sweep's MLflow job runs.
STORES = {
    "grid": ("SELECT idx, state FROM mmlexp_grid_points", "points", "finished", "grid: ledger points", "job"),
    "search": ("SELECT number, state FROM trials", "trials", "COMPLETE", "Optuna search: trials", "trial"),
}


def ensure_slurm() -> str | None:
    """None when every binary is there (installed now if need be), else why not."""
    if os.geteuid() != 0:
        return "not root: slurmd must run as root to start jobs"
    if not all(shutil.which(b) for b in BINARIES) and shutil.which("apt-get"):
        _throwaway.apt_install("slurm-wlm", "munge")
    missing = [b for b in BINARIES if not shutil.which(b)]
    return f"no {', '.join(missing)} (and no apt-get to install slurm-wlm, munge)" if missing else None


def slurm_conf(tmp: Path, node: str) -> str:
    cpus, mem_mb = os.cpu_count() or 1, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    return f"""ClusterName=mmlexp
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={tmp}/munge.socket,cred_expire=10
StateSaveLocation={tmp}/state
SlurmdSpoolDir={tmp}/spool
SlurmctldPidFile={tmp}/slurmctld.pid
SlurmdPidFile={tmp}/slurmd.pid
SlurmctldLogFile={tmp}/slurmctld.log
SlurmdLogFile={tmp}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=30
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def slurm(env: dict, *cmd: str) -> str:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60).stdout.strip()


def wait_for(what: str, ready, timeout: float, logs: list[Path]) -> None:
    """Waits until ``ready()``; else fails with ``what`` and the tails of ``logs``."""
    if not wait_until(ready, timeout):
        tails = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in logs if p.exists())
        raise RuntimeError(f"{what} within {timeout:.0f} s\n{tails}")


@contextlib.contextmanager
def cluster(tmp: Path) -> Iterator[dict]:
    """munged, slurmctld and slurmd on this machine; yields the environment that reaches them (SLURM_CONF)."""
    node = socket.gethostname().split(".")[0]
    for folder in ("state", "spool"):
        (tmp / folder).mkdir()
    key = tmp / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    conf = tmp / "slurm.conf"
    conf.write_text(slurm_conf(tmp, node))
    env = dict(os.environ, SLURM_CONF=str(conf))
    started = time.time()
    procs = [(daemon(tmp / "munged.out", "munged", "-F", "--force", f"--key-file={key}", f"--socket={tmp}/munge.socket",
                     f"--pid-file={tmp}/munged.pid", f"--log-file={tmp}/munged.log", f"--seed-file={tmp}/munge.seed"),
              "munged")]  # fmt: skip
    try:
        wait_for("munged did not start", (tmp / "munge.socket").exists, 30, [tmp / "munged.out", tmp / "munged.log"])
        procs.append((daemon(tmp / "slurmctld.out", "slurmctld", "-D", "-i", "-f", str(conf)), "slurmctld"))
        procs.append((daemon(tmp / "slurmd.out", "slurmd", "-D", "-N", node, "-f", str(conf)), "slurmd"))
        logs = [tmp / f for f in ("slurmctld.out", "slurmctld.log", "slurmd.out", "slurmd.log")]
        wait_for("the node did not become idle", lambda: slurm(env, "sinfo", "-h", "-o", "%T") == "idle", 120, logs)
        log(f"SLURM {slurm(env, 'sinfo', '-V')} cluster up in {time.time() - started:.1f} s: node {node}, partition "
            f"debug, {os.cpu_count()} CPUs, no accounting")  # fmt: skip
        yield env
    finally:
        jobs = slurm(env, "squeue", "-h", "-o", "%i") if len(procs) == 3 else ""
        if jobs:
            slurm(env, "scancel", *jobs.split())
            wait_until(lambda: not slurm(env, "squeue", "-h", "-o", "%i"), 30)
        for proc, name in reversed(procs):
            stop(proc, name)


def sweep(name: str, tmp: Path, env: dict, *args: str) -> subprocess.Popen:
    """``python -m mmlexp -m <args>`` through the SLURM launcher, in its own working dir (its stores there)."""
    cwd = tmp / name
    stores = (f"hydra.sweep.dir={cwd}/sweep", f"tracking.artifact_location={cwd}/artifacts")
    return _throwaway.sweep(cwd, *LAUNCHER, *stores, *args, env=env)


def finished(name: str, tmp: Path, proc: subprocess.Popen) -> list[str]:
    """Waits for a sweep; its failure (with the log's tail) if it did not exit 0."""
    return _throwaway.finished(tmp / name, proc)


def query(db: Path, sql: str) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        return con.execute(sql).fetchall()


def mlflow_runs(cwd: Path) -> list[tuple[str, str]]:
    """(status, role) of every run of the sweep's MLflow store: role ``parent`` or ``job``."""
    rows = query(cwd / "mlflow.db", "SELECT r.status, t.value FROM runs r LEFT JOIN tags t "
                 "ON t.run_uuid = r.run_uuid AND t.key = 'sweep.role'")  # fmt: skip
    return [(status, "parent" if role == "parent" else "job") for status, role in rows]


def check_sweep(tmp: Path, name: str) -> list[str]:
    """The grid's 2 points or the search's 2 trials (:data:`STORES`) ended in their state, with 2 FINISHED runs."""
    sql, what, state, label, runs = STORES[name]
    cwd = tmp / name
    rows = sorted(query(cwd / "optuna.db", sql))
    jobs = sorted(status for status, role in mlflow_runs(cwd) if role == "job")
    log(f"{label} {rows}; MLflow {runs} runs {jobs}")
    if rows != [(0, state), (1, state)] or jobs != ["FINISHED", "FINISHED"]:
        return [f"{name}: {what} {rows}, runs {jobs}: expected 2 {state} {what}, 2 FINISHED runs"]
    return []


def checkpoint(run_dir: Path) -> dict:
    import torch

    return torch.load(run_dir / "checkpoint.pt", weights_only=True)


def checkpoint_epoch(run_dir: Path) -> int:
    with contextlib.suppress(Exception):
        return int(checkpoint(run_dir)["epoch"])
    return 0


def job_of(env: dict, cwd: Path) -> str | None:
    """The SLURM job id of the one job submitted from ``cwd`` (squeue's work dir), or None."""
    for line in slurm(env, "squeue", "-h", "-o", "%i %Z").splitlines():
        job, _, workdir = line.partition(" ")
        if Path(workdir) == cwd:
            return job
    return None


def resumed_lines(folder: Path) -> list[str]:
    """The distinct "Resuming from ..." messages in the files under ``folder`` (a job logs to several)."""
    lines = set()
    for path in folder.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            lines |= {line.split(" - ", 1)[-1] for line in text.splitlines() if "Resuming from" in line}
    return sorted(lines)


def requeue_one(tmp: Path, env: dict) -> list[str]:
    """A reference sweep and one whose job is requeued mid-run: the requeued one resumes and ends identical."""
    run = (*BASE, f"trainer.epochs={REQUEUE_EPOCHS}")
    reference, requeued = sweep("reference", tmp, env, *run), sweep("requeued", tmp, env, *run)
    run_dir = tmp / "requeued" / "sweep" / "0"
    wait_until(lambda: checkpoint_epoch(run_dir) >= 2 or requeued.poll() is not None, 600)
    job, at = job_of(env, tmp / "requeued"), checkpoint_epoch(run_dir)
    if job is None or at < 2 or at >= REQUEUE_EPOCHS:
        failures = finished("reference", tmp, reference) + finished("requeued", tmp, requeued)
        return [f"no running job to requeue (job {job}, checkpoint epoch {at})", *failures]
    subprocess.run(["scontrol", "requeue", job], env=env, check=True, timeout=60)
    requeued_at = time.time()
    log(f"requeued SLURM job {job} (scontrol requeue) with its epoch-{at} checkpoint written")
    failures = finished("reference", tmp, reference) + finished("requeued", tmp, requeued)
    resumed = resumed_lines(tmp / "requeued" / "sweep")
    log(f"requeued job done {time.time() - requeued_at:.0f} s after the requeue; {resumed[-1] if resumed else ''}")
    if len(resumed) != 1 or str(run_dir / "checkpoint.pt") not in resumed[0]:
        failures.append(f"the requeued job did not resume once from {run_dir}/checkpoint.pt: {resumed}")
    tags = query(tmp / "requeued" / "mlflow.db", "SELECT r.status, t.value FROM runs r JOIN tags t "
                 "ON t.run_uuid = r.run_uuid AND t.key = 'resumed_at_epoch'")  # fmt: skip
    jobs = [status for status, role in mlflow_runs(tmp / "requeued") if role == "job"]
    if jobs != ["FINISHED"] or len(tags) != 1 or tags[0][0] != "FINISHED":
        failures.append(f"MLflow: job runs {jobs}, resumed runs {tags}: expected the one run reopened, FINISHED")
    return failures + same_training(tmp / "reference" / "sweep" / "0", run_dir)


def same_training(whole_dir: Path, resumed_dir: Path) -> list[str]:
    """The final checkpoints of the uninterrupted and the requeued run: bit-identical weights and Adam state, the
    same best epoch and per-epoch metrics."""
    import torch

    whole, resumed = checkpoint(whole_dir), checkpoint(resumed_dir)
    failures = [
        f"weights {k} differ" for k in whole["model"] if not torch.equal(whole["model"][k], resumed["model"][k])
    ]
    for a, b in zip(whole["optimizer"]["state"].values(), resumed["optimizer"]["state"].values(), strict=True):
        failures += [f"Adam state {k} differs" for k in a if torch.is_tensor(a[k]) and not torch.equal(a[k], b[k])]
    same = whole["best_metrics"] == resumed["best_metrics"] and whole["best_epoch"] == resumed["best_epoch"]
    if not same or [r["recall@20"] for r in whole["history"]] != [r["recall@20"] for r in resumed["history"]]:
        failures.append(f"metrics differ: {whole['best_metrics']} vs {resumed['best_metrics']}")
    log(f"requeued vs uninterrupted: epoch {resumed['epoch']} of both, recall@20 "
        f"{resumed['best_metrics'].get('recall@20')} vs {whole['best_metrics'].get('recall@20')}: "
        f"{'bit-identical' if not failures else 'DIFFERENT'}")  # fmt: skip
    return failures


def sacct_lines(tmp: Path) -> list[str]:
    """Without accounting, each sweep says so once and stops polling sacct (when mmlexp.sweep installs
    mmlexp.slurm_logging): no "Bypassing sacct error" warning, sacct's own error printed at most once."""
    import mmlexp.sweep  # noqa: F401  (every Hydra start imports it: does it install the filter?)

    wired = "mmlexp.slurm_logging" in sys.modules
    failures = []
    for name in ("grid", "search", "reference", "requeued"):
        lines = (tmp / name / "sweep.log").read_text(errors="replace").splitlines()
        raw = sum(SACCT_MARK in line for line in lines)
        said = sum(SACCT_SAID in line for line in lines)
        sacct = sum(line.strip() == "Slurm accounting storage is disabled" for line in lines)
        log(
            f"{name}: {said} line(s) saying accounting is disabled, {raw} submitit sacct warnings, {sacct} sacct errors"
        )
        if wired and (raw or said != 1 or sacct > 1):
            failures.append(f"{name}: {raw} submitit sacct warnings, {said} lines saying so, {sacct} sacct errors")
    if not wired:
        log("note: mmlexp.sweep does not install mmlexp.slurm_logging yet: the sacct lines are not checked")
    return failures


def run_checks(tmp: Path, env: dict) -> list[str]:
    with timed("grid and search"):
        grid = sweep("grid", tmp, env, "loss=mml,ccl", *BASE, *TINY)
        search = sweep("search", tmp, env, "hparams_search=mml_optuna", "hydra.sweeper.n_trials=2", *BASE, *TINY)
        failures = finished("grid", tmp, grid) + finished("search", tmp, search)
        for name in STORES:
            try:
                failures += check_sweep(tmp, name)
            except sqlite3.Error as err:
                failures.append(f"check_{name}: {err}")
    with timed("requeue check"):
        failures += requeue_one(tmp, env)
    return failures + sacct_lines(tmp)


def checks(tmp: Path) -> list[str]:
    with cluster(tmp) as env:
        return run_checks(tmp, env)


def main() -> int:
    return _throwaway.run(ensure_slurm(), "mmlexp-slurm-", checks, keep="TEST_SLURM_KEEP")


if __name__ == "__main__":
    sys.exit(main())

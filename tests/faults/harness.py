"""The fault suite's machinery: running ``python -m mmlexp ...`` (through the fork server ``zygote.py``, or as plain
subprocesses with ``MMLEXP_FAULTS_SUBPROCESS=1``), the scenarios and their commands, and the comparison of a
recovered run with its uninterrupted reference.

Bytes lost (must be 0): what the reference run has and the recovered run lacks or holds with other bits, counted in
bytes. Compared: every tensor of the final ``checkpoint.pt`` (model, optimizer state, best epoch's weights; their
``nbytes``), its epoch, step and per-epoch history values (8 bytes each), every tensor of ``best.pt``, the
uncompressed ``per_user.csv.gz``, the MLflow run's final metrics and the value at every step of every metric's
history (8 bytes each), and the MLflow artifacts (their size). Timings (``*_time_s``, ``interactions_per_s``,
``elapsed_s``) are not numerics and are left out. A metric logged twice at one step with the same value (an epoch
logged, then the run killed before its checkpoint, then that epoch trained again: logging is at-least-once) is not
lost: it is counted apart, as ``duplicates``.
"""

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

ZYGOTE = Path(__file__).with_name("zygote.py")
TIMINGS = ("epoch_time_s", "eval_time_s", "interactions_per_s", "wall_time_s", "elapsed_s")
# tiny runs of the embedded sample: 6 steps an epoch, one thread (the same bits on any machine)
TINY = [
    "dataset=sample",
    "num_negatives=10",
    "trainer.batch_size=8192",
    "trainer.progress=false",
    "trainer.num_threads=1",
    "eval.longtail.enabled=false",
]
SCENARIOS = {
    "single": ["trainer.epochs=3", "trainer.lr=0.001"],
    "grid": ["-m", "trainer.lr=0.001,0.002", "trainer.epochs=2"],
    "optuna": [
        "-m",
        "hydra/sweeper=mmlexp_optuna",
        "hydra.sweeper.study_name=faults",
        "hydra.sweeper.n_trials=2",
        "trainer.lr=choice(0.001,0.002)",
        "trainer.epochs=2",
    ],
}
KILL_POINTS = {
    "single": ("step", "eval", "checkpoint", "mlflow"),
    "grid": ("step", "eval", "checkpoint", "mlflow", "ledger"),
    "optuna": ("step", "eval", "checkpoint", "mlflow", "ledger"),
}


def command(scenario: str, where: Path, *extra: str) -> list[str]:
    """The scenario's command line (after ``python -m mmlexp``), its stores and run directories under ``where``."""
    stores = [
        f"tracking.uri=sqlite:///{where}/mlflow.db",
        f"tracking.artifact_location={where}/artifacts",
    ]
    if scenario == "single":
        dirs = [f"hydra.run.dir={where}/run"]
    else:
        dirs = [f"hydra.sweep.dir={where}/sweep", f"hydra.sweeper.storage=sqlite:///{where}/optuna.db"]
    args = list(SCENARIOS[scenario])
    multirun = args[:1] if args[:1] == ["-m"] else []
    return [*multirun, *TINY, *args[len(multirun) :], *stores, *dirs, *extra]


class Runner:
    """Runs ``python -m mmlexp <args>`` in a fresh process: forked from a server that has imported everything
    (``zygote.py``), or, with ``MMLEXP_FAULTS_SUBPROCESS=1``, a plain subprocess."""

    def __init__(self, base: Path):
        self.base = base
        self.plain = os.environ.get("MMLEXP_FAULTS_SUBPROCESS") == "1"
        self.server: subprocess.Popen | None = None
        self.known: set[str] = set()
        if not self.plain:
            self.server = subprocess.Popen(
                [sys.executable, str(ZYGOTE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=base
            )
            assert "ready" in self._read(), "the fork server did not start"

    def _read(self) -> dict:
        assert self.server is not None and self.server.stdout is not None
        line = self.server.stdout.readline()
        assert line, "the fork server died"
        return json.loads(line)

    def start(self, args: list[str], cwd: Path, log: Path, fault: str | None = None, ignore_sigxfsz: bool = False):
        """Start the command; returns a handle with ``pid`` and ``wait()`` (the exit code, ``-N`` for signal N)."""
        env = {k: v for k, v in os.environ.items() if k != "MMLEXP_FAULT"} | {"PYTHONUNBUFFERED": "1"}
        if fault:
            env["MMLEXP_FAULT"] = fault
        if self.plain:
            pre = (lambda: signal.signal(signal.SIGXFSZ, signal.SIG_IGN)) if ignore_sigxfsz else None
            with open(log, "w") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "mmlexp", *args], cwd=cwd, env=env, stdout=out, stderr=out, preexec_fn=pre
                )
            return proc
        request = {"args": args, "cwd": str(cwd), "env": env, "log": str(log), "ignore_sigxfsz": ignore_sigxfsz}
        self._send(request | {"modules_out": str(self.base / "modules.txt")})
        return _Forked(self, self._read()["pid"])

    def _send(self, request: dict) -> None:
        assert self.server is not None and self.server.stdin is not None
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()

    def _learn(self) -> None:
        """Import in the server what the last child imported (its next children start warm); it must stay
        single-threaded to be forked."""
        names = (self.base / "modules.txt").read_text().split() if (self.base / "modules.txt").exists() else []
        names = [n for n in names if n not in self.known]
        if names:
            self.known.update(names)
            self._send({"preload": names})
            assert self._read()["threads"] == 1, "the fork server started a thread"

    def run(self, args: list[str], cwd: Path, log: Path, fault: str | None = None) -> int:
        return self.start(args, cwd, log, fault).wait(timeout=600)

    def close(self) -> None:
        if self.server is not None:
            self.server.stdin.close()  # type: ignore[union-attr]
            self.server.wait(timeout=60)


@dataclass
class _Forked:
    runner: Runner
    pid: int

    def wait(self, timeout: float = 600) -> int:
        rc = int(self.runner._read()["rc"])
        self.runner._learn()
        return rc


# ---- what a run left behind
def tensors(tree, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a nested state, by its path."""
    out: dict[str, torch.Tensor] = {}
    if torch.is_tensor(tree):
        out[prefix] = tree
    elif isinstance(tree, dict):
        for k, v in tree.items():
            out |= tensors(v, f"{prefix}/{k}")
    elif isinstance(tree, list | tuple):
        for i, v in enumerate(tree):
            out |= tensors(v, f"{prefix}/{i}")
    return out


def tensor_bytes_lost(ref: dict, got: dict) -> int:
    theirs = tensors(got)
    lost = 0
    for path, t in tensors(ref).items():
        other = theirs.get(path)
        if other is None or other.dtype != t.dtype or other.shape != t.shape or not torch.equal(other, t):
            lost += t.numel() * t.element_size()
    return lost


def records(history: list[dict]) -> dict[tuple[int, str], float]:
    return {(int(r["epoch"]), k): float(v) for r in history for k, v in r.items() if k not in TIMINGS}


def values_lost(ref: dict, got: dict) -> int:
    """8 bytes for each value of ``ref`` missing from ``got`` or different there."""
    return 8 * sum(1 for k, v in ref.items() if k not in got or got[k] != v)


def load_or_empty(path: Path) -> dict:
    try:
        return torch.load(path, weights_only=True)
    except (OSError, RuntimeError):
        return {}


def run_dir_lost(ref_dir: Path, got_dir: Path) -> int:
    """Bytes of the reference run directory's checkpoint, best.pt and per-user metrics lost in ``got_dir``."""
    lost = 0
    ref = torch.load(ref_dir / "checkpoint.pt", weights_only=True)
    got = load_or_empty(got_dir / "checkpoint.pt")
    for key in ("model", "optimizer", "best_state", "rng"):
        lost += tensor_bytes_lost(ref.get(key, {}), got.get(key, {}))
    plain = ("epoch", "step", "best_epoch", "best_score", "bad_evals")
    lost += values_lost({k: ref[k] for k in plain}, {k: got[k] for k in plain if k in got})
    lost += values_lost(records(ref["history"]), records(got.get("history", [])))
    lost += values_lost(dict(ref["best_metrics"]), dict(got.get("best_metrics", {})))
    ref_best = torch.load(ref_dir / "best.pt", weights_only=True)
    lost += tensor_bytes_lost(ref_best["state_dict"], load_or_empty(got_dir / "best.pt").get("state_dict", {}))
    ref_users = gzip.decompress((ref_dir / "per_user.csv.gz").read_bytes())
    users = got_dir / "per_user.csv.gz"
    lost += 0 if users.exists() and gzip.decompress(users.read_bytes()) == ref_users else len(ref_users)
    leftovers = list(got_dir.glob(".*.tmp"))
    assert not leftovers, f"temporary files left in {got_dir}: {leftovers}"
    return lost


def mlflow_state(client: MlflowClient, run) -> tuple[dict, dict, int, dict]:
    """(final metrics, history {(key, step): value}, duplicated history rows, artifacts {path: size}) of a run."""
    final = {k: v for k, v in run.data.metrics.items() if k not in TIMINGS}
    history: dict[tuple[str, int], float] = {}
    duplicates = 0
    for key in final:
        rows = client.get_metric_history(run.info.run_id, key)
        seen = Counter(m.step for m in rows)
        duplicates += sum(n - 1 for n in seen.values())
        for m in rows:
            if (key, m.step) in history and history[(key, m.step)] != m.value:
                history[(key, m.step)] = float("nan")  # two different values at one step: never equal
            else:
                history[(key, m.step)] = m.value
    artifacts = {a.path: a.file_size or 0 for a in client.list_artifacts(run.info.run_id) if not a.is_dir}
    return final, history, duplicates, artifacts


def mlflow_lost(ref: tuple, got: tuple) -> int:
    ref_final, ref_history, _, ref_artifacts = ref
    got_final, got_history, _, got_artifacts = got
    lost = values_lost(ref_final, got_final) + values_lost(ref_history, got_history)
    # config.yaml names the run's own paths (its store, its run directory), and so does the config inside best.pt
    # (whose tensors run_dir_lost compares): for those two, only that they are logged
    paths_inside = ("config.yaml", "best.pt")
    differ = [p for p, size in ref_artifacts.items() if got_artifacts.get(p, -1) != size and p not in paths_inside]
    missing = [p for p in ref_artifacts if p not in got_artifacts]
    return lost + sum(ref_artifacts[p] for p in set(differ) | set(missing))


def children(uri: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("mmlexp")
    runs = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
    return [r for r in runs if r.data.tags.get("sweep.role") != "parent"]


def all_runs(uri: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("mmlexp")
    return client.search_runs([exp.experiment_id], max_results=1000) if exp else []


def copy_stores(template: Path, where: Path, *names: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(template / name, where / name)


def wait_stopped(pid: int, timeout: float = 300) -> None:
    """Wait until process ``pid`` is stopped (``SIGSTOP``, the fault hook's ``stop`` action)."""
    import psutil

    proc, deadline = psutil.Process(pid), time.time() + timeout
    while proc.status() != psutil.STATUS_STOPPED:
        assert time.time() < deadline, f"process {pid} never stopped"
        time.sleep(0.05)

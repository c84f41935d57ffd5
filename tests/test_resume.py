"""One run survives: a run killed after epoch k and restarted ends identical to an uninterrupted one; bad
checkpoints are refused with a clear error; runs left RUNNING by dead processes are closed; a diverging run
fails with a clear message."""

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from mmlexp.checkpoint import CHECKPOINT_FILE
from mmlexp.config import ConfigError
from mmlexp.run import train
from mmlexp.train import Diverged, TrainSettings, fit

RUN = ["trainer.progress=false", "num_negatives=10", "trainer.num_threads=1"]


def cli(tmp_path: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mmlexp",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        f"tracking.artifact_location={tmp_path}/artifacts",
        *RUN,
        *overrides,
    ]


def runs(tmp_path: Path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def running_runs(tmp_path: Path) -> list:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{tmp_path / 'mlflow.db'}?mode=ro", uri=True)) as db:
            return db.execute("SELECT run_uuid FROM runs WHERE status = 'RUNNING'").fetchall()
    except sqlite3.Error:
        return []


def checkpoint_epoch(run_dir: Path) -> int:
    try:
        return torch.load(run_dir / CHECKPOINT_FILE, weights_only=True)["epoch"]
    except (OSError, RuntimeError, EOFError):
        return 0


def test_a_run_killed_after_epoch_k_ends_identical_to_an_uninterrupted_one(tmp_path):
    epochs = ["trainer.epochs=5"]
    subprocess.run(cli(tmp_path, *epochs, f"hydra.run.dir={tmp_path}/whole"), check=True, capture_output=True)
    cut = cli(tmp_path, *epochs, f"hydra.run.dir={tmp_path}/cut")
    proc = subprocess.Popen(cut, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while checkpoint_epoch(tmp_path / "cut") < 2:
        assert proc.poll() is None and time.time() < deadline, "the run ended before its second checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = checkpoint_epoch(tmp_path / "cut")
    assert 2 <= killed_at < 5
    again = subprocess.run(cut, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Resuming from {tmp_path}/cut/{CHECKPOINT_FILE} (epoch {killed_at}" in again.stdout + again.stderr
    whole = torch.load(tmp_path / "whole" / CHECKPOINT_FILE, weights_only=True)
    resumed = torch.load(tmp_path / "cut" / CHECKPOINT_FILE, weights_only=True)
    for key in whole["model"]:
        assert torch.equal(whole["model"][key], resumed["model"][key]), key  # bit-identical on the CPU
    for a, b in zip(whole["optimizer"]["state"].values(), resumed["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k]))
    assert whole["best_metrics"] == resumed["best_metrics"] and whole["best_epoch"] == resumed["best_epoch"]
    assert [r["recall@20"] for r in whole["history"]] == [r["recall@20"] for r in resumed["history"]]
    by_dir = {r.data.tags.get("resumed_at_epoch"): r for r in runs(tmp_path)}
    run = by_dir[str(killed_at)]  # the killed run was reopened and finished, not duplicated
    assert run.info.status == "FINISHED" and len(runs(tmp_path)) == 2


@pytest.fixture
def finished_run(make_cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = make_cfg(*RUN, "trainer.epochs=1", "trainer.max_steps=3")
    train(cfg)
    (path,) = Path(tmp_path, "outputs").glob(f"*/*/{CHECKPOINT_FILE}")
    return path


@pytest.mark.parametrize(
    "setting, message",
    [
        ("{tmp}/nowhere.pt", r"trainer.resume='.*nowhere.pt': no checkpoint at .*allowed: auto, never"),
        ("{tmp}/garbage.pt", r"cannot load the checkpoint .*garbage.pt"),
        ("{tmp}/other.pt", r"not an mmlexp checkpoint"),
    ],
)
def test_a_missing_or_broken_checkpoint_is_a_clear_error(make_cfg, tmp_path, monkeypatch, setting, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match=message):
        train(make_cfg(*RUN, "trainer.epochs=1", f"trainer.resume={setting.format(tmp=tmp_path)}"))
    assert runs(tmp_path) == [] if (tmp_path / "mlflow.db").exists() else True  # no run was started


def test_a_checkpoint_of_another_model_shape_is_refused(make_cfg, finished_run):
    with pytest.raises(ConfigError, match=r"another model shape \(.*\[.*, 64\] there, \[.*, 32\] here"):
        train(make_cfg(*RUN, "encoder.dim=32", f"trainer.resume={finished_run}"))


def test_a_checkpoint_of_another_dataset_is_refused(make_cfg, finished_run):
    state = torch.load(finished_run, weights_only=True)
    state["dataset"] = {**state["dataset"], "users": 1}
    torch.save(state, finished_run)
    with pytest.raises(ConfigError, match=r"another dataset \(users: 1 there, \d+ here"):
        train(make_cfg(*RUN, f"trainer.resume={finished_run.parent}"))


def test_auto_resume_refuses_a_run_directory_of_other_settings(tmp_path):
    first = subprocess.run(
        cli(tmp_path, "trainer.epochs=1", "trainer.max_steps=3", f"hydra.run.dir={tmp_path}/r"),
        capture_output=True,
        text=True,
    )
    assert first.returncode == 0, first.stderr[-2000:]
    other = subprocess.run(
        cli(tmp_path, "trainer.epochs=1", "loss=ccl", f"hydra.run.dir={tmp_path}/r"), capture_output=True, text=True
    )
    assert other.returncode == 2 and "holds the checkpoint of a run with other settings (loss." in other.stderr
    assert "Traceback" not in other.stderr


def test_a_single_run_killed_with_kill_9_is_closed_by_the_next_run(tmp_path):
    proc = subprocess.Popen(
        cli(tmp_path, "trainer.epochs=1000"), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while not running_runs(tmp_path):  # read-only: the run owns the store while it creates its tables
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (dead,) = runs(tmp_path)
    assert dead.info.status == "RUNNING"
    subprocess.run(
        cli(tmp_path, "trainer.epochs=1", "trainer.max_steps=2"), cwd=tmp_path, check=True, capture_output=True
    )
    closed = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(dead.info.run_id)
    assert closed.info.status == "KILLED"
    assert closed.data.tags["mmlexp.killed"].startswith(f"left RUNNING: process {proc.pid} on ")


def test_a_diverging_run_fails_with_one_clear_line(tmp_path):
    proc = subprocess.run(
        cli(
            tmp_path, "trainer.epochs=2", "trainer.lr=1e30", "encoder.similarity=dot", "loss=mse", "trainer.log_every=1"
        ),
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "mmlexp: error: the run FAILED: diverged at epoch 1, step " in proc.stderr
    (run,) = runs(tmp_path)
    assert run.info.status == "FAILED" and run.data.tags["failure"].startswith("diverged at epoch 1, step ")


class _Constant(torch.nn.Module):
    """A model whose loss is NaN from a known step on (the third)."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(4, 2))
        self.calls = 0

    def embedding_tables(self):
        return [self.table]

    def forward(self, users, items, negatives):
        self.calls += 1
        value = float("nan") if self.calls >= 3 else 0.0
        return self.table[items].sum(-1, keepdim=True) + value


def test_fit_stops_at_the_first_check_after_a_non_finite_loss():
    model = _Constant()

    class Sampler:
        def sample(self, users, items, model):
            return items[:, None]

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    users, items = torch.zeros(8, dtype=torch.long), torch.arange(8) % 4
    settings = TrainSettings(epochs=3, batch_size=2, log_every=2, clip_grad_norm=None, progress=False, l2=0.0)
    with pytest.raises(Diverged, match=r"diverged at epoch 1, step 4 \(loss nan\)") as err:
        fit(model, lambda scores, users: scores.mean(), Sampler(), optimizer, users, items, lambda: {}, settings)
    assert (err.value.epoch, err.value.step) == (1, 4)  # NaN at step 3, seen at the next log_every check


def test_resume_state_holds_everything_fit_needs(make_cfg, finished_run):
    state = torch.load(finished_run, weights_only=True)
    expected = {
        "model",
        "optimizer",
        "rng",
        "epoch",
        "step",
        "best_epoch",
        "best_metrics",
        "best_state",
        "history",
        "best_score",
        "bad_evals",
        "elapsed_s",
        "stopped_early",
        "dataset",
        "shapes",
        "run_id",
        "config",
    }
    assert expected <= set(state)
    assert state["epoch"] == 1 and state["step"] == 3 and os.path.basename(finished_run) == CHECKPOINT_FILE

"""The real entrypoint, `python -m mmlexp`, on the embedded sample with tiny settings."""

import os
import subprocess
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient


def cli(tmp_path, *overrides) -> list[str]:
    """``python -m mmlexp`` tracked into ``tmp_path``, run directory ``tmp_path/run``, no progress bar."""
    return [
        sys.executable,
        "-m",
        "mmlexp",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        f"tracking.artifact_location={tmp_path}/artifacts",
        f"hydra.run.dir={tmp_path}/run",
        "trainer.progress=false",
        *overrides,
    ]


def run_cli(tmp_path, *overrides, check=True):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(cli(tmp_path, *overrides), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def runs(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("mmlexp")
    return client, client.search_runs([exp.experiment_id])


def test_sample_run_logs_metrics_params_and_checkpoint(tmp_path):
    proc = run_cli(tmp_path, "trainer.epochs=2", "num_negatives=20")
    assert "best epoch" in proc.stdout and "recall@20" in proc.stdout
    client, found = runs(tmp_path)
    assert len(found) == 1
    run = found[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["sampler.num_negatives"] == "20"
    assert run.data.params["loss._target_"] == "mmlexp.losses.mml.MultiMarginLoss"
    assert run.data.tags["dataset"] == "sample" and run.data.tags["choice.loss"] == "mml"
    # the CPU it ran on: its kernels' capability decides the float summation order (bit-identity across machines)
    assert run.data.tags["cpu.capability"] == torch.backends.cpu.get_cpu_capability() and run.data.tags["cpu"]
    for key in ("best/recall_at_20", "best/ndcg_at_50", "train_loss", "interactions_per_s", "epoch_time_s"):
        assert key in run.data.metrics, key
    history = client.get_metric_history(run.info.run_id, "recall_at_20")
    assert [m.step for m in history] == [1, 2]
    assert (tmp_path / "run" / "best.pt").exists()
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "best.pt"} <= artifacts


def test_sample_run_learns_beyond_random_ranking(tmp_path):
    """Default `make run` setting (MF + MML on sample): Recall@20 far above a random ranking's."""
    from mmlexp.data import load_dataset
    from mmlexp.run import load_checkpoint

    run_cli(tmp_path, "trainer.epochs=3")
    _, (run,) = runs(tmp_path)
    data = load_dataset("sample")
    random_recall = 20 / data.n_items  # expected Recall@20 of a uniformly random ranking (about)
    assert run.data.metrics["best/recall_at_20"] > 10 * random_recall
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert ckpt["metrics"]["recall@20"] == pytest.approx(run.data.metrics["best/recall_at_20"])


def test_same_seed_same_metrics(tmp_path):
    outputs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        outputs.append(run_cli(tmp_path / name, "trainer.epochs=1", "trainer.max_steps=20"))
    a, b = outputs

    def line(proc):
        return next(text for text in proc.stdout.splitlines() if text.startswith("best epoch"))

    assert line(a) == line(b)


def test_failed_run_is_marked_failed(tmp_path):
    # a run that diverges fails inside the run, after it is tracked (K above the item count: refused before it)
    proc = run_cli(
        tmp_path,
        "trainer.max_steps=2",
        "trainer.lr=1e30",
        "encoder.similarity=dot",
        "loss=mse",
        "trainer.log_every=1",
        check=False,
    )
    assert proc.returncode != 0
    _, found = runs(tmp_path)
    assert [r.info.status for r in found] == ["FAILED"]


def test_sigterm_marks_the_run_killed(tmp_path):
    import signal
    import time

    proc = subprocess.Popen(
        cli(tmp_path, "trainer.epochs=1000"), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 600
    while time.time() < deadline:  # wait until the run is tracked (RUNNING)
        time.sleep(1)
        try:
            if runs(tmp_path)[1]:
                break
        except Exception:  # store or experiment not created yet
            pass
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    client, found = runs(tmp_path)
    assert [r.info.status for r in found] == ["KILLED"]


def test_an_interrupt_a_library_wrapped_still_marks_the_run_killed(make_cfg, monkeypatch, tmp_path):
    """A signal lands wherever Python is: inside numba's dispatcher the interrupt comes out as a ``SystemError``
    (seen: SIGTERM during a step's first ``entries_by_row`` call marked the run FAILED). It is still an interrupt."""
    import mmlexp.run as run

    def fit(*args, **kwargs):
        try:
            raise KeyboardInterrupt("signal 15")
        except KeyboardInterrupt as err:  # what numba's dispatcher does with an exception raised inside it
            raise SystemError("CPUDispatcher(entries_by_row) returned a result with an exception set") from err

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run, "fit", fit)
    cfg = make_cfg("trainer.epochs=1", "tracking.save_checkpoint=false")
    with pytest.raises(KeyboardInterrupt, match="signal 15"):
        run.train(cfg)
    _, found = runs(tmp_path)
    assert [r.info.status for r in found] == ["KILLED"]
    other = SystemError("not an interrupt")
    assert run.interrupt_behind(other) is None and run.interrupt_behind(KeyboardInterrupt()) is not None


def test_a_requeue_exit_a_library_wrapped_still_exits(make_cfg, monkeypatch, tmp_path):
    """submitit's USR2 handler requeues a preempted job, then calls ``sys.exit(-1)``; landing inside numba's
    dispatcher that ``SystemExit`` came out as a ``SystemError``, and the grid counted a failed point instead of
    letting the job exit to be requeued (test_requeue failed so in CI). It leaves ``train`` as the exit it is."""
    import mmlexp.run as run

    def fit(*args, **kwargs):
        try:
            sys.exit(-1)
        except SystemExit as err:
            raise SystemError("CPUDispatcher(entries_by_row) returned a result with an exception set") from err

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run, "fit", fit)
    cfg = make_cfg("trainer.epochs=1", "tracking.save_checkpoint=false")
    with pytest.raises(SystemExit) as caught:
        run.train(cfg)
    assert caught.value.code == -1 and isinstance(caught.value.__cause__, SystemError)
    _, found = runs(tmp_path)
    assert [r.info.status for r in found] == ["KILLED"]


def test_an_interrupt_wrapped_during_set_up_leaves_as_an_interrupt(make_cfg, monkeypatch, tmp_path):
    """Before the run is tracked (data set-up runs numba kernels too) a wrapped interrupt still leaves ``train`` as a
    ``KeyboardInterrupt``, so a sweep stops instead of counting a failed point; other errors pass unchanged."""
    import mmlexp.run as run

    def load_split(cfg):
        try:
            raise KeyboardInterrupt("signal 15")
        except KeyboardInterrupt as err:
            raise SystemError("CPUDispatcher(holdout) returned a result with an exception set") from err

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run, "load_split", load_split)
    cfg = make_cfg("trainer.epochs=1", "tracking.save_checkpoint=false")
    with pytest.raises(KeyboardInterrupt, match="signal 15") as caught:
        run.train(cfg)
    assert isinstance(caught.value.__cause__, SystemError)
    monkeypatch.setattr(run, "load_split", lambda cfg: (_ for _ in ()).throw(SystemError("not an interrupt")))
    with pytest.raises(SystemError, match="not an interrupt"):
        run.train(cfg)


def test_num_threads_holds_in_a_fresh_process_after_numba_starts(tmp_path):
    """numba's OpenMP pool, started by a process's first parallel kernel, resets torch's intra-op threads to all
    cores; ``trainer.num_threads`` must still hold after the run's kernels ran."""
    script = f"""
import torch
from hydra import compose, initialize_config_dir
from mmlexp.__main__ import CONFIG_DIR
from mmlexp.run import train
overrides = ["dataset=sample", "trainer.epochs=1", "trainer.progress=false", "trainer.num_threads=1",
             "tracking.uri=sqlite:///{tmp_path}/mlflow.db", "tracking.save_checkpoint=false"]
with initialize_config_dir(config_dir=CONFIG_DIR):
    train(compose("config", overrides=overrides))
import numba
print(torch.get_num_threads(), numba.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
"""
    env = dict(os.environ, OMP_NUM_THREADS="2", NUMBA_NUM_THREADS="2")  # a pool of 2: the reset is visible
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    torch_threads, numba_threads, pool = map(int, out.stdout.split()[-3:])
    assert pool == 2 and (torch_threads, numba_threads) == (1, 1)

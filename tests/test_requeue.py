"""Preemption: a submitit job (hydra/launcher=slurm_example on a cluster) is checkpointed and requeued with the same
arguments, hence the same run directory. Tested without SLURM: the launcher's checkpoint hook, and a real
preemption (SIGTERM then USR2, as SLURM sends them) of a job of the submitit *local* executor, which requeues the
same way."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_slurm_example_composes_with_requeue_settings():
    with initialize_config_dir(config_dir=str(CONF)):
        cfg = compose(
            "config", return_hydra_config=True, overrides=["hparams_search=mml_optuna", "hydra/launcher=slurm_example"]
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.max_num_timeout > 0 and launcher.signal_delay_s > 0  # time limits are requeued too
    assert cfg.hydra.sweeper.n_jobs == launcher.array_parallelism


def test_the_launchers_checkpoint_resubmits_the_same_job():
    """submitit calls ``launcher.checkpoint(*args)`` on preemption and requeues what it returns: the same job
    number, overrides and sweep dir key, so the job runs again in ``hydra.sweep.dir/<num>``."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

    with initialize_config_dir(config_dir=str(CONF)):
        cfg = compose("config", return_hydra_config=True, overrides=["hydra/launcher=slurm_example"])
    params = {k: v for k, v in OmegaConf.to_container(cfg.hydra.launcher).items() if k != "_target_"}
    launcher = SlurmLauncher(**params)
    args = (["trainer.epochs=3", "+hydra.job.env_set.MMLEXP_OPTUNA_TRIAL=7"], "hydra.sweep.dir", 7, "job_id_for_7", {})
    delayed = launcher.checkpoint(*args)
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert delayed.function is launcher and delayed.args == args


def _job_log(tmp_path: Path) -> Path | None:
    logs = list(tmp_path.glob("multirun/*/*/0/*.log"))
    return logs[0] if logs else None


def _task(proc: subprocess.Popen) -> psutil.Process | None:
    """The submitit task process that runs the job (under the local controller)."""
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if "submitit.core._submit" in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            pass
    return None


def test_a_preempted_submitit_job_is_requeued_in_the_same_run_directory(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "mmlexp",
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=60",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        f"tracking.artifact_location={tmp_path}/artifacts",
        "trainer.epochs=20",
        "trainer.progress=false",
        "num_negatives=10",
        "trainer.batch_size=1024",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        deadline, preempted = time.time() + 400, None
        while time.time() < deadline and proc.poll() is None:
            log = _job_log(tmp_path)
            if log is not None and "epoch 1 " in log.read_text():
                preempted = _task(proc)
                if preempted is not None:
                    break
            time.sleep(0.2)
        assert preempted is not None, "job 0 never reached epoch 1"
        preempted.send_signal(signal.SIGTERM)  # SLURM: SIGTERM first (submitit ignores it; so must mmlexp)...
        time.sleep(1.0)
        preempted.send_signal(signal.SIGUSR2)  # ...then the signal that checkpoints and requeues
        out, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]
    (sweep_dir,) = tmp_path.glob("multirun/*/*")
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()) == ["0"]
    submitit_logs = "".join(p.read_text() for p in (sweep_dir / ".submitit").rglob("*_log.*"))
    assert "this job is preempted" in submitit_logs and "Requeued job" in submitit_logs, submitit_logs[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("mmlexp").experiment_id])
    job0 = [r for r in runs if r.data.tags.get("sweep.job_num") == "0"]
    # the requeued attempt resumes from the preempted one's last checkpoint (same run directory: trainer.resume=auto)
    # and continues its MLflow run, which ends FINISHED: one run, not a KILLED one and a FINISHED one
    assert [r.info.status for r in job0] == ["FINISHED"]
    assert int(job0[0].data.tags["resumed_at_epoch"]) >= 1
    assert all(r.data.tags.get("sweep.dir") == str(sweep_dir.resolve()) for r in job0)

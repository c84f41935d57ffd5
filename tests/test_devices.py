"""Device choice: parallel sweep jobs spread over the visible GPUs (GPU count mocked), single runs unchanged."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

import mmlexp.devices as devices
from mmlexp.config import ConfigError
from mmlexp.devices import claim_gpu, resolve_device

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture
def gpus(monkeypatch):
    """``n`` fake visible GPUs; returns the list of devices passed to torch.cuda.set_device."""
    chosen = []

    def set_gpus(n: int):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "set_device", lambda d: chosen.append(str(d)))
        return chosen

    monkeypatch.setattr(devices, "_held", None)
    yield set_gpus
    if devices._held is not None:
        devices._held.close()


def job(tmp_path: Path, num: int, *launcher: str, mode: str = "MULTIRUN") -> None:
    """Hydra's config of job ``num`` of a sweep in ``tmp_path`` with the given launcher overrides."""
    with initialize_config_dir(config_dir=str(CONF)):
        cfg = compose(
            "config",
            return_hydra_config=True,
            overrides=[f"hydra.sweep.dir={tmp_path}/multirun", f"hydra.job.num={num}", f"hydra.mode={mode}", *launcher],
        )
    HydraConfig.instance().set_config(cfg)


JOBLIB = ("hydra/launcher=joblib", "hydra.launcher.n_jobs=4")


def test_parallel_jobs_get_one_gpu_each(tmp_path, gpus):
    gpus(4)
    got, held = [], []
    for num in range(4):  # four jobs at once, as if each in its own process: each keeps its slot
        job(tmp_path, num, *JOBLIB)
        got.append(str(resolve_device("auto")))
        held.append(devices._held)
        devices._held = None
    assert got == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    for f in held:
        f.close()


def test_the_least_busy_gpu_wins_over_the_job_number(tmp_path, gpus):
    """joblib runs a long grid through its workers: job 4 starts when job 2 ends, and gets GPU 2, not GPU 0."""
    gpus(4)
    slots = tmp_path / "slots"
    held = [claim_gpu(slots, 4, 1, prefer=g)[1] for g in range(4)]
    held[2].close()  # job 2 ended
    gpu, f = claim_gpu(slots, 4, 1, prefer=4 % 4)
    assert gpu == 2
    for h in held + [f]:
        h.close()


def test_jobs_per_gpu_fills_each_gpu_then_shares_with_a_warning(tmp_path, caplog):
    slots = tmp_path / "slots"
    claims = [claim_gpu(slots, 2, 2, prefer=n % 2) for n in range(4)]
    assert sorted(g for g, _ in claims) == [0, 0, 1, 1]
    assert "jobs_per_gpu" not in caplog.text
    gpu, extra = claim_gpu(slots, 2, 2, prefer=0)
    assert gpu == 0 and "every GPU already runs 2 job(s)" in caplog.text
    for _, f in claims + [(gpu, extra)]:
        f.close()


def test_a_worker_releases_its_slot_when_it_starts_its_next_job(tmp_path, gpus):
    gpus(2)
    job(tmp_path, 0, *JOBLIB)
    assert str(resolve_device("cuda")) == "cuda:0"
    job(tmp_path, 2, *JOBLIB)  # the same worker process, next job: its own slot is free again
    assert str(resolve_device("cuda")) == "cuda:0"
    job(tmp_path, 3, *JOBLIB)
    assert str(resolve_device("auto")) == "cuda:1"  # all GPUs free again: its own by job number


def test_a_killed_job_frees_its_slot(tmp_path):
    slots = tmp_path / "slots"
    code = (
        f"from pathlib import Path; from mmlexp.devices import claim_gpu; "
        f"g, f = claim_gpu(Path({str(slots)!r}), 2, 1, prefer=0); print(g, flush=True); import time; "
        f"time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "0"
        gpu, f = claim_gpu(slots, 2, 1, prefer=0)
        assert gpu == 1  # GPU 0 is held by the other process
        f.close()
    finally:
        proc.kill()
        proc.wait()
    gpu, f = claim_gpu(slots, 2, 1, prefer=0)
    assert gpu == 0  # kill -9: the lock went with the process
    f.close()


def test_submitit_local_jobs_spread_too(tmp_path, gpus):
    gpus(2)
    job(tmp_path, 1, "hydra/launcher=submitit_local")
    assert str(resolve_device("auto")) == "cuda:1"
    assert gpus(2) == ["cuda:1"]  # torch's default CUDA device follows


@pytest.mark.parametrize(
    "case, launcher, n_gpus, name, expected",
    [
        ("explicit index", JOBLIB, 4, "cuda:3", "cuda:3"),
        ("one gpu", JOBLIB, 1, "auto", "cuda"),
        ("cpu", JOBLIB, 4, "cpu", "cpu"),
        ("no gpu", JOBLIB, 0, "auto", "cpu"),
        ("basic launcher", (), 4, "auto", "cuda"),
        ("joblib one job at a time", ("hydra/launcher=joblib", "hydra.launcher.n_jobs=1"), 4, "auto", "cuda"),
        ("slurm", ("hydra/launcher=slurm_example",), 4, "auto", "cuda"),
    ],
)
def test_unchanged_cases(tmp_path, gpus, case, launcher, n_gpus, name, expected):
    gpus(n_gpus)
    job(tmp_path, 1, *launcher)
    assert str(resolve_device(name)) == expected
    assert not (tmp_path / "multirun" / ".gpu_slots").exists()


def test_a_single_run_is_unchanged(tmp_path, gpus):
    gpus(4)
    job(tmp_path, 1, *JOBLIB, mode="RUN")
    assert str(resolve_device("auto")) == "cuda"
    HydraConfig.instance().cfg = None  # not under Hydra at all (a notebook)
    assert str(resolve_device("auto")) == "cuda"


def test_cuda_without_a_gpu_is_a_clear_error(gpus):
    gpus(0)
    with pytest.raises(ConfigError, match="CUDA is not available here"):
        resolve_device("cuda")


def test_cpu_tags_name_the_model_family_and_torch_capability(tmp_path):
    from mmlexp.devices import cpu_tags

    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 23\nmodel\t\t: 1\nmodel name\t: AMD EPYC\n\n"
        "processor\t: 1\ncpu family\t: 23\nmodel\t\t: 1\nmodel name\t: AMD EPYC\n"
    )
    tags = cpu_tags(info)
    assert tags["cpu"] == "AMD EPYC (family 23, model 1)"
    assert tags["cpu.capability"] == torch.backends.cpu.get_cpu_capability()
    assert cpu_tags(tmp_path / "absent")["cpu"]  # no cpuinfo (macOS, Windows): platform's name, never empty

"""Which device a run trains on: ``device=auto|cpu|cuda|cuda:N``; parallel sweep jobs spread over the GPUs.

Inside a multirun whose launcher runs jobs side by side on this machine (``hydra/launcher=joblib`` with
``n_jobs`` != 1, ``submitit_local``) and with several visible GPUs, ``device=auto`` or ``device=cuda`` picks one
GPU per job: a free slot (``jobs_per_gpu`` per GPU) on the least busy GPU, GPU ``job_num % n_gpus`` first. A slot is
a lock file (``<sweep dir>/.gpu_slots/<host>/gpu<k>-<slot>.lock``) held while the job runs: released when its
process ends (even by ``kill -9``) or when the same worker process starts its next job. When every slot is
taken, the job shares the least busy GPU (a warning says so). ``device=cuda:N`` is always used as given; a
single GPU, the CPU, a single run and the basic launcher are unchanged.
"""

import contextlib
import logging
import os
import socket
from pathlib import Path
from typing import Any

import torch

from mmlexp.config import ConfigError
from mmlexp.hooks import in_multirun

log = logging.getLogger(__name__)

_held: Any = None  # the open lock file of the slot this process holds (one job at a time per process)


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """What the CPU is: model name, family and model from ``cpuinfo`` where there is one, else
    ``platform.processor()`` (the ``cpu`` tag of a run)."""
    import platform

    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields:
        name += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return name


def cpu_tags(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """What the CPU is (``cpu``: ``cpu_name``) and which vector kernels torch dispatches on it (``cpu.capability``:
    AVX2, AVX512, ...). Both move a run's speed, and the capability its float summation order: runs of one seed
    agree to the bit only on the same capability."""
    return {"cpu": cpu_name(cpuinfo), "cpu.capability": str(torch.backends.cpu.get_cpu_capability())}


def resolve_device(name: str, jobs_per_gpu: int = 1) -> torch.device:
    """``auto``: CUDA where available, else the CPU; ``cuda`` without a GPU is a clear error. A parallel sweep job
    on a machine with several GPUs gets ``cuda:k`` (see the module's doc), and ``cuda:k`` becomes torch's default."""
    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda" if name == "auto" else name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r}: CUDA is not available here; use device=auto or device=cpu")
    if device.type == "cuda" and device.index is None:
        gpu = job_gpu(jobs_per_gpu)
        if gpu is not None:
            device = torch.device("cuda", gpu)
            torch.cuda.set_device(device)  # code that says "cuda" without an index lands there too
    return device


def parallel_job() -> tuple[int, Path] | None:
    """(job number, slot directory) for a job that a parallel local launcher runs; None otherwise."""
    if not in_multirun():  # a single run, or not under Hydra (a notebook)
        return None
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    launcher: Any = hc.launcher or {}
    target = str(launcher.get("_target_", ""))
    joblib = "joblib" in target.lower() and launcher.get("n_jobs") not in (None, 1)
    if not (joblib or ("submitit" in target and target.endswith("LocalLauncher"))):
        return None  # the basic launcher (one job at a time), SLURM (each job its own allocation)
    sweep_dir = Path(str(hc.sweep.dir))
    if not sweep_dir.is_absolute():
        sweep_dir = Path(str(hc.runtime.cwd)) / sweep_dir
    return int(hc.job.num), sweep_dir / ".gpu_slots" / socket.gethostname()


def job_gpu(jobs_per_gpu: int = 1) -> int | None:
    """The GPU of this parallel sweep job (a slot claimed and held), or None: one GPU or none, not parallel."""
    global _held
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    job = parallel_job() if n_gpus > 1 else None
    if job is None:
        return None
    number, slots = job
    if _held is not None:  # a joblib worker's previous job: its slot is free again
        with contextlib.suppress(OSError):
            _held.close()
        _held = None
    gpu, _held = claim_gpu(slots, n_gpus, jobs_per_gpu, prefer=number % n_gpus)
    log.info(f"sweep job {number}: cuda:{gpu} of {n_gpus} GPUs (jobs_per_gpu={jobs_per_gpu})")
    return gpu


def claim_gpu(slots: Path, n_gpus: int, jobs_per_gpu: int, prefer: int = 0) -> tuple[int, Any]:
    """Take a slot on the least busy GPU (``prefer`` first among equals): (gpu, open lock file to keep)."""
    import fcntl

    slots.mkdir(parents=True, exist_ok=True)

    def busy(path: Path) -> bool:
        with open(path, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False

    load = [sum(busy(p) for p in slots.glob(f"gpu{g}-*.lock")) for g in range(n_gpus)]
    order = sorted(range(n_gpus), key=lambda g: (load[g], (g - prefer) % n_gpus))
    for gpu in order:  # two jobs may race for a slot: the loser tries the next
        for slot in range(max(jobs_per_gpu, load[gpu] + 1) + n_gpus * jobs_per_gpu):
            f = open(slots / f"gpu{gpu}-{slot}.lock", "a")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                continue
            if slot >= jobs_per_gpu:
                log.warning(
                    f"every GPU already runs {jobs_per_gpu} job(s) (jobs_per_gpu): cuda:{gpu} is shared by "
                    f"{slot + 1}; run fewer jobs at once (the launcher's n_jobs) or raise jobs_per_gpu"
                )
            f.truncate(0)
            f.write(f"{os.getpid()}\n")
            f.flush()
            return gpu, f
    return prefer, None  # not reached in practice

"""Sizes checked before anything runs (issue 31): an impossible run is refused with exit 2 and a message naming
its keys and the estimate, before anything is written; a normal run passes; the estimate is checked against a
measured peak."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmlexp import memory
from mmlexp.config import ConfigError
from mmlexp.memory import check_memory, estimate
from mmlexp.run import load_split, prepare, train
from mmlexp.train import train_step

CONF = Path(memory.__file__).parent / "conf"
HUGE = "num_negatives=100000000"  # issue 31: the allocator asked for 409,600,000,000 bytes


def sizes(cfg):
    data, fit_train, _ = load_split(cfg)
    return data.n_users, data.n_items, fit_train.nnz


def written(tmp_path: Path) -> list[str]:
    """Everything under ``tmp_path`` but the config Hydra itself writes to a run directory."""
    return sorted(
        str(p.relative_to(tmp_path))
        for p in tmp_path.rglob("*")
        if p.is_file() and ".hydra" not in p.parts and p.name not in ("__main__.log",)
    )


def test_impossible_negatives_exit_2_naming_the_keys_before_anything_is_written(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "mmlexp",
        HUGE,
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        f"tracking.artifact_location={tmp_path}/artifacts",
        f"hydra.run.dir={tmp_path}/run",
        "trainer.progress=false",
    ]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert time.monotonic() - start < 120  # the time to start Python and load the sample; nothing is trained
    err = proc.stderr
    assert "Traceback" not in err and "RuntimeError" not in err
    for part in ("num_negatives=100000000", "trainer.batch_size=512", "GiB", "available", "trainer.memory_check=false"):
        assert part in err, (part, err)
    assert not (tmp_path / "mlflow.db").exists()
    assert written(tmp_path) == [], written(tmp_path)  # no store, no checkpoint, no artifacts


def test_impossible_negatives_refused_in_process_with_no_store_and_no_run_dir(make_cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"num_negatives=100000000.*estimate.*more than the"):
        train(make_cfg(HUGE))
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "outputs").exists()


def test_sample_config_passes_and_memory_check_false_skips(make_cfg, monkeypatch):
    cfg = make_cfg()
    users, items, nnz = sizes(cfg)
    est = check_memory(cfg, users, items, nnz, torch.device("cpu"))
    assert 0 < est.total < memory.available_bytes(torch.device("cpu"))[0]
    monkeypatch.setattr(memory, "available_bytes", lambda device: (est.total - 1, "test memory"))
    with pytest.raises(ConfigError, match="test memory"):
        check_memory(cfg, users, items, nnz, torch.device("cpu"))
    check_memory(make_cfg("trainer.memory_check=false"), users, items, nnz, torch.device("cpu"))


def test_memory_check_must_be_a_bool(make_cfg):
    with pytest.raises(ConfigError, match="trainer.memory_check='maybe': must be true or false"):
        train(make_cfg("trainer.memory_check=maybe"))


def test_estimate_grows_with_the_keys_it_names(make_cfg):
    users, items, nnz = sizes(make_cfg())
    cpu = torch.device("cpu")
    base = estimate(make_cfg("num_negatives=100"), users, items, nnz, cpu)
    more = estimate(make_cfg("num_negatives=100000"), users, items, nnz, cpu)
    graph = estimate(make_cfg("encoder=lightgcn", "num_negatives=100"), users, items, nnz, cpu)
    assert more.total > base.total and more.largest() == "step"
    assert graph.total > base.total and "adjacency" in graph.resident


MEASURE = """
import gc, json, sys
import torch
from hydra import compose, initialize_config_dir
import mmlexp.evaluation.ranking as ranking
from mmlexp.memory import estimate
from mmlexp.run import prepare
from mmlexp.train import train_step


def peak_rss_during(fn):
    gc.collect()
    with open("/proc/self/status") as f:
        before = next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) * 1024
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    fn()
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) * 1024 - before


if sys.argv[2] == "fp32":  # the kernel of CPUs without bf16 matrix products
    ranking._cpu_bf16_matmul = lambda: False
with initialize_config_dir(config_dir=sys.argv[1], version_base=None):
    cfg = compose("config", overrides=sys.argv[3:])
setup = prepare(cfg)
p = setup.parts
users, items = setup.users[:512], setup.items[:512]
step = lambda: train_step(p.model, p.loss_fn, p.sampler, p.optimizer, users, items, setup.settings)
step()  # compiles the kernels (numba) and builds the optimizer's state
setup.evaluate()  # the same for the evaluation
est = estimate(cfg, setup.data.n_users, setup.data.n_items, setup.fit_train.nnz, torch.device("cpu"))
print(json.dumps({
    "step": peak_rss_during(step), "evaluation": peak_rss_during(setup.evaluate),
    "estimated_step": sum(est.step.values()), "estimated_evaluation": sum(est.evaluation.values()),
}))
"""


def _can_reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _can_reset_peak(), reason="needs Linux /proc/self/clear_refs to measure a peak")
@pytest.mark.parametrize("kernel", ["auto", "fp32"])
def test_step_and_evaluation_estimates_within_a_factor_2_of_the_measured_peak(tmp_path, kernel):
    """A step of B=512 rows x N=20000 negatives (each tensor past glibc's largest mmap threshold, 32 MiB, so freed
    memory leaves the resident set) and one full-ranking evaluation, measured by the resident high-water mark of a
    fresh process (in this one, memory earlier tests freed but kept would hide the peak). The evaluation runs the
    kernel this CPU picks (the bf16 screen where oneDNN has bf16 products: its re-scored candidates weigh most
    here) and the fp32 blocked kernel of the other CPUs."""
    overrides = [
        "num_negatives=20000",
        "trainer.batch_size=512",
        "eval.chunk_size=4096",  # every user in one block: 3847 x 2995 scores, past the mmap threshold too
        "tracking.enabled=false",
        "trainer.num_threads=1",
        "trainer.progress=false",
    ]
    cmd = [sys.executable, "-c", MEASURE, str(CONF), kernel, *overrides]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["estimated_step"] / 2 <= got["step"] <= got["estimated_step"] * 2, got
    assert got["estimated_evaluation"] / 4 <= got["evaluation"] <= got["estimated_evaluation"] * 2, got


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_step_estimate_within_a_factor_3_of_the_allocator_peak(make_cfg, tmp_path, monkeypatch):
    """On the GPU the step gathers [B, 1 + N, d] rows: the estimate against ``torch.cuda.max_memory_allocated``."""
    monkeypatch.chdir(tmp_path)
    cfg = make_cfg(
        "device=cuda",
        "num_negatives=20000",
        "trainer.batch_size=512",
        "tracking.enabled=false",
        "trainer.cuda_graph=off",
    )
    setup = prepare(cfg)
    p = setup.parts
    users, items = setup.users[:512], setup.items[:512]

    def step():
        train_step(p.model, p.loss_fn, p.sampler, p.optimizer, users, items, setup.settings)
        torch.cuda.synchronize()

    step()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    measured = torch.cuda.max_memory_allocated() - base
    est = estimate(cfg, setup.data.n_users, setup.data.n_items, setup.fit_train.nnz, setup.device)
    estimated = sum(est.step.values())
    assert estimated / 3 <= measured <= estimated * 3, (measured, est.step)


@pytest.mark.parametrize("sampler", sorted(p.stem for p in (CONF / "sampler").glob("*.yaml")))
@pytest.mark.parametrize("encoder", sorted(p.stem for p in (CONF / "encoder").glob("*.yaml")))
def test_every_encoder_and_sampler_has_an_estimate(make_cfg, encoder, sampler):
    cfg = make_cfg(f"encoder={encoder}", f"sampler={sampler}")
    for device in ("cpu", "cuda"):
        est = estimate(cfg, 1000, 2000, 10_000, torch.device(device))
        assert est.total > sum(est.resident.values()) > 0
        assert est.largest() in est.keys

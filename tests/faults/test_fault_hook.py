"""The fault hook (``mmlexp.faults``) and the checkpoint's own fault handling (``mmlexp.checkpoint``), without
training: a bad ``MMLEXP_FAULT`` names what is allowed, the k-th hit kills, counting writes the counts; a write that
fails leaves the previous checkpoint and no temporary file; one flipped bit is refused naming the file."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from mmlexp import faults
from mmlexp.checkpoint import load, save_atomic
from mmlexp.config import ConfigError


@pytest.fixture
def unarmed():
    yield
    faults.arm("")


@pytest.mark.parametrize("spec", ["stepp:1", "step:0", "step:x", "step:1:explode", "step"])
def test_a_bad_spec_names_the_variable_and_what_is_allowed(spec):
    with pytest.raises(ValueError, match=rf"MMLEXP_FAULT='{spec}': expected <point>:<k>\[:<action>\] with point one"):
        faults.parse(spec)


def test_unarmed_hits_do_nothing_and_count_mode_counts(tmp_path, unarmed):
    faults.arm("")
    faults.hit("step")
    assert faults._counts == {}
    faults.arm(f"count:{tmp_path}/counts.json")
    for point in ("step", "step", "eval"):
        faults.hit(point)
    assert json.loads((tmp_path / "counts.json").read_text()) == {"step": 2, "eval": 1}


def test_the_kth_hit_of_the_point_kills_the_process():
    code = "from mmlexp import faults\nfor p in ['eval', 'step', 'eval', 'step', 'step']:\n    print(p, flush=True)\n"
    code += "    faults.hit(p)"
    env = dict(os.environ, MMLEXP_FAULT="step:2")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9 and proc.stdout.split() == ["eval", "step", "eval", "step"]


def test_one_flipped_bit_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_atomic({"model": {"w": torch.arange(4096, dtype=torch.float32)}, "epoch": 1}, path)
    assert load(path, "auto")["epoch"] == 1
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10  # inside the weights: torch.load alone reads it without a word
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=rf"cannot load the checkpoint {path} .*CRC-32.*truncated or corrupt"):
        load(path, "auto")


def test_a_write_past_the_file_size_limit_keeps_the_previous_checkpoint(tmp_path):
    """``RLIMIT_FSIZE`` with SIGXFSZ ignored: a write fails with EFBIG, as on a full disk (in a child process)."""
    code = textwrap.dedent(
        f"""
        import resource, signal, torch
        from pathlib import Path
        from mmlexp.checkpoint import CheckpointWriteError, save_atomic
        path = Path({str(tmp_path / "checkpoint.pt")!r})
        save_atomic({{"w": torch.ones(10)}}, path)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
        try:
            save_atomic({{"w": torch.zeros(1_000_000)}}, path)
        except CheckpointWriteError as err:
            print(err)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = tmp_path / "checkpoint.pt"
    assert f"cannot write the checkpoint {path} (File too large" in proc.stdout
    assert f"the previous {path} is left as it was" in proc.stdout
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(10))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temporary file left

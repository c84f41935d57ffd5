"""The import layers: ``sweep`` and ``report`` sit above ``run``; ``run`` finds the sweep's job side through
``mmlexp.hooks``; ``data`` is one package with no loop inside."""

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmlexp import hooks
from mmlexp.data.splits import per_user_holdout, random_keys

SRC = Path(__file__).resolve().parents[1] / "src" / "mmlexp"
BELOW_SWEEP = ["run.py", "train.py", "config.py", "checkpoint.py", "hooks.py", "devices.py", "tracking.py", "data"]


def imported(path: Path) -> set[str]:
    """Every mmlexp module a file imports, at module level or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in names if n.startswith("mmlexp")}


@pytest.mark.parametrize("name", BELOW_SWEEP)
def test_lower_layers_never_import_sweep_or_report(name):
    files = sorted((SRC / name).rglob("*.py")) if (SRC / name).is_dir() else [SRC / name]
    for path in files:
        upward = {n for n in imported(path) if n.split(".")[1:2] in (["sweep"], ["report"], ["run"])}
        assert not upward, path


def test_data_modules_form_no_loop():
    dataset = imported(SRC / "data" / "dataset.py")
    splits = imported(SRC / "data" / "splits.py")
    assert not {n for n in dataset | splits if n.startswith("mmlexp.data")}
    for name in ("lightgcn.py", "interactions.py"):
        assert not {n for n in imported(SRC / "data" / name) if n.startswith("mmlexp.data.load")}


def test_a_single_run_loads_no_sweep_module():
    code = "import sys, mmlexp.run; print(sorted(m for m in sys.modules if m.startswith('mmlexp.sweep')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_sweep_registers_its_job_side(monkeypatch):
    import mmlexp.sweep as sweep
    from mmlexp.sweep import pruning

    assert hooks._registered == {"job_tags": sweep.job_tags, "trial_reporter": pruning.trial_reporter}
    assert hooks.job_tags("sqlite:///x.db") == {}  # not a multirun
    monkeypatch.delenv(hooks.TRIAL_ENV, raising=False)
    assert hooks.trial_reporter(None) is None  # not an Optuna trial: the hook is not even asked
    assert not hooks.in_multirun()


def test_per_user_holdout_takes_either_end_with_pinned_ties():
    users = np.array([0, 0, 0, 1, 1, 1, 1])
    keys = np.array([3.0, 1.0, 1.0, 5.0, 5.0, 2.0, 9.0])
    n_out = np.array([1, 2])
    assert per_user_holdout(users, n_out, keys).tolist() == [False, True, False, True, False, True, False]
    assert per_user_holdout(users, n_out, keys, largest=True).tolist() == [True, False, False, False, True, False, True]


def test_random_keys_are_numpys_default_stream():
    assert np.array_equal(random_keys(50, 7), np.random.default_rng(7).random(50))

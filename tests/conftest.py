"""Shared fixtures: the real config composed and shrunk (tiny runs, temp MLflow store, temp cache)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED_DATA = REPO.parent / "shared" / "data"
EXPERIMENT = "report-test"
# 2 full epochs of the sample (batch 8192: 6 steps an epoch) so each run has a per-epoch history
SWEEP = [
    "dataset=sample",
    "loss=mml,ccl",
    "num_negatives=10,100",
    "seed=1,2",
    "trainer.epochs=2",
    "trainer.batch_size=8192",
    "trainer.progress=false",
    "tracking.save_checkpoint=false",
    f"tracking.experiment={EXPERIMENT}",
]


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory, monkeypatch):
    """Real data read from ../shared/data (read-only); parsed caches in a per-session temp dir."""
    monkeypatch.setenv("MMLEXP_DATA_DIR", str(SHARED_DATA))
    cache = os.environ.get("MMLEXP_TEST_CACHE_DIR") or str(tmp_path_factory.getbasetemp() / "cache")
    monkeypatch.setenv("MMLEXP_CACHE_DIR", cache)


@pytest.fixture
def make_cfg(tmp_path):
    """Compose ``conf/config.yaml`` with overrides, tracked into a temp SQLite store, no progress bar."""

    def _make(*overrides: str):
        base = [
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            f"tracking.artifact_location={tmp_path}/artifacts",
            "trainer.progress=false",
        ]
        with initialize_config_dir(config_dir=str(CONF)):
            return compose("config", overrides=base + list(overrides))

    return _make


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    """A real multirun (parent run + 8 child runs, experiment EXPERIMENT) in a temp MLflow store, shared by the
    report tests (tests may add experiments of their own to it); returns its URI and folder."""
    tmp = tmp_path_factory.mktemp("report-sweep")
    uri = f"sqlite:///{tmp}/mlflow.db"
    env = dict(os.environ, PYTHONUNBUFFERED="1", MMLEXP_CACHE_DIR=str(tmp / "cache"), MMLEXP_DATA_DIR=str(SHARED_DATA))
    cmd = [
        sys.executable,
        "-m",
        "mmlexp",
        "-m",
        *SWEEP,
        f"tracking.uri={uri}",
        f"tracking.artifact_location={tmp}/artifacts",
    ]
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return uri, tmp

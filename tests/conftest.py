"""Shared fixtures: the real config composed and shrunk (tiny runs, temp MLflow store, temp cache)."""

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED_DATA = REPO.parent / "shared" / "data"


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
        base = [f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifact_location={tmp_path}/artifacts",
                "trainer.progress=false"]
        with initialize_config_dir(config_dir=str(CONF)):
            return compose("config", overrides=base + list(overrides))

    return _make

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


# Every file mmlexp writes by default (outputs/, multirun/, mlflow.db, reports/, build/, ...) is git-ignored, so a test
# that writes into the checkout shows up as a new ignored path. Tool caches are not counted.
_NOT_COUNTED = (".venv", "**/__pycache__/**", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".benchmarks")
_NOT_COUNTED += (".grimp_cache", ".import_linter_cache")
_BEFORE = pytest.StashKey[set[str] | None]()


def _ignored_paths() -> set[str] | None:
    """The checkout's git-ignored files (None outside a git checkout, e.g. an unpacked sdist)."""
    cmd = ["git", "status", "--porcelain", "--ignored=traditional", "--untracked-files=all", "--", "."]
    try:
        out = subprocess.run(cmd + [f":!{p}" for p in _NOT_COUNTED], cwd=REPO, capture_output=True, text=True)
    except OSError:
        return None
    if out.returncode != 0:
        return None
    return {line[3:] for line in out.stdout.splitlines() if line.startswith("!! ")}


def pytest_sessionstart(session):
    session.config.stash[_BEFORE] = _ignored_paths()


def pytest_sessionfinish(session, exitstatus):
    """Tests write only under tmp_path: the session fails if it left new files in the checkout (set
    MMLEXP_CHECKOUT_GUARD=off only while other work edits the checkout at the same time)."""
    before = session.config.stash.get(_BEFORE, None)
    after = _ignored_paths()
    if before is None or after is None or os.environ.get("MMLEXP_CHECKOUT_GUARD") == "off":
        return
    if new := sorted(after - before):
        listed = "\n  ".join(new[:20]) + ("\n  ..." if len(new) > 20 else "")
        session.config.get_terminal_writer().line(f"\nthe tests wrote into the checkout {REPO}:\n  {listed}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory, monkeypatch):
    """Real data read from ../shared/data (read-only); parsed caches in a per-session temp dir; each test runs in a
    fresh temp working directory, so a default relative path (./outputs of a run outside Hydra) lands there."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    monkeypatch.setenv("MMLEXP_DATA_DIR", str(SHARED_DATA))
    cache = os.environ.get("MMLEXP_TEST_CACHE_DIR") or str(tmp_path_factory.getbasetemp() / "cache")
    monkeypatch.setenv("MMLEXP_CACHE_DIR", cache)


@pytest.fixture(autouse=True)
def _hydra_config_stays_in_its_test():
    """A test that sets Hydra's global config (``HydraConfig.set_config``, an in-process ``hydra.main``) does not hand
    it to the next: a run outside Hydra would read its group choices and run directory from it."""
    yield
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().cfg = None  # type: ignore[assignment]


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

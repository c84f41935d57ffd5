"""The notebooks in notebooks/: each .ipynb is the stripped, synced pair of its .py (jupytext percent), and both
notebooks run start to finish in a fresh kernel of this interpreter, drawing figures; negative_curves on a tiny
tracked sweep of the embedded sample, its aggregated table checked against the runs read with MlflowClient."""

import importlib.util
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
TIMEOUT = 300  # seconds per cell


def _load_helper():
    spec = importlib.util.spec_from_file_location("notebooks_execute", NOTEBOOKS / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


nbx = _load_helper()


def images(nb) -> int:
    return sum(
        "image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
    )


def text_of(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") + out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------- the pairs


@pytest.mark.parametrize("name", nbx.NOTEBOOKS)
def test_ipynb_is_the_stripped_pair_of_its_py(name):
    assert nbx.problems(name) == []
    saved = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    source = nbx.read_source(name)
    code = lambda nb: [c.source for c in nb.cells if c.cell_type == "code"]  # noqa: E731
    assert code(saved) == code(source) and len(code(source)) > 2
    nbformat.validate(saved)


def test_the_sync_check_catches_drift_and_outputs(tmp_path):
    for suffix in (".py", ".ipynb"):
        shutil.copy(NOTEBOOKS / f"negative_curves{suffix}", tmp_path)
    assert nbx.problems("negative_curves", tmp_path) == []
    py = tmp_path / "negative_curves.py"
    py.write_text(py.read_text().replace('FILTER = ""', "FILTER = \"params.seed = '1'\""))
    assert any("differ" in p for p in nbx.problems("negative_curves", tmp_path))
    nbx.sync("negative_curves", tmp_path)  # the .py wins, outputs stay out
    assert nbx.problems("negative_curves", tmp_path) == []
    nb = nbformat.read(tmp_path / "negative_curves.ipynb", as_version=4)
    nb.cells[-1].outputs = [nbformat.v4.new_output("stream", text="x")]
    nbformat.write(nb, tmp_path / "negative_curves.ipynb")
    assert any("outputs" in p for p in nbx.problems("negative_curves", tmp_path))


# ------------------------------------------------------------------------------------------- execution


def test_loss_landscape_runs_and_draws(tmp_path):
    nb = nbx.execute(nbx.read_source("loss_landscape"), cwd=tmp_path, timeout=TIMEOUT)
    assert images(nb) >= 4
    text = text_of(nb)
    # the slope table (the notebook also asserts it against the modules' margins and weights)
    assert "MML Gowalla" in text and "175.0" in text and "700.0" in text and "160.0" in text
    assert "MultiMarginLoss(margins=[0.7, 0.8, 0.9]" in text  # built from the real configs
    assert list(tmp_path.iterdir()) == []  # writes nothing


def _mmlexp(cwd: Path, *args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mmlexp", *args],
        cwd=cwd,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_negative_curves_on_a_tracked_sweep(tmp_path, monkeypatch):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    common = [
        "dataset=sample",
        "trainer.epochs=1",
        "trainer.max_steps=5",
        "trainer.progress=false",
        "tracking.save_checkpoint=false",
        f"tracking.uri={store}",
        f"tracking.artifact_location={tmp_path}/art",
    ]
    _mmlexp(tmp_path, "-m", "loss=mml,ccl", "num_negatives=5,20", "seed=1,2", "tracking.experiment=nbtest", *common)
    _mmlexp(tmp_path, "loss=bpr", "num_negatives=10", "tracking.experiment=other", *common)  # must be left out

    monkeypatch.setenv("MMLEXP_TRACKING_URI", store)
    monkeypatch.setenv("MMLEXP_EXPERIMENTS", "nbtest")
    monkeypatch.setenv("MMLEXP_CURVES_CSV", "curves.csv")  # relative: the kernel's cwd
    nb = nbx.execute(nbx.read_source("negative_curves"), cwd=tmp_path, timeout=TIMEOUT)
    assert images(nb) >= 1
    assert "8 runs" in text_of(nb)

    # the same numbers straight from MLflow: the sweep's 8 child runs (the parent run has no metrics)
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("nbtest")
    direct = {}
    for run in client.search_runs([exp.experiment_id]):
        if run.data.tags.get("sweep.role") == "parent":
            continue
        key = (run.data.tags["choice.loss"], int(run.data.params["num_negatives"]))
        for metric in ("recall@20", "ndcg@20"):
            direct.setdefault((*key, metric), []).append(run.data.metrics[f"best/{metric.replace('@', '_at_')}"])
    assert len(direct) == 8 and all(len(v) == 2 for v in direct.values())

    table = pd.read_csv(tmp_path / "curves.csv")
    assert set(table["dataset"]) == {"sample"} and "bpr" not in set(table["loss"])
    got = {(r.loss, int(r.num_negatives), r.metric): r for r in table.itertuples()}
    assert set(got) == set(direct)
    for key, values in direct.items():
        row = got[key]
        mean = sum(values) / 2
        std = math.sqrt(sum((v - mean) ** 2 for v in values))  # n - 1 = 1
        assert row.n == 2 and row.mean == pytest.approx(mean, rel=1e-9, abs=1e-12)
        assert row.std == pytest.approx(std, rel=1e-6, abs=1e-12)
        assert row.ci_low <= row.mean <= row.ci_high
        assert sorted(str(row.seeds).split()) == ["1", "2"]


def test_negative_curves_names_a_missing_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MMLEXP_TRACKING_URI", f"sqlite:///{tmp_path}/nothing.db")
    from nbclient.exceptions import CellExecutionError

    with pytest.raises(CellExecutionError, match="no MLflow store"):
        nbx.execute(nbx.read_source("negative_curves"), cwd=tmp_path, timeout=TIMEOUT)
    assert not (tmp_path / "nothing.db").exists()  # never created


def test_negative_curves_from_the_committed_runs_csv(tmp_path, monkeypatch):
    """MMLEXP_RUNS_CSV: the curves of the committed Gowalla runs, no MLflow store; each point is the mean of the
    runs.csv values of its (loss, negatives) over seeds, worked out here with plain pandas."""
    committed = REPO / "results" / "gowalla" / "runs.csv"
    monkeypatch.setenv("MMLEXP_RUNS_CSV", str(committed))
    monkeypatch.setenv("MMLEXP_TRACKING_URI", f"sqlite:///{tmp_path}/nothing.db")  # must not be read
    monkeypatch.setenv("MMLEXP_CURVES_CSV", "curves.csv")
    nb = nbx.execute(nbx.read_source("negative_curves"), cwd=tmp_path, timeout=TIMEOUT)
    assert images(nb) >= 1 and not (tmp_path / "nothing.db").exists()
    runs = pd.read_csv(committed)
    runs = runs[(runs["encoder"] == "mf") & (runs["early_stop"] == "N") & (runs["selection"] == "paper")]
    table = pd.read_csv(tmp_path / "curves.csv")
    table = table[table["setting"] == "encoder=mf, early_stop=N, selection=paper"]
    for metric in ("recall@20", "ndcg@20"):
        expected = runs.groupby(["loss", "num_negatives"])[metric].mean()
        got = table[table["metric"] == metric].set_index(["loss", "num_negatives"])["mean"]
        assert dict(got) == pytest.approx(dict(expected), rel=1e-12)

"""The MLflow UI on a tiny sweep's store: the parent run and its child runs with metrics, through the REST API
and (marked `browser`) in headless Chromium. The screenshot is saved under reports/ (git-ignored)."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_sweeps import sweep_cli

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
SCREENSHOT = REPO / "reports" / "mlflow_ui_sweep_runs.png"
PARENT_SCREENSHOT = REPO / "reports" / "mlflow_ui_sweep_parent.png"


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(url: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """A 2-job grid sweep, then `mlflow ui` on a free loopback port over its store (as `make ui` does)."""
    tmp = tmp_path_factory.mktemp("ui")
    sweep_cli(tmp, "num_negatives=10,20")
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    with open(tmp / "server.log", "w") as log:
        server = subprocess.Popen([str(mlflow), "ui", "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db",
                                   "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], cwd=tmp,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail("mlflow ui did not start:\n" + (tmp / "server.log").read_text()[-3000:])
                time.sleep(0.5)
        yield url
    finally:  # the CLI and its uvicorn worker
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


def test_rest_api_shows_the_parent_run_and_its_child_runs_with_metrics(ui):
    exp = api(ui, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=mmlexp")["experiment"]
    runs = api(ui, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
    tags = lambda run: {t["key"]: t["value"] for t in run["data"].get("tags", [])}  # noqa: E731
    parents = [r for r in runs if tags(r).get("sweep.role") == "parent"]
    assert len(parents) == 1 and parents[0]["info"]["status"] == "FINISHED"
    parent_id = parents[0]["info"]["run_id"]
    children = [r for r in runs if tags(r).get("mlflow.parentRunId") == parent_id]
    assert len(children) == 2 and len(runs) == 3
    for child in children:
        assert child["info"]["status"] == "FINISHED"
        metrics = {m["key"]: m["value"] for m in child["data"]["metrics"]}
        assert {"best/recall_at_20", "best/ndcg_at_20", "train_loss"} <= set(metrics)
    assert sorted(tags(c)["sweep.job_num"] for c in children) == ["0", "1"]
    parent_metrics = {m["key"]: m["value"] for m in parents[0]["data"]["metrics"]}
    best = max(children, key=lambda c: {m["key"]: m["value"] for m in c["data"]["metrics"]}["best/recall_at_20"])
    assert parent_metrics["finished_jobs"] == 2 and tags(parents[0])["best.run_id"] == best["info"]["run_id"]


def screenshot(url: str, path: Path, profile: Path) -> None:
    path.parent.mkdir(exist_ok=True)
    path.unlink(missing_ok=True)
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--no-first-run", "--hide-scrollbars", "--window-size=1600,900",
                    f"--user-data-dir={profile}", "--virtual-time-budget=20000", f"--screenshot={path}", url],
                   capture_output=True, timeout=180, check=False)
    assert path.exists() and path.stat().st_size > 10_000
    from PIL import Image

    image = Image.open(path).convert("L")
    assert image.size == (1600, 900)
    lo, hi = image.getextrema()
    assert hi - lo > 100  # not a blank page


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_browser_screenshots_of_the_runs_table_and_the_parent_run(ui, tmp_path):
    """The runs table (the sweep: one parent row, its jobs nested) and the parent's page (its child runs)."""
    exp = api(ui, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=mmlexp")["experiment"]["experiment_id"]
    runs = api(ui, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp],
                                                    "filter": "tags.`sweep.role` = 'parent'"})["runs"]
    screenshot(f"{ui}/#/experiments/{exp}/runs", SCREENSHOT, tmp_path / "profile")
    screenshot(f"{ui}/#/experiments/{exp}/runs/{runs[0]['info']['run_id']}", PARENT_SCREENSHOT, tmp_path / "profile")

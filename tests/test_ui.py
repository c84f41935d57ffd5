"""The MLflow UI on a tiny sweep's store: the parent run and its child runs with metrics, through the REST API
and (marked `browser`) in headless Chromium: the rendered pages must show the sweep's child runs and their
metrics. Screenshots are saved under the test's tmp_path."""

import contextlib
import html
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from scripts._throwaway import free_port
from scripts.headless_chromium import CHROMIUM, command
from tests.test_sweeps import sweep_cli

SCREENSHOT = "mlflow_ui_sweep_runs.png"
PARENT_SCREENSHOT = "mlflow_ui_sweep_parent.png"


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
        server = subprocess.Popen(
            [
                str(mlflow),
                "ui",
                "--backend-store-uri",
                f"sqlite:///{tmp}/mlflow.db",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            cwd=tmp,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
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
    subprocess.run(
        command(profile, (1600, 900), f"--screenshot={path}", url),
        capture_output=True,
        timeout=180,
        check=False,
    )
    assert path.exists() and path.stat().st_size > 10_000
    from PIL import Image

    image = Image.open(path).convert("L")
    assert image.size == (1600, 900)
    lo, hi = image.getextrema()
    assert hi - lo > 100  # not a blank page


def page_text(url: str, profile: Path) -> str:
    """The page's text once its scripts have rendered it (Chromium's --dump-dom, tags and scripts stripped)."""
    out = subprocess.run(
        command(profile, (1600, 900), "--dump-dom", url),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", out.stdout, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body)))


def shown(value: float) -> str:
    """A metric as the MLflow UI prints it: rounded to 3 decimals, no trailing zeros."""
    return f"{round(value, 3):g}"


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_browser_shows_the_sweep_its_child_runs_and_their_metrics(ui, tmp_path):
    """The runs table (the sweep's jobs, sorted by a metric), the parent's page (its child runs) and the
    comparison of the child runs (their metrics, with values), as rendered in headless Chromium."""
    exp = api(ui, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=mmlexp")["experiment"]["experiment_id"]
    runs = api(ui, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp]})["runs"]
    tags = lambda run: {t["key"]: t["value"] for t in run["data"].get("tags", [])}  # noqa: E731
    (parent,) = [r for r in runs if tags(r).get("sweep.role") == "parent"]
    children = sorted((r for r in runs if r is not parent), key=lambda r: r["info"]["run_name"])
    names = [c["info"]["run_name"] for c in children]
    assert len(names) == 2 and all(tags(c)["mlflow.parentRunId"] == parent["info"]["run_id"] for c in children)

    query = urllib.parse.urlencode(
        {
            "searchFilter": f"tags.`mlflow.parentRunId` = '{parent['info']['run_id']}'",
            "orderByKey": "metrics.`best/recall_at_20`",
            "orderByAsc": "false",
        },
        quote_via=urllib.parse.quote,
    )
    table = f"{ui}/#/experiments/{exp}/runs?{query}"
    text = page_text(table, tmp_path / "profile")
    assert all(name in text for name in names), text[:3000]
    assert "Sort: best/recall_at_20" in text and "2 matching runs" in text, text[:3000]
    assert parent["info"]["run_name"] not in text  # filtered to the jobs
    screenshot(table, tmp_path / SCREENSHOT, tmp_path / "profile")

    parent_page = f"{ui}/#/experiments/{exp}/runs/{parent['info']['run_id']}"
    text = page_text(parent_page, tmp_path / "profile")
    listed = re.search(r"Child runs (\S+) , (\S+) ", text)
    assert listed and set(listed.groups()) == set(names), text[:3000]
    screenshot(parent_page, tmp_path / PARENT_SCREENSHOT, tmp_path / "profile")

    ids = urllib.parse.quote(json.dumps([c["info"]["run_id"] for c in children]))
    text = page_text(
        f"{ui}/#/compare-runs?runs={ids}&experiments={urllib.parse.quote(json.dumps([exp]))}", tmp_path / "profile"
    )
    assert f"Run Name: {names[0]} {names[1]}" in text, text[:3000]
    metrics = text[text.index("Metrics Show diff only") : text.index("Artifacts")]
    assert "best/recall_at_20" in metrics and "best/ndcg_at_20" in metrics
    for child in children:
        value = {m["key"]: m["value"] for m in child["data"]["metrics"]}["best/recall_at_20"]
        assert f" {shown(value)} " in metrics, (shown(value), metrics)

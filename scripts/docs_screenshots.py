"""Regenerate the site's screenshots (docs/assets/screenshots/) with headless Chromium.

    .venv/bin/python scripts/docs_screenshots.py            # both parts (the site part needs `make docs` first)
    .venv/bin/python scripts/docs_screenshots.py --only mlflow
    .venv/bin/python scripts/docs_screenshots.py --only site

* ``mlflow``: a negatives sweep on the embedded ``sample`` (6 points, 3 epochs each, a few minutes on 2 cores) in a
  temporary folder, then ``mlflow ui`` on its store as ``make ui`` runs it (loopback, a free port): the sweep's
  runs sorted by Recall@20, their charts, and the comparison of the runs.
* ``site``: the built site (``site/``, served on a free loopback port): the home page and the Gowalla results page.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import http.server
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from _throwaway import free_port
from headless_chromium import command

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "assets" / "screenshots"
NEGATIVES = "10,50,100,200,400,800"
SWEEP = ["trainer.epochs=3", "trainer.progress=false", "trainer.num_threads=1", "tracking.experiment=negatives"]


def chrome(args: list[str], profile: Path, size: tuple[int, int] = (1600, 900)) -> str:
    """Run headless Chromium once; its stdout (``--dump-dom`` output)."""
    cmd = command(profile, size, *args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False).stdout


def screenshot(url: str, path: Path, profile: Path, size: tuple[int, int] = (1600, 900)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    chrome([f"--screenshot={path}", url], profile, size)
    if not path.is_file() or path.stat().st_size < 10_000:
        raise RuntimeError(f"no screenshot of {url} ({path})")
    print(path.relative_to(REPO) if path.is_relative_to(REPO) else path)
    return path


def _pipe_fds(to_chrome: int, from_chrome: int) -> None:
    """In the child: the DevTools pipe on fds 3 (read by chromium) and 4 (written), inheritable."""
    a, b = os.dup(to_chrome), os.dup(from_chrome)  # fresh fds above 4, whatever the pipe's numbers were
    os.dup2(a, 3)
    os.dup2(b, 4)


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: stdlib only)."""

    def __init__(self, profile: Path, size: tuple[int, int] = (1600, 900)) -> None:
        to_chrome, self._write = os.pipe()
        self._read, from_chrome = os.pipe()
        cmd = command(profile, size, budget=False)
        self.proc = subprocess.Popen(
            [*cmd, "--remote-debugging-pipe", "about:blank"],
            close_fds=False,  # only the inheritable fds 3 and 4 made by preexec_fn reach chromium
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=functools.partial(_pipe_fds, to_chrome, from_chrome),
        )
        os.close(to_chrome)
        os.close(from_chrome)
        self._buffer, self._id, self.size, self.session = b"", 0, size, ""

    def send(self, method: str, params: dict | None = None, session: bool = True) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._next()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def _next(self) -> dict:
        while b"\0" not in self._buffer:
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)[
            "sessionId"
        ]
        width, height = self.size
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        self.send("Page.navigate", {"url": url})

    def evaluate(self, expression: str) -> object:
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True})
        return result.get("result", {}).get("value")

    def click(self, element: str) -> None:
        """A real mouse click on the centre of the element the JavaScript expression ``element`` gives."""
        js = f"(() => {{ const e = {element}; e.scrollIntoView({{block: 'center'}});"
        js += " const r = e.getBoundingClientRect();"
        js += " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        x, y = self.wait_for(js)  # type: ignore[misc]
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})
        time.sleep(1)

    def type_enter(self, text: str) -> None:
        """Type ``text`` into the focused element, then Enter."""
        self.send("Input.insertText", {"text": text})
        time.sleep(1)
        for kind in ("keyDown", "keyUp"):
            self.send(
                "Input.dispatchKeyEvent", {"type": kind, "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13}
            )
        time.sleep(1)

    def wait_for(self, expression: str, timeout: float = 60) -> object:
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.5)
        raise RuntimeError(f"timed out waiting for {expression}")

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        print(path.relative_to(REPO) if path.is_relative_to(REPO) else path)
        return path

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, OSError):
            self.send("Browser.close", session=False)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        os.close(self._write)
        os.close(self._read)


@contextlib.contextmanager
def browser(profile: Path, size: tuple[int, int] = (1600, 900)) -> Iterator[Browser]:
    b = Browser(profile, size)
    try:
        yield b
    finally:
        b.close()


@contextlib.contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """``folder`` over HTTP on a free loopback port, in a thread."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def run_sweep(work: Path) -> None:
    """The negatives sweep on `sample`, its stores in ``work``."""
    store = [
        f"tracking.uri=sqlite:///{work}/mlflow.db",
        f"tracking.artifact_location={work}/mlartifacts",
        f"hydra.sweeper.storage=sqlite:///{work}/optuna.db",
    ]
    cmd = [sys.executable, "-m", "mmlexp", "-m", f"num_negatives={NEGATIVES}", *SWEEP, *store]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=work, check=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))


@contextlib.contextmanager
def mlflow_ui(work: Path) -> Iterator[str]:
    """``mlflow ui`` on the sweep's store, as ``make ui`` starts it (loopback only)."""
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow), "ui", "--backend-store-uri", f"sqlite:///{work}/mlflow.db", "--host", "127.0.0.1"]
    with open(work / "ui.log", "w") as log:
        server = subprocess.Popen(
            [*cmd, "--port", str(port), "--workers", "1"], cwd=work, stdout=log, stderr=log, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, server)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def wait_healthy(url: str, server: subprocess.Popen) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and server.poll() is None:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url + "/health", timeout=5) as response:
                if response.status == 200:
                    return
        time.sleep(0.5)
    raise RuntimeError("mlflow ui did not start")


def api(url: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def sweep_runs(url: str) -> tuple[str, str, list[str]]:
    """Experiment id, parent run id and the child run ids of the sweep."""
    exp = api(url, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=negatives")["experiment"]
    runs = api(url, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    (parent,) = [r["info"]["run_id"] for r, t in zip(runs, tags, strict=True) if t.get("sweep.role") == "parent"]
    children = [r["info"]["run_id"] for r, t in zip(runs, tags, strict=True) if t.get("mlflow.parentRunId") == parent]
    return exp["experiment_id"], parent, children


def mlflow_pages(url: str) -> dict[str, str]:
    """Screenshot name -> MLflow UI address: the runs table, the charts, the comparison."""
    exp, parent, children = sweep_runs(url)
    query = {
        "searchFilter": f"tags.`mlflow.parentRunId` = '{parent}'",
        "orderByKey": "metrics.`best/recall_at_20`",
        "orderByAsc": "false",
    }
    table = urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
    charts = urllib.parse.urlencode({**query, "compareRunsMode": "CHART"}, quote_via=urllib.parse.quote)
    runs, exps = (urllib.parse.quote(json.dumps(x)) for x in (children, [exp]))
    return {
        "mlflow-negatives-runs.png": f"{url}/#/experiments/{exp}/runs?{table}",
        "mlflow-negatives-charts.png": f"{url}/#/experiments/{exp}/runs?{charts}",
        "mlflow-negatives-compare.png": f"{url}/#/compare-runs?runs={runs}&experiments={exps}",
    }


BY_TEXT = "[...document.querySelectorAll('{sel}')].find(e => e.innerText && e.innerText.trim() === '{text}')"
CLOSE_ASSISTANT = "document.querySelector('[data-component-id=\"mlflow.assistant.chat_panel.close\"]')"


def open_mlflow(b: Browser, url: str, ready: str) -> None:
    """Open an MLflow UI page, wait until ``ready`` is on it, and close the assistant panel if it is open."""
    b.open(url)
    b.wait_for(f"document.body && document.body.innerText.includes({json.dumps(ready)})", 120)
    time.sleep(2)
    if b.evaluate(f"Boolean({CLOSE_ASSISTANT})"):
        b.click(CLOSE_ASSISTANT)


def shoot_runs(b: Browser, url: str, path: Path) -> None:
    open_mlflow(b, url, "matching runs")
    b.screenshot(path)


def shoot_charts(b: Browser, url: str, path: Path) -> None:
    """The chart view, its charts filtered to best/recall_at_20: one bar per run (N in the run names)."""
    open_mlflow(b, url, "matching runs")
    b.click("document.querySelector('input[placeholder=\"Search metric charts\"]')")
    b.send("Input.insertText", {"text": "best/recall_at_20"})
    b.wait_for("document.querySelectorAll('.js-plotly-plot').length > 0", 120)
    time.sleep(3)
    b.screenshot(path)


def shoot_scatter(b: Browser, url: str, path: Path) -> None:
    """The comparison page's scatter plot: best/recall_at_20 against num_negatives."""
    open_mlflow(b, url, "Scatter Plot")
    b.click(BY_TEXT.format(sel="button[role=tab]", text="Scatter Plot"))
    b.click("document.querySelector('#x-axis-selector')")
    b.click(BY_TEXT.format(sel="[role=option]", text="num_negatives"))
    b.click("document.querySelector('#y-axis-selector')")
    b.click(BY_TEXT.format(sel="[role=option]", text="best/recall_at_20"))
    time.sleep(2)
    b.evaluate("window.scrollTo(0, 0)")
    b.screenshot(path)


def mlflow_screenshots(out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="mmlexp-docs-") as tmp:
        work = Path(tmp)
        run_sweep(work)
        with mlflow_ui(work) as url, browser(work / "profile") as b:
            pages = mlflow_pages(url)
            shoot_runs(b, pages["mlflow-negatives-runs.png"], out / "mlflow-negatives-runs.png")
            shoot_charts(b, pages["mlflow-negatives-charts.png"], out / "mlflow-negatives-charts.png")
            shoot_scatter(b, pages["mlflow-negatives-compare.png"], out / "mlflow-negatives-compare.png")


def site_screenshots(site: Path, out: Path) -> None:
    if not (site / "index.html").is_file():
        raise SystemExit(f"{site}/index.html: build the site first (make docs)")
    with tempfile.TemporaryDirectory(prefix="mmlexp-docs-") as tmp, serve_folder(site) as url:
        screenshot(f"{url}/", out / "site-home.png", Path(tmp) / "profile", (1400, 1800))
        screenshot(f"{url}/results/gowalla/", out / "site-results-gowalla.png", Path(tmp) / "profile", (1400, 1800))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=("mlflow", "site"), help="one part only (default: both)")
    p.add_argument("--out", type=Path, default=OUT, help=f"folder of the PNGs (default: {OUT.relative_to(REPO)})")
    p.add_argument("--site", type=Path, default=REPO / "site", help="the built site (default: site)")
    args = p.parse_args(argv)
    if args.only in (None, "mlflow"):
        mlflow_screenshots(args.out)
    if args.only in (None, "site"):
        site_screenshots(args.site, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

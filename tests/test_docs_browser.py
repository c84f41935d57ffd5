"""The built site in headless Chromium (marked `browser`): the home page and the Gowalla results page render their
headings and the verdict table, and every image on them loaded (natural width > 0). Screenshots go to tmp_path;
`scripts/docs_screenshots.py` takes the committed ones (docs/assets/screenshots/)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.headless_chromium import CHROMIUM, command
from tests.test_docs import build_site, text_of

# Served with every HTML page (never in the site): once the page has loaded, each image's natural width as an attribute.
PROBE = (
    b"<script>window.addEventListener('load', () => { for (const img of document.images) "
    b"img.setAttribute('data-natural-width', String(img.naturalWidth)); "
    b"document.body.setAttribute('data-images-checked', String(document.images.length)); });</script></body>"
)
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"),
]


class ProbingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the site, adding PROBE to HTML pages."""

    def send_head(self):  # type: ignore[override]
        path = Path(self.translate_path(self.path))
        page = path / "index.html" if path.is_dir() else path
        if page.suffix != ".html" or not page.is_file():
            return super().send_head()
        body = page.read_bytes().replace(b"</body>", PROBE, 1)
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(ProbingHandler, directory=folder))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def site_url(tmp_path_factory) -> Iterator[str]:
    dest = tmp_path_factory.mktemp("docs-browser") / "site"
    proc = build_site(dest)
    assert proc.returncode == 0, proc.stderr[-6000:]
    with serve(dest) as url:
        yield url


def chrome(url: str, tmp_path: Path, *args: str) -> str:
    cmd = command(tmp_path / "profile", (1400, 1800), *args, url)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False).stdout


def rendered(url: str, tmp_path: Path, name: str) -> str:
    """The page's DOM after load, and its screenshot in tmp_path."""
    dom = chrome(url, tmp_path, "--dump-dom")
    assert 'data-images-checked="' in dom, dom[-2000:]
    shot = tmp_path / f"{name}.png"
    chrome(url, tmp_path, f"--screenshot={shot}")
    assert shot.is_file() and shot.stat().st_size > 10_000
    return dom


def images(dom: str) -> list[tuple[str, int]]:
    """(src, natural width) of every image of the page."""
    found = []
    for tag in re.findall(r"<img\b[^>]*>", dom):
        src = re.search(r'\ssrc="([^"]*)"', tag)
        width = re.search(r'data-natural-width="(\d+)"', tag)
        found.append((src.group(1) if src else "?", int(width.group(1)) if width else -1))
    return found


def verdict_table(dom: str, header: str) -> str:
    tables = [t for t in re.findall(r"<table\b.*?</table>", dom, re.S) if header in text_of(t)]
    assert tables, f"no table with a '{header}' column"
    return text_of(tables[0])


def test_home_page_shows_figure3_and_the_verdicts(site_url, tmp_path):
    dom = rendered(f"{site_url}/", tmp_path, "home")
    text = text_of(dom)
    assert re.search(r"<h1[^>]*>\s*mmlexp", dom) and "Two commands" in text and "make run" in text
    assert "Figure 3: accuracy against the number of negatives" in text
    table = verdict_table(dom, "Gowalla verdict (ours)")
    assert "MML beats CCL at 10 negatives" in table and "HOLDS" in table
    shown = images(dom)
    assert any(src.endswith("gowalla/figure3_negatives.png") for src, _ in shown), shown
    assert all(width > 0 for _, width in shown), shown


def test_results_page_shows_the_claims_figures_and_report(site_url, tmp_path):
    dom = rendered(f"{site_url}/results/gowalla/", tmp_path, "results-gowalla")
    text = text_of(dom)
    assert re.search(r"<h1[^>]*>\s*Results: Gowalla", dom)
    for heading in ("The paper's claims and their verdicts", "Figure 3", "Reproduction status", "Reproduction report"):
        assert heading in text, heading
    table = verdict_table(dom, "verdict")
    assert "MML beats CCL at 10 negatives" in table and ("HOLDS" in table or "pending" in table)
    shown = images(dom)
    assert len(shown) >= 4 and all(width > 0 for _, width in shown), shown

"""Headless Chromium as the browser tests and the screenshot script run it: one flag list, one way to find it.

from scripts.headless_chromium import CHROMIUM, command   # tests (the repository root on sys.path)
from headless_chromium import CHROMIUM, command           # scripts/ (run as python scripts/...)
"""

from __future__ import annotations

import shutil
from pathlib import Path

# The installed browser (None where none is): `apt-get install chromium` on Debian/Ubuntu.
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)

# No sandbox (root in containers), no GPU, no network of its own, nothing on first run, no scrollbars in screenshots.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--hide-scrollbars",
]
# How long a page's scripts may run (virtual time) before --screenshot / --dump-dom take the page.
VIRTUAL_TIME_BUDGET_MS = 20_000


def command(profile: Path, size: tuple[int, int], *args: str, budget: bool = True) -> list[str]:
    """The command line: FLAGS, the window ``size`` (width, height), a throwaway ``profile`` directory, ``args``;
    ``budget=False`` for a browser driven over DevTools (which waits by itself)."""
    if CHROMIUM is None:
        raise SystemExit("chromium is not installed (apt-get install chromium)")
    timing = [f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}"] if budget else []
    return [CHROMIUM, *FLAGS, f"--window-size={size[0]},{size[1]}", *timing, f"--user-data-dir={profile}", *args]

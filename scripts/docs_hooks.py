"""MkDocs hooks (``hooks:`` in mkdocs.yml): the pages and figures that come from outside ``docs/``.

At every build (``make docs``, ``make docs-serve``):

* the results pages (``scripts/docs_results.py``) and the configuration reference (``scripts/docs_config.py``)
  are generated from the committed ``results/`` and ``conf/``, so they cannot drift from them;
* the files of ``results/<dataset>/`` (figures, CSVs) and the figures of ``benchmarks/results/`` are added to the
  site at the same relative paths, so pages link to them without copies in ``docs/``;
* ``<!-- docs:home -->`` in a page is replaced by the home page's generated part (Figure 3 and the verdicts).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path.insert(0, str(SCRIPTS))

import docs_config  # noqa: E402
import docs_results  # noqa: E402

HOME_MARKER = "<!-- docs:home -->"
ASSET_SUFFIXES = {".png", ".svg", ".csv", ".gz"}
BENCHMARK_FIGURES = ("*.png", "*.svg")


def generated_pages() -> dict[str, str]:
    """Site path -> Markdown of every generated page."""
    return {**docs_results.pages(REPO / "results"), "reference/configuration.md": docs_config.page(REPO / "conf")}


def outside_files() -> list[Path]:
    """Files outside docs/ that pages show or link to: results/<dataset>/* and benchmarks/results figures."""
    found = [p for p in sorted((REPO / "results").rglob("*")) if p.is_file() and p.suffix in ASSET_SUFFIXES]
    for pattern in BENCHMARK_FIGURES:
        found += sorted((REPO / "benchmarks" / "results").glob(pattern))
    return found


def on_files(files: Files, config: Any) -> Files:
    for uri, text in generated_pages().items():
        files.append(File.generated(config, uri, content=text))
    for path in outside_files():
        uri = path.relative_to(REPO).as_posix()
        if files.get_file_from_path(uri) is None:
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    if HOME_MARKER in markdown:
        return markdown.replace(HOME_MARKER, docs_results.home_block(REPO / "results"))
    return markdown

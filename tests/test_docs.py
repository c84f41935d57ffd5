"""The documentation site: `mkdocs build --strict` passes, the generated results and configuration pages say what
the committed results/ and conf/ say, every section of the former long README is a heading of the site, and the
README (the front door) is short, its claims block fresh and its links resolve."""

from __future__ import annotations

import html
import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO

# The H2/H3 sections of README.md before it became the front door (issue 30): each must be a heading of the site.
ORIGINAL_README_SECTIONS = [
    "Install into your own environment",
    "Train one model",
    "Config",
    "Your own loss, sampler or encoder",
    "Sweeps",
    "Long sweeps",
    "Evaluation protocol and long-tail metrics",
    "Reproduce the paper",
    "Reproduction status",
    "Notebooks",
    "Data",
    "Performance",
    "Tests and benchmarks",
    "Lint, format and types",
]
README_MAX_LINES = 150
HEADING = re.compile(r"<h([1-3])[^>]*>(.*?)</h\1>", re.S)


def scripts_module(name: str) -> ModuleType:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "scripts"))


def build_site(dest: Path) -> subprocess.CompletedProcess:
    """`mkdocs build --strict` (as `make docs`) into ``dest``."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (make docs installs it)")
    pytest.importorskip("material", reason="the docs extra is not installed (make docs installs it)")
    mkdocs = Path(sys.executable).with_name("mkdocs")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    cmd = [str(mkdocs), "build", "--strict", "--site-dir", str(dest)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("docs") / "site"
    proc = build_site(dest)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return dest


def text_of(markup: str) -> str:
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", markup))).strip()


def headings(site: Path) -> set[str]:
    found = set()
    for page in site.rglob("*.html"):
        found |= {text_of(m.group(2)).rstrip("¶").strip() for m in HEADING.finditer(page.read_text())}
    return found


def test_strict_build_shows_every_section_of_the_former_readme(site):
    assert (site / "index.html").is_file() and (site / "reference" / "api" / "run" / "index.html").is_file()
    found = headings(site)
    missing = [s for s in ORIGINAL_README_SECTIONS if not any(h == s or h.startswith(s + " ") for h in found)]
    assert not missing, missing


def test_every_image_of_every_page_is_in_the_site(site):
    for page in site.rglob("*.html"):
        for src in re.findall(r'<img[^>]*\ssrc="([^"]+)"', page.read_text()):
            if not src.startswith(("http:", "https:", "data:")):
                assert (page.parent / src).resolve().is_file(), (page, src)


def test_results_pages_are_the_committed_results(site):
    overview = importlib.import_module("mmlexp.report.overview")
    for dataset in overview.DATASETS:
        page = text_of((site / "results" / dataset / "index.html").read_text())
        for claim, metric, verdict, ours, *_ in overview.claim_rows(REPO / "results", dataset):
            assert f"{claim} {metric} {verdict.strip('*')} {ours}" in page, (dataset, claim, metric)
        if (REPO / "results" / dataset / "figure3_negatives.png").is_file():
            assert (site / "results" / dataset / "figure3_negatives.png").is_file()
    home = text_of((site / "index.html").read_text())
    assert "The paper's claims and their verdicts" in home and "Gowalla verdict (ours)" in home


def test_results_pages_follow_the_csvs(tmp_path):
    """Generated from the files, not written once: a changed verdict in claims.csv changes the page."""
    docs_results = scripts_module("docs_results")
    results = tmp_path / "results"
    shutil.copytree(REPO / "results", results)
    claims = pd.read_csv(results / "gowalla" / "claims.csv")
    before = docs_results.pages(results)["results/gowalla/index.md"]
    assert "| **HOLDS** |" in before
    claims["verdict"] = "DOES NOT HOLD"
    claims.to_csv(results / "gowalla" / "claims.csv", index=False)
    after = docs_results.pages(results)["results/gowalla/index.md"]
    assert "| **HOLDS** |" not in after and "| **DOES NOT HOLD** |" in after
    (results / "yelp2018" / "figure3_negatives.png").unlink()
    assert "No Figure 3 for Yelp2018 yet" in docs_results.pages(results)["results/yelp2018/index.md"]


def _plant_point_estimate(path, claim=None, metric=None):
    """Mark one claims.csv row untested (the first, or the one with this claim and metric); return its claim."""
    claims = pd.read_csv(path)
    chosen = (claims["claim"] == claim) & (claims["metric"] == metric)
    rows = claims.index[:1] if claim is None else claims.index[chosen]
    assert len(rows) == 1, (path, claim, metric)
    claims.loc[rows, "evidence"] = "point estimate"
    claims.to_csv(path, index=False)
    return claims.loc[rows[0], "claim"]


def test_readme_claims_say_which_verdicts_are_untested(tmp_path):
    """A verdict from two means (no per-user file behind it) says so in the README's table; a tested one does not."""
    docs_results = scripts_module("docs_results")
    overview = importlib.import_module("mmlexp.report.overview")
    results = tmp_path / "results"
    shutil.copytree(REPO / "results", results)
    first_claim = _plant_point_estimate(results / "gowalla" / "claims.csv")  # in the commit: tested
    _plant_point_estimate(results / "yelp2018" / "claims.csv", "MML < BSL at 800 negatives", "ndcg@20")
    table = docs_results.compact_claims(results, "x").splitlines()
    first = next(line for line in table if line.startswith(f"| {first_claim.split(' (paper')[0]} |"))
    gowalla, yelp = first.split(" | ")[3:5]
    assert gowalla.endswith("; point estimate, not tested)") and "not tested" not in yelp
    untested = 0  # the paper's claims (both datasets) whose claims.csv row is a point estimate
    for dataset in overview.DATASETS:
        rows = pd.read_csv(results / dataset / "claims.csv").set_index(["claim", "metric"])["evidence"]
        untested += sum(rows.get(key) == "point estimate" for key in overview.paper_claims(dataset))
    assert sum(line.count("not tested") for line in table) == untested >= 2  # the planted two, and any committed
    second = next(line for line in table if line.startswith("| MML < BSL at 800 negatives | ndcg@20 |"))
    assert second.split(" | ")[4].endswith("; point estimate, not tested) |")


def test_configuration_reference_lists_every_group_option_and_key(site):
    from omegaconf import OmegaConf

    from mmlexp.config import RULES

    docs_config = scripts_module("docs_config")
    page = text_of((site / "reference" / "configuration" / "index.html").read_text())
    for group, files in docs_config.groups().items():
        for path in files:
            assert f"{docs_config.option_name(group, path)} ¶ conf/{group}/{path.name}" in page, path
            keys = docs_config.flatten(OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {})
            assert all(key.split(".")[-1] in page for key in keys), path
    assert all(f"{key} {html.unescape(text)}" in page for key, (_, text) in RULES.items())
    assert "trainer.lr 0.0001" in page and "eval.selection paper" in page  # defaults beside their keys


def test_readme_is_the_front_door():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, len(lines)
    assert lines[0] == "# mmlexp" and any(line.startswith("make run") for line in lines)
    assert any(line.startswith("make test") for line in lines) and "![" in "\n".join(lines)


def test_readme_links_resolve_and_docs_links_are_site_pages():
    text = (REPO / "README.md").read_text()
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    pages = set(re.findall(r"[\w/.-]+\.md", str(nav)))
    links = [link.split("#")[0] for link in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in link]
    assert links
    for link in links:
        assert (REPO / link).exists(), link
        if link.startswith("docs/") and link.endswith(".md"):
            assert link.removeprefix("docs/") in pages, f"{link} is not in the site's nav"


def test_readme_claims_block_is_fresh():
    docs_results = scripts_module("docs_results")
    fix = "python scripts/docs_results.py --readme README.md"
    assert docs_results.update_readme(REPO / "README.md", check=True) == 0, f"stale claims block: run {fix}"


def test_bad_inputs_page_is_the_catalogue():
    """docs/bad-inputs.md's table is generated from tests/test_bad_inputs.py's CASES and listed in the nav."""
    docs_bad_inputs = scripts_module("docs_bad_inputs")
    fix = "python scripts/docs_bad_inputs.py"
    assert docs_bad_inputs.main(["--check"]) == 0, f"stale docs/bad-inputs.md: run {fix}"
    assert "bad-inputs.md" in str(yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"])

"""The site's results pages, generated from the committed ``results/`` folder (never from a tracking store).

The pages are built at ``mkdocs build`` time by ``scripts/docs_hooks.py`` (so they cannot drift from the CSVs);
this script also writes them to a folder to read them without building, and keeps the claims block of README.md:

    python scripts/docs_results.py --out /tmp/pages           # results/index.md, results/<dataset>/index.md
    python scripts/docs_results.py --readme README.md         # rewrite the README claims block
    python scripts/docs_results.py --readme README.md --check  # exit 1 when the README claims block is stale

Every page reads what ``make report DATASET=...`` commits: ``claims.csv`` and ``cells.csv`` (through
``mmlexp.report.overview`` and ``mmlexp.report.readme``), ``report.md`` and the figures beside it. A dataset with
fewer results (Yelp2018 while it runs) gets its pending claims and only the figures that exist.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from mmlexp.report import overview, readme
from mmlexp.report.evidence import POINT

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
CLAIMS_START = "<!-- claims:start -->"
CLAIMS_END = "<!-- claims:end -->"
FIGURE3 = "figure3_negatives.png"
HEADER = ["claim", "metric", "verdict", "ours", "evidence", "runs"]
EXPLAINED = "[explanations.md](explanations.md)"  # the hand-written explanations: a file of results/, not a page


def label(dataset: str) -> str:
    return overview.LABELS.get(dataset, dataset)


def generated_note(dataset: str | None = None) -> str:
    where = f"`results/{dataset}/`" if dataset else "`results/`"
    return (
        f'!!! note "Generated"\n    This page is generated at build time from the committed {where} files '
        "(`scripts/docs_results.py`); `make report DATASET=...` rewrites them."
    )


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def figure3(results: Path, dataset: str, prefix: str) -> str:
    """The dataset's Figure 3 image (Markdown), or a sentence saying it is not there yet."""
    if (results / dataset / FIGURE3).is_file():
        alt = f"Figure 3, {label(dataset)}: Recall@20 and NDCG@20 against the number of negatives"
        return f"![{alt}]({prefix}{FIGURE3})"
    return f"*No Figure 3 for {label(dataset)} yet: its runs are still pending.*"


def claims_rows(results: Path, dataset: str) -> list[list[str]]:
    """The overview's claim rows with their run links made relative to the dataset's folder."""
    rows = overview.claim_rows(results, dataset)
    return [[*row[:5], row[5].replace(f"]({dataset}/", "](")] for row in rows]


def verdict_cell(row: list[str]) -> str:
    """An overview claim row's verdict with our number, and "not tested" when it is a point estimate (its runs have
    no per-user file yet: the verdict compares two means)."""
    verdict, ours, how = row[2], row[3], row[4]
    if ours == "—":
        return verdict
    untested = f"; {POINT}, not tested" if how.startswith(POINT) else ""  # overview._evidence's words
    return f"{verdict} ({ours}{untested})"


def compact_claims(results: Path, link: str) -> str:
    """One table of every claim: its verdict on each dataset (the README's and the home page's)."""
    per = {d: overview.claim_rows(results, d) for d in overview.DATASETS}
    first = per[overview.DATASETS[0]]
    rows = []
    for i, (claim, metric, *_) in enumerate(first):
        paper = [re.search(r"\(paper ([^)]*)\)", per[d][i][0]) for d in per]
        gains = " / ".join(m.group(1) if m else "—" for m in paper) if any(paper) else "—"
        cells = [verdict_cell(per[d][i]) for d in per]
        rows.append([re.sub(r" \(paper [^)]*\)", "", claim), metric, gains, *cells])
    names = " / ".join(label(d) for d in per)
    header = ["claim (Figure 3)", "metric", f"paper ({names})", *(f"{label(d)} verdict (ours)" for d in per)]
    return table(header, rows) + f"\n\nEvidence and runs: {link}."


def demote(markdown: str) -> str:
    """Headings one level down, so the report sits under the page's own title."""
    return re.sub(r"^(#{1,5}) ", r"#\1 ", markdown, flags=re.M)


def report_section(results: Path, dataset: str) -> str:
    path = results / dataset / "report.md"
    if not path.is_file():
        return "## Reproduction report\n\n*No report yet.*"
    text = path.read_text()
    first, _, rest = text.partition("\n")
    body = demote(rest.strip()).replace("](report.md)", "](#report)").replace("](epochs/)", "](#runs)")
    # the hand-written explanations are a Markdown file of results/, not a page: the report quotes each one anyway
    body = body.replace(EXPLAINED, "`explanations.md`")
    return "## Reproduction report {#report}\n\n" + body


def dataset_page(results: Path, dataset: str) -> str:
    """``results/<dataset>/index.md``: verdicts, Figure 3, the status table, then the full report."""
    status = readme.status_table(results / dataset, dataset, results / dataset).replace("](./report.md)", "](#report)")
    status = status.replace("](./", "](")
    systems = readme.systems_table(results / dataset, dataset, results / dataset).replace("](./", "](")
    systems = systems.replace("](../README.md)", "](../index.md)").replace(EXPLAINED, "`explanations.md`")
    parts = [
        f"# Results: {label(dataset)}",
        generated_note(dataset),
        "## The paper's claims and their verdicts",
        overview.table3_line(results, dataset)
        .replace(f"]({dataset}/report.md)", "](#report)")
        .replace(f"]({dataset}/", "]("),
        table(HEADER, claims_rows(results, dataset)),
        "## Figure 3",
        figure3(results, dataset, ""),
        "## Reproduction status",
        status,
        systems,
        report_section(results, dataset),
    ]
    return "\n\n".join(parts) + "\n"


def index_page(results: Path) -> str:
    """``results/index.md``: both datasets' claims side by side, then one link per dataset."""
    links = ", ".join(f"[{label(d)}]({d}/index.md)" for d in overview.DATASETS)
    parts = [
        "# Results",
        generated_note(),
        "How a verdict is decided: per-user Wilcoxon signed-rank tests and bootstrap intervals, Holm-corrected over "
        "each report's claims, seed-level t-tests beside; *point estimate* means the runs have no per-user file yet "
        "and the verdict compares two means only.",
        compact_claims(results, f"one page per dataset: {links}"),
    ]
    for dataset in overview.DATASETS:
        parts += [f"## {label(dataset)}", figure3(results, dataset, f"{dataset}/"), f"[All of it]({dataset}/index.md)"]
    return "\n\n".join(parts) + "\n"


def pages(results: Path = RESULTS) -> dict[str, str]:
    """Site path -> Markdown of every generated results page."""
    out = {"results/index.md": index_page(results)}
    for dataset in overview.DATASETS:
        out[f"results/{dataset}/index.md"] = dataset_page(results, dataset)
    return out


def home_block(results: Path = RESULTS) -> str:
    """The home page's generated part: Figure 3 of each dataset, then the claims and their verdicts."""
    figures = [f"### {label(d)}\n\n{figure3(results, d, f'results/{d}/')}" for d in overview.DATASETS]
    claims = compact_claims(results, "[Results](results/index.md)")
    return "\n\n".join([*figures, "## The paper's claims and their verdicts", claims])


def readme_block(results: Path = RESULTS) -> str:
    return compact_claims(results, "[results/README.md](results/README.md) and the site's Results pages")


def splice(text: str, block: str) -> str:
    if text.count(CLAIMS_START) != 1 or text.count(CLAIMS_END) != 1:
        raise ValueError(f"expected one '{CLAIMS_START}' line and one '{CLAIMS_END}' line")
    head, rest = text.split(CLAIMS_START, 1)
    return f"{head}{CLAIMS_START}\n{block}\n{CLAIMS_END}{rest.split(CLAIMS_END, 1)[1]}"


def update_readme(path: Path, check: bool) -> int:
    text = path.read_text()
    new = splice(text, readme_block())
    if check:
        if new != text:
            print(f"{path}: claims block out of date (run python scripts/docs_results.py --readme {path})")
            return 1
        return 0
    path.write_text(new)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write the generated pages under this folder")
    p.add_argument("--readme", type=Path, help="rewrite the claims block of this README")
    p.add_argument("--check", action="store_true", help="with --readme: only compare, exit 1 when stale")
    args = p.parse_args(argv)
    if args.readme:
        return update_readme(args.readme, args.check)
    if args.out is None:
        p.error("give --out DIR (the pages) or --readme README.md (the claims block)")
    for rel, text in pages().items():
        target = args.out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())

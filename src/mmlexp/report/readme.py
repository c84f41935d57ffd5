"""The README "Reproduction status" table, generated from a committed results folder (cells.csv, runs.csv).

``python -m mmlexp.report.readme --results results/gowalla`` rewrites the lines between the markers of README.md;
``--check`` only compares (exit 1 when the README is out of date). Cells without runs yet read ``pending``."""

import argparse
import os
import sys
from pathlib import Path

import pandas as pd

from mmlexp.report.build import paper_numbers
from mmlexp.report.figures import loss_label, loss_rank
from mmlexp.report.runs import ReportError
from mmlexp.report.status import THRESHOLD_PCT

START, END = "<!-- reproduction-status:start -->", "<!-- reproduction-status:end -->"
# The runs of the reproduction issue (MF, no early stop, 100 epochs): (loss, negatives, selection)
EXPECTED = (
    [(loss, 100, "paper") for loss in ("bpr", "hinge", "softmax", "mse", "ccl", "bsl", "mml")]
    + [(loss, n, "paper") for n in (10, 800) for loss in ("mml", "ccl", "bsl")]
    + [(loss, 100, "valid") for loss in ("mml", "ccl")]
)
CELLS_COLUMNS = (
    "dataset",
    "encoder",
    "loss",
    "num_negatives",
    "early_stop",
    "selection",
    "metric",
    "n",
    "mean",
    "ci_half",
    "seeds",
    "run_ids",
    "epochs",
)
METRICS = ("recall@20", "ndcg@20")
DATASET_LABELS = {"gowalla": "Gowalla", "yelp2018": "Yelp2018"}


def _read(path: Path, columns, what: str) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame(columns=list(columns))
    df = pd.read_csv(path, dtype={"run_ids": str, "seeds": str, "epochs": str, "run_id": str})
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ReportError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(expected the {what} written by python -m mmlexp.report --export-csv)"
        )
    return df


def status_table(results: Path, dataset: str, link_base: Path) -> str:
    """Markdown: one row per cell (the expected ones first, then any other MF no-early-stop cell of ``dataset``):
    ours vs the paper's Table 3 number and Δ % (relative) per metric, epochs, seeds, links to each run's
    per-epoch CSV (relative to ``link_base``)."""
    cells = _read(results / "cells.csv", CELLS_COLUMNS, "cells.csv")
    runs = _read(results / "runs.csv", ("run_id", "epochs_csv"), "runs.csv")
    cells = cells[(cells["dataset"] == dataset) & (cells["encoder"] == "mf") & (cells["early_stop"] == "N")]
    paper = paper_numbers("table3")
    paper = paper[paper["dataset"] == dataset].set_index(["loss", "metric"])["paper"]
    where = dict(zip(runs["run_id"], runs["epochs_csv"], strict=True))
    present = list(
        dict.fromkeys(zip(cells["loss"], cells["num_negatives"].astype(int), cells["selection"], strict=True))
    )
    order = EXPECTED + sorted((c for c in present if c not in EXPECTED), key=_curve_order)
    rel = os.path.relpath(results, link_base).replace(os.sep, "/")
    rows, done, off = [], 0, 0
    for loss, n, selection in order:
        sub = cells[(cells["loss"] == loss) & (cells["num_negatives"] == n) & (cells["selection"] == selection)]
        row, flagged = _cell_row(sub.set_index("metric"), paper, (loss, n, selection), where, rel)
        done, off = done + (len(sub) > 0), off + flagged
        rows.append(row)
    header = [
        "cell (MF)",
        "Recall@20 ours",
        "paper",
        "Δ %",
        "NDCG@20 ours",
        "paper",
        "Δ %",
        "epochs",
        "seeds",
        "runs (per-epoch CSV)",
    ]
    lines = [
        f"{done} of {len(order)} cells have finished runs; {off} of the `paper`-selection cells more than "
        f"{THRESHOLD_PCT:g}% (relative) from the paper (⚠, explained in [report.md]({rel}/report.md)). Paper = "
        "Table 3 (100 negatives; at 10 and "
        "800 negatives the paper gives only Figure 3's relative gains, compared in the report). Selection "
        "`valid` rows choose the epoch on a slice held out of train (so the model also trains without it) and "
        "are set against the paper's test-selected number; report.md splits the difference into what choosing "
        "on test adds and what the held-out slice costs.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _curve_order(cell: tuple) -> tuple:
    """Extra cells (the curve points) by negatives, then in the paper's loss order (MML, CCL, BSL), then selection."""
    loss, n, selection = cell
    return n, loss_rank(loss), loss, selection


def _cell_row(sub: pd.DataFrame, paper: pd.Series, cell: tuple, where: dict, rel: str) -> tuple[list[str], bool]:
    """One table row (ours, paper, Δ % per metric; epochs, seeds, run links) and whether it is flagged ⚠."""
    loss, n, selection = cell
    row, flagged = [f"{loss_label(loss)}, N={n}" + (", selection valid" if selection != "paper" else "")], False
    for metric in METRICS:
        ours = sub.loc[metric] if metric in sub.index else None
        ref = paper.get((loss, metric)) if n == 100 else None
        row += [_ours(ours), f"{ref:.4f}" if ref is not None else "—"]
        if ours is not None and ref is not None:
            delta = 100 * (ours["mean"] - ref) / ref
            off_paper = selection == "paper" and abs(delta) > THRESHOLD_PCT
            flagged |= off_paper
            row.append(f"{delta:+.1f}" + (" ⚠" if off_paper else ""))
        else:
            row.append("—")
    if not len(sub):
        return row + ["—", "—", "pending"], False
    first = sub.iloc[0]
    ids = str(first["run_ids"]).split()
    links = " ".join(f"[{rid[:8]}]({rel}/{where[rid]})" if rid in where else rid[:8] for rid in ids)
    return row + [str(first["epochs"]), str(first["seeds"]).replace(" ", ","), links], flagged


def _ours(row) -> str:
    if row is None or pd.isna(row["mean"]):
        return "pending"
    half = row["ci_half"]
    return f"{row['mean']:.4f}" + (f" ± {half:.4f}" if pd.notna(half) else "")


def splice(text: str, table: str) -> str:
    """``text`` with the lines between the START and END markers replaced by ``table``."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ReportError(f"README: expected one '{START}' line followed by one '{END}' line")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}\n{END}{tail}"


def tables(folders: list[Path], dataset: str | None, link_base: Path) -> str:
    """One folder: its table; several: a ``#### <Dataset>`` heading and table per folder (dataset = folder name)."""
    if len(folders) == 1:
        return status_table(folders[0], dataset or folders[0].name, link_base)
    parts = [f"#### {DATASET_LABELS.get(f.name, f.name)}\n\n{status_table(f, f.name, link_base)}" for f in folders]
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmlexp.report.readme", description=__doc__.splitlines()[0])
    p.add_argument(
        "--results",
        nargs="+",
        default=["results/gowalla", "results/yelp2018"],
        help="results folder(s), one table each (default: results/gowalla results/yelp2018; a missing one: pending)",
    )
    p.add_argument("--dataset", help="dataset of a single folder's table (default: the folder's name)")
    p.add_argument("--readme", default="README.md", help="README to update (default: README.md)")
    p.add_argument("--check", action="store_true", help="only check: exit 1 when the README table is out of date")
    args = p.parse_args(argv)
    readme = Path(args.readme)
    try:
        if not readme.is_file():
            raise ReportError(f"--readme {readme}: no such file")
        text = readme.read_text()
        new = splice(text, tables([Path(r) for r in args.results], args.dataset, readme.resolve().parent))
    except ReportError as err:
        print(f"mmlexp.report: error: {err}", file=sys.stderr)
        return 2
    shown = " ".join(args.results)
    if args.check:
        if new != text:
            print(
                f"{readme}: the reproduction status table is out of date (run python -m mmlexp.report.readme "
                f"--results {shown})",
                file=sys.stderr,
            )
            return 1
        return 0
    if new != text:
        readme.write_text(new)
    print(f"{readme}: reproduction status table from {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The README "Reproduction status" table, generated from a committed results folder (cells.csv, runs.csv).

Per dataset two tables: the MF cells of the paper's Table 3 and Figure 3 (``status_table``, from cells.csv), then the
seed papers' other systems (``systems_table``, from the report's table2.csv and ssm_table2.csv): the MML paper's
Table 2 (MF and SimpleX, with and without early stopping) and the SSM paper's Table 2 (LightGCN and MF with sampled
softmax).  ``python -m mmlexp.report.readme --results results/gowalla`` rewrites the lines between the markers of
README.md; ``--check`` only compares (exit 1 when the README is out of date). Cells without runs yet read
``pending``."""

import argparse
import os
import sys
from pathlib import Path

import pandas as pd

from mmlexp.report.build import paper_numbers
from mmlexp.report.export import cell_id
from mmlexp.report.figures import ENCODER_LABELS, loss_label, loss_rank, system_label
from mmlexp.report.runs import ReportError
from mmlexp.report.status import EXPLANATIONS, THRESHOLD_PCT, read_explanations

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
# The seed papers' other systems: (paper table, its name in the README); the rows are the paper's own (resources/paper)
SYSTEM_TABLES = (("table2", "MML paper Table 2"), ("ssm_table2", "SSM paper Table 2"))
SYSTEM_COLUMNS = ("encoder", "loss", "early_stop", "num_negatives", "selection", "dataset", "metric", "mean",
                  "ci_half", "seeds", "run_ids")  # fmt: skip
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
    refs = {metric: paper.get((loss, metric)) if n == 100 else None for metric in METRICS}
    cells, flagged = _metric_cells(sub, refs, can_flag=selection == "paper")
    row = [f"{loss_label(loss)}, N={n}" + (", selection valid" if selection != "paper" else ""), *cells]
    if not len(sub):
        return row + ["—", "—", "pending"], False
    first = sub.iloc[0]
    links = _run_links(str(first["run_ids"]).split(), where, rel)
    return row + [str(first["epochs"]), str(first["seeds"]).replace(" ", ","), links], flagged


def _metric_cells(sub: pd.DataFrame, refs: dict, can_flag: bool) -> tuple[list[str], bool]:
    """Ours, the paper's number and Δ % (relative) for each metric, and whether a Δ beyond ``THRESHOLD_PCT`` flags
    the row ⚠ (only where ``can_flag``: a row set against the paper's protocol)."""
    cells, flagged = [], False
    for metric in METRICS:
        ours = sub.loc[metric] if metric in sub.index else None
        ref = refs.get(metric)
        cells += [_ours(ours), f"{ref:.4f}" if ref is not None else "—"]
        if ours is not None and ref is not None:
            delta = 100 * (ours["mean"] - ref) / ref
            off = can_flag and abs(delta) > THRESHOLD_PCT
            flagged |= off
            cells.append(f"{delta:+.1f}" + (" ⚠" if off else ""))
        else:
            cells.append("—")
    return cells, flagged


def _run_links(ids: list[str], where: dict, rel: str) -> str:
    """Each run's short id, linked to its per-epoch CSV where ``runs.csv`` has one."""
    return " ".join(f"[{rid[:8]}]({rel}/{where[rid]})" if rid in where else rid[:8] for rid in ids)


def _ours(row) -> str:
    if row is None or pd.isna(row["mean"]):
        return "pending"
    half = row["ci_half"]
    return f"{row['mean']:.4f}" + (f" ± {half:.4f}" if pd.notna(half) else "")


def systems_table(results: Path, dataset: str, link_base: Path) -> str:
    """Markdown: one row per system of the seed papers' other tables on ``dataset`` (``SYSTEM_TABLES``, every row of
    the paper's, run or not): ours (selection ``paper``) vs the paper's number and Δ % per metric, the epoch each run
    kept, seeds, run links; ⚠ beyond ``THRESHOLD_PCT``, and whether ``explanations.md`` explains the cell."""
    runs = _read(results / "runs.csv", ("run_id", "epochs_csv"), "runs.csv")
    kept = dict(zip(runs["run_id"], runs["best_epoch"], strict=True)) if "best_epoch" in runs else {}
    where = dict(zip(runs["run_id"], runs["epochs_csv"], strict=True))
    notes = {cell for cell, text in read_explanations(results / EXPLANATIONS).items() if text}
    rel = os.path.relpath(results, link_base).replace(os.sep, "/")
    rows, done, off, unexplained = [], 0, 0, 0
    for name, label in SYSTEM_TABLES:
        ours = _read(results / f"{name}.csv", SYSTEM_COLUMNS, f"{name}.csv")
        ours = ours[(ours["dataset"] == dataset) & (ours["selection"] == "paper") & ours["mean"].notna()]
        paper = paper_numbers(name)
        paper = paper[paper["dataset"] == dataset]
        for system in _systems(paper):
            sub = ours[_matches(ours, system)].set_index("metric")
            ref = paper[_matches(paper, system)].set_index("metric")["paper"]
            cell = cell_id({"dataset": dataset, **system, "selection": "paper"})
            title = f"{system_label(system['encoder'], system['loss'], system['early_stop'])} ({label})"
            row, flagged = _system_row(sub, ref, title, kept, where, rel)
            done, off, unexplained = done + (len(sub) > 0), off + flagged, unexplained + (flagged and cell not in notes)
            rows.append(row)
    header = ["system (paper table)", "Recall@20 ours", "paper", "Δ %", "NDCG@20 ours", "paper", "Δ %",
              "epoch kept", "seeds", "runs (per-epoch CSV)"]  # fmt: skip
    missing = f"; {unexplained} of them not explained yet" if unexplained else ""
    explained = f"[{EXPLANATIONS}]({rel}/{EXPLANATIONS})" if (results / EXPLANATIONS).is_file() else EXPLANATIONS
    claims = os.path.relpath(results.parent / "README.md", link_base).replace(os.sep, "/")
    lines = [
        f"The seed papers' other systems: {done} of {len(rows)} have finished runs; {off} more than "
        f"{THRESHOLD_PCT:g}% (relative) from the paper on a metric (⚠, explained in {explained}{missing}). "
        "MML paper Table 2: 100 negatives, 100 epochs, early stop "
        "= patience 3 on Recall@20 (the author's notebooks); SSM paper Table 2: sampled softmax over in-batch "
        "negatives, early stop after 15 evaluations without a better Recall@20, at most 1000 epochs "
        f"(`+experiment=ssm_paper`). Their claims, tested: [the claims page]({claims}).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _systems(paper: pd.DataFrame) -> list[dict]:
    """The paper table's systems (encoder, loss, early_stop, num_negatives), by encoder, loss, then no early stop
    before early stop."""
    keys = paper[["encoder", "loss", "early_stop", "num_negatives"]].drop_duplicates()
    order = list(ENCODER_LABELS)
    keys = keys.assign(_e=[order.index(e) if e in order else len(order) for e in keys["encoder"]])
    keys = keys.assign(_l=[loss_rank(x) for x in keys["loss"]]).sort_values(["_e", "encoder", "_l", "early_stop"])
    return [{k: (int(r[k]) if k == "num_negatives" else r[k]) for k in keys.columns[:4]} for _, r in keys.iterrows()]


def _matches(df: pd.DataFrame, system: dict) -> pd.Series:
    return (
        (df["encoder"] == system["encoder"])
        & (df["loss"] == system["loss"])
        & (df["early_stop"] == system["early_stop"])
        & (df["num_negatives"].astype(int) == system["num_negatives"])
    )


def _system_row(sub: pd.DataFrame, paper: pd.Series, label: str, kept: dict, where: dict, rel: str):
    """One systems row and whether it is flagged ⚠ (a metric more than ``THRESHOLD_PCT`` from the paper)."""
    cells, flagged = _metric_cells(sub, {metric: paper.get(metric) for metric in METRICS}, can_flag=True)
    row = [label, *cells]
    if not len(sub):
        return row + ["—", "—", "pending"], False
    first = sub.iloc[0]
    ids = str(first["run_ids"]).split()
    epochs = ", ".join(str(int(kept[rid])) if pd.notna(kept.get(rid)) else "—" for rid in ids)
    return row + [epochs, str(first["seeds"]).replace(" ", ","), _run_links(ids, where, rel)], flagged


def splice(text: str, table: str) -> str:
    """``text`` with the lines between the START and END markers replaced by ``table``."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ReportError(f"README: expected one '{START}' line followed by one '{END}' line")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}\n{END}{tail}"


def tables(folders: list[Path], dataset: str | None, link_base: Path) -> str:
    """One folder: its two tables; several: a ``#### <Dataset>`` heading and the tables per folder (dataset = the
    folder's name)."""

    def both(folder: Path, name: str) -> str:
        return f"{status_table(folder, name, link_base)}\n\n{systems_table(folder, name, link_base)}"

    if len(folders) == 1:
        return both(folders[0], dataset or folders[0].name)
    return "\n\n".join(f"#### {DATASET_LABELS.get(f.name, f.name)}\n\n{both(f, f.name)}" for f in folders)


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

"""Committed results: tracked runs -> ``runs.csv`` + one per-epoch CSV per run (no machine paths), and back.

``export_runs`` writes what ``--export-csv`` commits besides the report; ``read_runs`` / ``history_from_csv`` give
``fetch_runs`` / ``metric_history`` frames from those files, so the report rebuilds without the MLflow store."""

import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from mmlexp.report import runs as tracked
from mmlexp.report.runs import BASE_COLUMNS, CELL_KEYS, ReportError, client_for, metric_name

EPOCHS_DIR = "epochs"
EPOCHS_COLUMN = "epochs_csv"  # runs.csv: the run's per-epoch CSV, relative to runs.csv
# files written by hand next to the generated ones (kept when the folder is regenerated)
HAND_WRITTEN = ("explanations.md",)
INT_COLUMNS = ("num_negatives", "seed", "patience", "epochs", "max_steps", "best_epoch")
REQUIRED = (
    "run_id",
    "experiment",
    "run_name",
    *CELL_KEYS,
    "seed",
    "epochs",
    "start_time",
    "recall@20",
    "ndcg@20",
    EPOCHS_COLUMN,
)
# overrides that name a place on the machine that ran them (not a setting of the run)
PATH_KEYS = ("tracking.uri", "tracking.artifact_location", "hydra.sweeper.storage", "hydra.sweep.dir", "hydra.run.dir")
ABSOLUTE = re.compile(r"(^|[=:,\[])(/|~/|[A-Za-z]:\\)|:///")
NOT_PER_EPOCH = ("best_epoch", "steps", "epoch")  # "epoch" is the step itself


def cell_id(row) -> str:
    """``gowalla-mf-mml-N100-paper`` (``-es`` appended with early stop): a cell's name in file names and links."""
    early = "-es" if row["early_stop"] == "Y" else ""
    return f"{row['dataset']}-{row['encoder']}-{row['loss']}-N{row['num_negatives']}-{row['selection']}{early}"


def clean_overrides(text) -> str:
    """The sweep overrides less those naming a machine path (stores, artifact and output folders)."""
    if not isinstance(text, str):
        return text
    keep = [
        tok
        for tok in text.split()
        if tok.split("=", 1)[0].lstrip("+~") not in PATH_KEYS and not ABSOLUTE.search(tok.split("=", 1)[-1])
    ]
    return " ".join(keep)


def epoch_history(client, run_id: str) -> pd.DataFrame:
    """Every per-epoch metric of a run (``best/…``, ``best_epoch`` and ``steps`` left out): one row per epoch, one
    column per metric (``@`` names, sorted). A step logged twice (a resumed epoch) keeps its latest value."""
    keys = sorted(
        k for k in client.get_run(run_id).data.metrics if not k.startswith("best/") and k not in NOT_PER_EPOCH
    )
    series = {}
    for key in keys:
        hist = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        series[metric_name(key)] = pd.Series({m.step: m.value for m in hist}, dtype=float)
    frame = pd.DataFrame(series).sort_index()
    frame.index.name = "epoch"
    return frame.reset_index()


def epoch_file_names(runs: pd.DataFrame) -> list[str]:
    """``epochs/<cell id>-seed<k>.csv`` per run; a repeat of the same cell and seed gets its run id's head."""
    stems = [f"{cell_id(r)}-seed{r['seed']}" for _, r in runs.iterrows()]
    return [
        f"{EPOCHS_DIR}/{s}{'-' + rid[:8] if stems.count(s) > 1 else ''}.csv"
        for s, rid in zip(stems, runs["run_id"], strict=True)
    ]


def export_runs(runs: pd.DataFrame, tracking_uri: str, out: Path) -> Path:
    """Write ``out/runs.csv`` (overrides without machine paths, a column ``epochs_csv``) and ``out/epochs/*.csv``
    (each run's per-epoch metrics from MLflow); returns the path of runs.csv."""
    client = client_for(tracking_uri)
    runs = runs.reset_index(drop=True).copy()
    runs["overrides"] = runs["overrides"].map(clean_overrides)
    runs[EPOCHS_COLUMN] = epoch_file_names(runs)
    (out / EPOCHS_DIR).mkdir(parents=True, exist_ok=True)
    for run_id, rel in zip(runs["run_id"], runs[EPOCHS_COLUMN], strict=True):
        epoch_history(client, run_id).to_csv(out / rel, index=False)
    runs.to_csv(out / "runs.csv", index=False)
    return out / "runs.csv"


def read_runs(path: str | Path) -> pd.DataFrame:
    """``runs.csv`` (as ``export_runs`` wrote it) -> the frame ``fetch_runs`` gives; a missing file or a missing
    column is a ``ReportError``."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"--from-csv {path}: no such file (export one with --export-csv)")
    try:
        df = pd.read_csv(path, dtype={"run_id": str, "parent_run_id": str, "sweep_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ReportError(f"--from-csv {path}: not a CSV file ({str(err).splitlines()[0]})") from err
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ReportError(
            f"--from-csv {path}: missing column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)} (expected a runs.csv written by --export-csv)"
        )
    for col in INT_COLUMNS:
        if col in df:
            df[col] = pd.array(pd.to_numeric(df[col]), dtype="Int64")
    df["start_time"] = pd.to_datetime(df["start_time"])
    metric_cols = sorted(c for c in df.columns if c not in BASE_COLUMNS and c != EPOCHS_COLUMN)
    return df[[c for c in BASE_COLUMNS if c in df.columns] + [EPOCHS_COLUMN] + metric_cols]


def history_from_csv(
    runs: pd.DataFrame, base: Path, run_ids: Sequence[str], metrics: Sequence[str] = ("recall@20", "ndcg@20")
) -> pd.DataFrame:
    """``metric_history``'s frame for ``run_ids`` from their per-epoch CSVs (``epochs_csv``, relative to ``base``)."""
    where = runs.set_index("run_id")[EPOCHS_COLUMN]
    frames = []
    for run_id in run_ids:
        path = base / str(where.get(run_id))
        if not path.is_file():
            raise ReportError(f"run {run_id}: no per-epoch CSV at {path}")
        frame = pd.read_csv(path)
        frame = tracked.with_seconds(
            frame[
                [c for c in frame.columns if c in ("epoch", *metrics, "wall_time_s", "epoch_time_s", "eval_time_s")]
            ].copy()
        )
        if frame is None:
            continue
        frame.insert(0, "run_id", run_id)
        frames.append(frame)
    return tracked.history_frame(frames, metrics)


def stage(runs: pd.DataFrame, tracking_uri: str | None, source: Path, out: Path) -> pd.DataFrame:
    """Put runs.csv, epochs/ and the hand-written files in ``out``: exported from MLflow (``tracking_uri``) or
    copied from ``source`` (the folder of a committed runs.csv); return the runs as read back from out/runs.csv."""
    if tracking_uri is not None:
        export_runs(runs, tracking_uri, out)
    else:
        runs.to_csv(out / "runs.csv", index=False)
        (out / EPOCHS_DIR).mkdir()
        for rel in runs[EPOCHS_COLUMN]:
            if not (source / rel).is_file():
                raise ReportError(f"--from-csv {source / 'runs.csv'}: no per-epoch CSV {source / rel}")
            shutil.copyfile(source / rel, out / rel)
    for hand in HAND_WRITTEN:
        if (source / hand).is_file():
            shutil.copyfile(source / hand, out / hand)
    return read_runs(out / "runs.csv")

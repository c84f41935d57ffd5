"""Committed results: tracked runs -> ``runs.csv`` + one per-epoch CSV per run (no machine paths), and back.

``export_runs`` writes what ``--export-csv`` commits besides the report; ``read_runs`` / ``history_from_csv`` give
``fetch_runs`` / ``metric_history`` frames from those files, so the report rebuilds without the MLflow store.
``export_per_user`` adds each run's per-user metrics (its ``per_user.csv.gz`` artifact) as
``users/<cell>-seed<k>.csv.gz`` and the column ``users_csv``; ``read_per_user`` reads one back."""

import gzip
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from unittest import mock

import pandas as pd

from mmlexp.report import runs as tracked
from mmlexp.report.runs import BASE_COLUMNS, CELL_KEYS, ReportError, client_for, metric_name

EPOCHS_DIR = "epochs"
EPOCHS_COLUMN = "epochs_csv"  # runs.csv: the run's per-epoch CSV, relative to runs.csv
USERS_DIR = "users"
USERS_COLUMN = "users_csv"  # runs.csv: the run's per-user metrics (gzip'd CSV) relative to runs.csv; empty: none
PER_USER_ARTIFACT = "per_user.csv.gz"  # mmlexp.evaluation.per_user.PER_USER_FILE (not imported: no torch here)
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
    runs = export_per_user(client, runs, out)
    # a metric none of these runs logged (another dataset's run in the experiment did) is not a column here
    empty = [c for c in runs.columns if "@" in c and runs[c].isna().all()]
    runs.drop(columns=empty).to_csv(out / "runs.csv", index=False)
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
    files = [EPOCHS_COLUMN] + ([USERS_COLUMN] if USERS_COLUMN in df.columns else [])
    metric_cols = sorted(c for c in df.columns if c not in BASE_COLUMNS and c not in files)
    return df[[c for c in BASE_COLUMNS if c in df.columns] + files + metric_cols]


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
        keep_committed(source, out, tracking_uri)
    else:
        runs.to_csv(out / "runs.csv", index=False)
        (out / EPOCHS_DIR).mkdir()
        for rel in runs[EPOCHS_COLUMN]:
            if not (source / rel).is_file():
                raise ReportError(f"--from-csv {source / 'runs.csv'}: no per-epoch CSV {source / rel}")
            shutil.copyfile(source / rel, out / rel)
        copy_per_user(runs, source, out)
    for hand in HAND_WRITTEN:
        if (source / hand).is_file():
            shutil.copyfile(source / hand, out / hand)
    return read_runs(out / "runs.csv")


def keep_committed(source: Path, out: Path, tracking_uri: str) -> None:
    """Export into a folder that already holds results: its committed runs that the store does not have (a store
    of another machine, or one that is gone) stay, with their per-epoch and per-user files; a (cell, seed, epochs)
    that the store ran again keeps the latest run. Nothing committed is lost by exporting a newer store, but a run
    the store itself deleted (MLflow's soft delete: taken out of the tables on purpose) leaves."""
    committed = source / "runs.csv"
    if not committed.is_file() or source.resolve() == out.resolve():
        return
    old, new = read_runs(committed), read_runs(out / "runs.csv")
    extra = old[~old["run_id"].isin(set(new["run_id"]))]
    extra = extra[~extra["run_id"].isin(tracked.deleted_runs(tracking_uri, extra["run_id"]))]
    for rel in extra[EPOCHS_COLUMN]:
        if not (source / rel).is_file():
            raise ReportError(f"{committed}: no per-epoch CSV {source / rel} (the committed results are incomplete)")
        shutil.copyfile(source / rel, out / rel)
    copy_per_user(extra, source, out)
    merged, _ = tracked.drop_duplicates(pd.concat([extra, new], ignore_index=True), [*CELL_KEYS])
    order = ["dataset", "encoder", "loss", "num_negatives", "seed", "start_time"]
    merged.sort_values(order, na_position="last", ignore_index=True).to_csv(out / "runs.csv", index=False)


def _artifact(client, run_id: str, name: str) -> bytes | None:
    """The bytes of run ``run_id``'s top-level artifact ``name``; None when it has none."""
    if name not in {a.path for a in client.list_artifacts(run_id)}:
        return None
    quiet = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}  # no progress bar per run on stderr
    with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, quiet):
        return Path(client.download_artifacts(run_id, name, tmp)).read_bytes()


def write_gzip(path: Path, data: bytes) -> None:
    """``data`` gzip'd at ``path`` with no time or file name in the header: the same data, the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(data)


def export_per_user(client, runs: pd.DataFrame, out: Path) -> pd.DataFrame:
    """Each run's ``per_user.csv.gz`` artifact -> ``out/users/<its epochs CSV's stem>.csv.gz`` (re-compressed
    with ``write_gzip``); returns ``runs`` with the column ``users_csv`` (that path, or empty without one)."""
    names: list[str | None] = []
    for run_id, epochs in zip(runs["run_id"], runs[EPOCHS_COLUMN], strict=True):
        data = _artifact(client, run_id, PER_USER_ARTIFACT)
        rel = f"{USERS_DIR}/{Path(epochs).stem}.csv.gz" if data is not None else None
        if data is not None:
            try:
                write_gzip(out / str(rel), gzip.decompress(data))
            except (OSError, EOFError) as err:
                raise ReportError(f"run {run_id}: its {PER_USER_ARTIFACT} is not a gzip file ({err})") from err
        names.append(rel)
    return runs.assign(**{USERS_COLUMN: names})


def copy_per_user(runs: pd.DataFrame, source: Path, out: Path) -> None:
    """``--from-csv``: the per-user files named in ``users_csv`` from ``source`` to ``out`` (a missing one is a
    ``ReportError``)."""
    for rel in runs[USERS_COLUMN].dropna() if USERS_COLUMN in runs else []:
        if not (source / rel).is_file():
            raise ReportError(f"--from-csv {source / 'runs.csv'}: no per-user file {source / rel}")
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / rel, out / rel)


def read_per_user(results_dir: str | Path, row) -> pd.DataFrame | None:
    """The per-user metrics of one runs.csv ``row`` (columns ``user, recall@K, ndcg@K``; their means are the row's
    ``recall@K`` / ``ndcg@K``); None when the run has none (no or an empty ``users_csv``); a named file that is
    missing is a ``ReportError``."""
    rel = row.get(USERS_COLUMN)
    if rel is None or pd.isna(rel) or not str(rel):
        return None
    path = Path(results_dir) / str(rel)
    if not path.is_file():
        raise ReportError(f"run {row.get('run_id')}: no per-user file at {path}")
    return pd.read_csv(path)

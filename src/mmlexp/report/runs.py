"""Read tracked runs back from MLflow: one row per FINISHED training run (sweep parent runs left out)."""

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

# A cell of a results table: runs that differ only by their seed.
CELL_KEYS = ("dataset", "encoder", "loss", "num_negatives", "early_stop", "selection")
BASE_COLUMNS = (
    "run_id",
    "experiment",
    "run_name",
    "dataset",
    "encoder",
    "loss",
    "sampler",
    "num_negatives",
    "seed",
    "selection",
    "early_stop",
    "patience",
    "epochs",
    "max_steps",
    "best_epoch",
    "recall@20",
    "ndcg@20",
    "wall_time_s",
    "duration_s",
    "start_time",
    "parent_run_id",
    "sweep_id",
    "overrides",
    "cpu",
)
NULLS = {"", "none", "null", "nan"}


class ReportError(ValueError):
    """Bad input to the report (unknown experiment, missing store, no runs): a message for the user."""


def metric_name(mlflow_key: str) -> str:
    """``best/recall_at_20`` -> ``recall@20`` (the inverse of ``mmlexp.tracking.mlflow_key``, prefix dropped)."""
    name = mlflow_key[len("best/") :] if mlflow_key.startswith("best/") else mlflow_key
    return name.replace("_at_", "@")


def override_value(overrides, key: str) -> str | None:
    """The value ``key=`` takes in a run's overrides (``runs.csv``'s space-separated column), None where unset."""
    for token in str(overrides or "").split():
        if token.startswith(f"{key}="):
            return token.split("=", 1)[1]
    return None


def client_for(tracking_uri: str):
    """An ``MlflowClient`` on an existing store (a missing SQLite file is an error, never created)."""
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///") :]).expanduser()
        if not path.is_file():
            raise ReportError(
                f"--tracking-uri {tracking_uri}: no MLflow store at {path.resolve()} "
                "(run an experiment first, or point --tracking-uri at the store)"
            )
    elif "://" not in tracking_uri and not Path(tracking_uri).exists():
        raise ReportError(f"--tracking-uri {tracking_uri}: no such MLflow store")
    return MlflowClient(tracking_uri=tracking_uri)


def resolve_experiments(client, experiments: Sequence[str] | str | None) -> dict[str, str]:
    """Experiment names -> ids. Unknown names are an error naming them and listing the existing ones."""
    from mlflow.entities import ViewType

    existing = {e.name: e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)}
    if experiments is None or (not isinstance(experiments, str) and len(experiments) == 0):
        return existing
    names = [experiments] if isinstance(experiments, str) else list(experiments)
    unknown = [n for n in names if n not in existing]
    if unknown:
        listed = ", ".join(sorted(existing)) or "(none)"
        raise ReportError(
            f"unknown experiment{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(n) for n in unknown)}; existing experiments: {listed}"
        )
    return {n: existing[n] for n in names}


def _int(value) -> int | None:
    if value is None or str(value).strip().lower() in NULLS:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def _option(tags: dict, params: dict, group: str) -> str | None:
    """The option of a config group: the ``choice.<group>`` tag, else the module of ``<group>._target_``."""
    if tags.get(f"choice.{group}"):
        return tags[f"choice.{group}"]
    target = params.get(f"{group}._target_")
    return target.split(".")[-2] if target and "." in target else target


def run_row(run, experiment: str) -> dict:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    patience, epochs = _int(params.get("trainer.patience")), _int(params.get("trainer.epochs"))
    early = patience is not None and (epochs is None or patience < epochs)
    num_neg = params.get("num_negatives", params.get("sampler.num_negatives"))
    start, end = run.info.start_time, run.info.end_time
    row = {
        "run_id": run.info.run_id,
        "experiment": experiment,
        "run_name": run.info.run_name,
        "dataset": tags.get("dataset") or tags.get("choice.dataset") or params.get("dataset.name"),
        "encoder": _option(tags, params, "encoder"),
        "loss": _option(tags, params, "loss"),
        "sampler": _option(tags, params, "sampler"),
        "num_negatives": _int(num_neg),
        "seed": _int(params.get("seed")),
        # before eval.selection existed every run picked its best epoch on the test split: the paper's protocol
        "selection": tags.get("selection") or params.get("eval.selection") or "paper",
        "early_stop": "Y" if early else "N",
        "patience": patience,
        "epochs": epochs,
        "max_steps": _int(params.get("trainer.max_steps")),
        "best_epoch": _int(metrics.get("best_epoch")),
        "wall_time_s": metrics.get("wall_time_s", math.nan),
        "duration_s": (end - start) / 1000 if start and end else math.nan,
        "start_time": pd.Timestamp(start, unit="ms") if start else pd.NaT,
        "parent_run_id": tags.get("mlflow.parentRunId"),
        "sweep_id": tags.get("sweep.id"),
        "overrides": tags.get("sweep.overrides"),
        "cpu": tags.get("cpu"),  # mmlexp.devices.cpu_tags; None for a run made before the tag
        "recall@20": math.nan,
        "ndcg@20": math.nan,
    }
    for key, value in metrics.items():
        if key.startswith("best/"):
            row[metric_name(key)] = value
    return row


def _search(client, experiment_ids: Iterable[str], filter_string: str) -> list:
    """Every active run of the experiments that matches the filter (deleted ones left out)."""
    from mlflow.entities import ViewType

    runs, token = [], None
    while True:
        page = client.search_runs(
            list(experiment_ids),
            filter_string=filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def deleted_runs(tracking_uri: str, run_ids: Iterable[str]) -> set[str]:
    """The ``run_ids`` that the store holds as deleted (MLflow's soft delete, undone by ``restore_run``); a run the
    store does not hold (another machine's) is not."""
    from mlflow.exceptions import MlflowException

    client, out = client_for(tracking_uri), set()
    for run_id in run_ids:
        try:
            if client.get_run(run_id).info.lifecycle_stage == "deleted":
                out.add(run_id)
        except MlflowException:
            continue
    return out


def fetch_runs(tracking_uri: str, experiments: list[str] | str | None = None, filter_string: str = "") -> pd.DataFrame:
    """One row per FINISHED training run of ``experiments`` (names; None: every active experiment), sweep parent
    runs left out. ``filter_string`` is an MLflow search filter (``"params.trainer.epochs = '100'"``), AND-ed
    with the FINISHED condition.

    Columns: run_id, experiment, dataset, encoder, loss, sampler, num_negatives (int), seed (int), selection
    (``paper``: best epoch on the test split as in the paper; ``valid``: on a validation split), early_stop
    (Y/N), patience, epochs, best_epoch, the best-epoch metrics (every ``best/`` metric with ``_at_`` turned
    back into ``@``: ``recall@20``, ``ndcg@20``, ``tail_recall@20_g0``, ...), wall_time_s, duration_s, start
    time and the sweep tags (parent_run_id, sweep_id, overrides).
    """
    client = client_for(tracking_uri)
    ids = resolve_experiments(client, experiments)
    names = {v: k for k, v in ids.items()}
    query = "attributes.status = 'FINISHED'" + (f" and {filter_string}" if filter_string.strip() else "")
    rows = []
    if ids:
        try:
            found = _search(client, ids.values(), query)
        except Exception as err:  # MLflow's parser refuses the filter
            raise ReportError(f"--filter {filter_string!r}: {str(err).splitlines()[0]}") from err
        rows = [run_row(r, names[r.info.experiment_id]) for r in found if r.data.tags.get("sweep.role") != "parent"]
    df = pd.DataFrame(rows, columns=None if rows else list(BASE_COLUMNS))
    for col in ("num_negatives", "seed", "patience", "epochs", "max_steps", "best_epoch"):
        df[col] = pd.array(df[col], dtype="Int64")
    metric_cols = sorted(c for c in df.columns if c not in BASE_COLUMNS)
    df = df[list(BASE_COLUMNS) + metric_cols]
    return df.sort_values(
        ["dataset", "encoder", "loss", "num_negatives", "seed", "start_time"], na_position="last", ignore_index=True
    )


def drop_duplicates(df: pd.DataFrame, keys: Sequence[str] = CELL_KEYS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep the latest run of each (cell, seed, epochs); return (kept, dropped)."""
    subset = [*keys, "seed", "epochs"]
    order = df.sort_values("start_time")
    dup = order.duplicated(subset=subset, keep="last")
    return order[~dup].sort_index(), order[dup].sort_index()


def metric_history(
    tracking_uri: str, run_ids: Sequence[str], metrics: Sequence[str] = ("recall@20", "ndcg@20")
) -> pd.DataFrame:
    """Per-epoch history of ``run_ids``: columns run_id, epoch, the ``metrics`` (``@`` names), seconds (wall-clock
    since training start) and time_source (``wall_time_s`` when the run logged it, else the cumulative sum of
    ``epoch_time_s`` + ``eval_time_s``)."""
    client = client_for(tracking_uri)
    frames = []
    for run_id in run_ids:
        series = {}
        for name in (*metrics, "wall_time_s", "epoch_time_s", "eval_time_s"):
            key = name.replace("@", "_at_")
            hist = client.get_metric_history(run_id, key)
            if hist:
                series[name] = pd.Series({m.step: m.value for m in hist}, name=name)
        if not series:
            continue
        frame = pd.DataFrame(series).sort_index()
        frame.index.name = "epoch"
        frame = with_seconds(frame.reset_index())
        if frame is None:
            continue
        frame.insert(0, "run_id", run_id)
        frames.append(frame)
    return history_frame(frames, metrics)


def with_seconds(frame: pd.DataFrame) -> pd.DataFrame | None:
    """Add ``seconds`` and ``time_source`` to a per-epoch frame (``wall_time_s`` when logged, else the cumulative
    sum of ``epoch_time_s`` + ``eval_time_s``); None when it has neither."""
    if "wall_time_s" in frame and frame["wall_time_s"].notna().any():
        frame["seconds"], frame["time_source"] = frame["wall_time_s"], "wall_time_s"
    elif "epoch_time_s" in frame:
        evals = frame["eval_time_s"] if "eval_time_s" in frame else pd.Series(0.0, index=frame.index)
        total = frame["epoch_time_s"].fillna(0) + evals.fillna(0)
        frame["seconds"], frame["time_source"] = total.cumsum(), "epoch_time_s+eval_time_s"
    else:
        return None
    return frame


def history_frame(frames: list[pd.DataFrame], metrics: Sequence[str]) -> pd.DataFrame:
    """Concatenate per-run history frames into ``metric_history``'s columns."""
    cols = ["run_id", "epoch", *metrics, "seconds", "time_source"]
    if not frames:
        return pd.DataFrame(columns=cols)
    out = pd.concat(frames, ignore_index=True)
    for m in metrics:
        if m not in out:
            out[m] = math.nan
    return out[cols]


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"

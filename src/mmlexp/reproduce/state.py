"""Which runs of a plan are done, running or still to run.

Done: a row of the committed ``results/<dataset>/runs.csv`` (or ``results/<plan>/runs.csv``) of the plan's
experiment (so a fresh machine, whose stores are empty, does not redo what is committed) or a FINISHED run of it in
the store. Running: a RUNNING run in the store, with the epochs it has logged and its recent pace. Everything else
is pending; a pending run whose last run was interrupted (FAILED or KILLED in the store) resumes from its checkpoint
when run, so it carries that run's id and the epochs it logged.
"""

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mmlexp.reproduce.plan import Plan, Run
from mmlexp.reproduce.stores import Stores

KEY_COLUMNS = ("dataset", "encoder", "loss", "num_negatives", "selection", "seed", "epochs")
DONE, RUNNING, PENDING = "done", "running", "pending"
PACE_EPOCHS = 5  # a running run's pace: the median of its last epochs (training + evaluation)


@dataclass(frozen=True)
class RunState:
    run: Run
    state: str
    source: str = ""  # "committed", the MLflow run id (done, running, or the interrupted run a pending one resumes)
    epoch: int = 0  # epochs logged so far (running, or the interrupted run a pending one resumes)
    pace_s: float = math.nan  # seconds per recent epoch (running, or interrupted)
    twin: str = ""  # a pending run's twin (``mmlexp.reproduce.twins``): the finished run the runner copies


def row_key(row) -> tuple:
    """``Run.key`` of a ``runs.csv`` / store row: the cell's columns, plus the patience of an early-stopping run."""
    values = [row[c] for c in KEY_COLUMNS]
    key = (str(values[0]), str(values[1]), str(values[2]), int(values[3]), str(values[4]), int(values[5]),
           int(values[6]))  # fmt: skip
    patience = row.get("patience")
    if row.get("early_stop") == "Y" and patience is not None and not pd.isna(patience):
        return (*key, int(patience))
    return key


def committed_runs(folder: Path, experiment: str | None = None) -> dict[tuple, str]:
    """Keys of the runs committed in ``folder/runs.csv`` (full runs only: no max_steps; an early-stopping run counts
    with its patience), of ``experiment`` only where given (a plan of checks, tracked apart, is not done by the
    paper plan's run of the same cell)."""
    path = folder / "runs.csv"
    if not path.is_file():
        return {}
    df = pd.read_csv(path)
    if experiment is not None and "experiment" in df:
        df = df[df["experiment"] == experiment]
    full = df[df["max_steps"].isna()] if "max_steps" in df else df
    return {row_key(r): "committed" for _, r in full.iterrows()}


def store_runs(stores: Stores, experiment: str, statuses: tuple[str, ...] = ("FINISHED",)) -> pd.DataFrame:
    """The store's training runs of ``experiment`` whose status is one of ``statuses`` (run_row columns and
    ``status``), read in one search; empty without a store."""
    from mmlexp.report.runs import ReportError, _search, client_for, resolve_experiments, run_row

    if not stores.exists():
        return pd.DataFrame()
    client = client_for(stores.tracking_uri)
    try:
        ids = resolve_experiments(client, experiment)
    except ReportError:  # the experiment has no run yet
        return pd.DataFrame()
    one = f"attributes.status = '{statuses[0]}'" if len(statuses) == 1 else ""  # MLflow's filters have no "or"
    found = [r for r in _search(client, ids.values(), one) if r.info.status in statuses]
    rows = [
        run_row(r, experiment) | {"status": r.info.status} for r in found if r.data.tags.get("sweep.role") != "parent"
    ]
    return pd.DataFrame(rows).dropna(subset=["num_negatives", "seed", "epochs"]) if rows else pd.DataFrame()


def interrupted_runs(runs: pd.DataFrame) -> dict[tuple, str]:
    """Keys of the ``runs`` (``store_runs``) that ended without finishing (FAILED, KILLED), each with the id of its
    latest such run: a checkpoint of theirs may be there to resume. (A RUNNING one is ``plan_state``'s RUNNING.)"""
    ended = _with_status(runs, "FAILED", "KILLED")
    rows = sorted((r for _, r in ended.iterrows()), key=lambda r: str(r["start_time"]))
    return {row_key(r): str(r["run_id"]) for r in rows}  # a key's latest run last: it wins


def _with_status(runs: pd.DataFrame, *statuses: str) -> pd.DataFrame:
    return runs[runs["status"].isin(statuses)] if len(runs) else runs


def progress(stores: Stores, run_id: str) -> tuple[int, float]:
    """(epochs logged, median seconds of the last epochs) of a run in the store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(stores.tracking_uri)
    train = {m.step: m.value for m in client.get_metric_history(run_id, "epoch_time_s")}
    evals = {m.step: m.value for m in client.get_metric_history(run_id, "eval_time_s")}
    recent = [train[e] + evals.get(e, 0.0) for e in sorted(train)[-PACE_EPOCHS:]]
    return len(train), (statistics.median(recent) if recent else math.nan)


def plan_state(plan: Plan, stores: Stores, results_root: Path) -> list[RunState]:
    """Every run of the plan with its state, in the plan's order. Committed runs are read from the dataset's
    folder and from the plan's own report folder (``reproduce report PLAN`` writes ``results/<plan>/``: a plan of
    checks), of the plan's experiment."""
    done = {}
    for folder in dict.fromkeys((plan.dataset, plan.name)):
        done.update(committed_runs(results_root / folder, plan.experiment))
    store = store_runs(stores, plan.experiment, ("FINISHED", "RUNNING", "FAILED", "KILLED"))
    for _, r in _with_status(store, "FINISHED").iterrows():
        done.setdefault(row_key(r), str(r["run_id"]))
    running = {row_key(r): str(r["run_id"]) for _, r in _with_status(store, "RUNNING").iterrows()}
    interrupted = interrupted_runs(store)
    states = []
    for run in plan.runs:
        if run.key in done:
            states.append(RunState(run, DONE, done[run.key]))
        elif run.key in running:
            epoch, pace = progress(stores, running[run.key])
            states.append(RunState(run, RUNNING, running[run.key], epoch, pace))
        elif run.key in interrupted:  # pending, and it will resume from what the interrupted run logged
            epoch, pace = progress(stores, interrupted[run.key])
            states.append(RunState(run, PENDING, interrupted[run.key], epoch, pace))
        else:
            states.append(RunState(run, PENDING))
    return states

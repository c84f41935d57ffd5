"""How far along are the grids in a ledger? ``python -m mmlexp.sweep.status --storage sqlite:///optuna.db``.

Reads the grid ledger (``mmlexp.sweep.ledger``) and, for each point's MLflow run (tags ``grid.point`` under the
grid's parent run), the epochs logged so far; writes nothing.  Per grid: the points with the overrides that tell
them apart, their state, ``epoch k/n`` and, for a running point, the time left at its recent pace (the median of
its last 5 epochs, training plus evaluation).  A point marked running whose worker is gone (its pid no longer
alive on this host) is shown as ``stalled``: re-run the grid's command to resume it.

    make reproduce-status            # the Gowalla reproduction's stores in RUNS
"""

import argparse
import datetime as dt
import json
import socket
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from mmlexp.sweep.errors import SweepError, mask_url
from mmlexp.sweep.ledger import RUNNING, grids, points
from mmlexp.sweep.liveness import alive_since

PACE_EPOCHS = 5  # recent epochs whose median time gives a running point's pace


@dataclass
class Progress:
    """A point's MLflow run: epochs logged, the epoch budget, seconds per recent epoch."""

    epoch: int
    epochs: int | None
    pace: float | None


def open_ledger(url: str) -> sa.Engine:
    """The ledger's engine, read as it is: a SQLite file that does not exist is an error (never created)."""
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).expanduser().is_file():
        raise SweepError(f"--storage {mask_url(url)!r}: no such SQLite file (a grid's hydra.sweeper.storage)")
    try:
        engine = sa.create_engine(url)
        with engine.connect() as db:
            present = sa.inspect(db).has_table(grids.name)
    except Exception as err:
        raise SweepError(f"--storage {mask_url(url)!r}: cannot be read ({type(err).__name__}: {err})") from err
    if not present:
        raise SweepError(f"--storage {mask_url(url)!r}: holds no grid ledger (no grid has run with it)")
    return engine


def read_grids(engine: sa.Engine) -> list[dict[str, Any]]:
    """Every grid (its current generation) with its points, oldest grid first."""
    with engine.connect() as db:
        rows = [dict(r) for r in db.execute(sa.select(grids).order_by(grids.c.created)).mappings()]
        for grid in rows:
            grid["points"] = [
                dict(p) | {"overrides": json.loads(p["overrides"])}
                for p in db.execute(
                    sa.select(points)
                    .where(points.c.fingerprint == grid["fingerprint"], points.c.generation == grid["generation"])
                    .order_by(points.c.idx)
                ).mappings()
            ]
    return rows


def tracking_uri_of(overrides: list[str]) -> str | None:
    """``tracking.uri`` from a point's overrides (Hydra escapes its ``:`` as ``\\:``)."""
    for token in overrides:
        key, _, value = token.partition("=")
        if key.lstrip("+~") == "tracking.uri":
            return value.replace("\\:", ":").strip("'\"")
    return None


def run_progress(tracking_uri: str, parent_run_id: str) -> dict[int, Progress]:
    """grid.point -> the progress of its MLflow run under ``parent_run_id`` (the latest run of a point)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        experiments, f"tags.`mlflow.parentRunId` = '{parent_run_id}'", order_by=["attributes.start_time ASC"]
    )
    out = {}
    for run in runs:
        point = run.data.tags.get("grid.point")
        if point is None:
            continue
        times: dict[int, float] = {}
        for key in ("epoch_time_s", "eval_time_s"):
            for m in client.get_metric_history(run.info.run_id, key):
                times[m.step] = times.get(m.step, 0.0) + m.value
        recent = [times[e] for e in sorted(times)[-PACE_EPOCHS:]]
        budget = run.data.params.get("trainer.epochs")
        out[int(point)] = Progress(
            epoch=int(run.data.metrics.get("epoch", max(times, default=0))),
            epochs=int(budget) if budget not in (None, "None") else None,
            pace=statistics.median(recent) if recent else None,
        )
    return out


def varying(grids_: list[dict[str, Any]]) -> set[str]:
    """Override tokens not shared by every point shown: what tells the points apart."""
    tokens = [set(p["overrides"]) for g in grids_ for p in g["points"]]
    return set().union(*tokens) - set.intersection(*tokens) if tokens else set()


def minutes(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def label_of(point: dict[str, Any], shown: set[str]) -> str:
    return " ".join(t for t in point["overrides"] if t in shown) or "(the only point)"


def point_line(
    point: dict[str, Any], shown: set[str], progress: Progress | None, now: float, width: int = 40
) -> tuple[str, float]:
    """One point's line (its label padded to ``width``) and the seconds it has left (0 when unknown or done)."""
    label = label_of(point, shown)
    state = point["state"]
    if state == RUNNING and point["host"] == socket.gethostname() and point["pid"] is not None:
        if not alive_since(point["pid"], point["pid_started"]):
            state = "stalled (worker gone: re-run the grid's command)"
    elif state == RUNNING and point["heartbeat"] is not None:
        state += f" on {point['host']} (heartbeat {now - point['heartbeat']:.0f} s ago)"
    left = 0.0
    bits = [f"#{point['idx']:<3} {label:<{width}} {state}"]
    if progress is not None:
        bits.append(f"epoch {progress.epoch}/{progress.epochs if progress.epochs is not None else '?'}")
        if point["state"] == RUNNING and progress.pace and progress.epochs:
            left = max(0, progress.epochs - progress.epoch) * progress.pace
            bits.append(f"{progress.pace:.1f} s/epoch, about {minutes(left)} left")
    if point["attempts"] and point["attempts"] > 1:
        bits.append(f"{point['attempts']} attempts")
    if point.get("message"):
        bits.append(str(point["message"]).splitlines()[0][:120])
    return "  ".join(bits), left


def report(storage: str, tracking_uri: str | None = None) -> str:
    """The status text of every grid in ``storage``."""
    grids_ = read_grids(open_ledger(storage))
    if not grids_:
        return f"{mask_url(storage)}: no grids yet"
    shown, now, lines = varying(grids_), time.time(), []
    width = max((len(label_of(p, shown)) for g in grids_ for p in g["points"]), default=0)
    total: Counter[str] = Counter()
    left = 0.0
    for grid in grids_:
        uri = tracking_uri or next((u for p in grid["points"] if (u := tracking_uri_of(p["overrides"]))), None)
        progress = run_progress(uri, grid["parent_run_id"]) if uri and grid["parent_run_id"] else {}
        counts = Counter(p["state"] for p in grid["points"])
        total += counts
        created = dt.datetime.fromtimestamp(grid["created"]).isoformat(sep=" ", timespec="minutes")
        lines += [
            f"grid {grid['fingerprint'][:8]} (generation {grid['generation']}, started {created}): "
            + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
            f"  {grid['command'] or ''}",
        ]
        for p in grid["points"]:
            line, secs = point_line(p, shown, progress.get(p["idx"]), now, width)
            lines.append("  " + line)
            left += secs
    lines.append(
        f"{sum(total.values())} points: "
        + ", ".join(f"{n} {s}" for s, n in sorted(total.items()))
        + (f"; the running points need about {minutes(left)} more" if left else "")
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmlexp.sweep.status", description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True, help="the grids' hydra.sweeper.storage (SQLAlchemy URL)")
    parser.add_argument(
        "--tracking-uri", help="MLflow store of the runs (default: each grid's tracking.uri override, if any)"
    )
    args = parser.parse_args(argv)
    try:
        print(report(args.storage, args.tracking_uri))
    except SweepError as err:
        print(f"mmlexp.sweep.status: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The grid ledger: one row per grid point in an RDB storage (the Optuna searches' SQLite or PostgreSQL).

A grid is identified by the fingerprint of its points (the override lists, in order) and its MLflow
store, so re-running the same command finds it again.  Workers claim points with compare-and-swap
``UPDATE``s, which makes every point run exactly once however many workers share the storage:

    pending --claim--> running --> finished | failed
    running (worker dead: its pid gone on this host, or no heartbeat for grace_period s) --reclaim--> running

A new invocation turns ``failed`` points back to ``pending`` (they run again); ``finished`` points are
not run again, unless their runs were deleted from the MLflow store (``take_back``: the grid sweeper asks the
store).  ``fresh=True`` starts a new generation of the grid: every point pending, a new parent run.
"""

import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from mmlexp import faults
from mmlexp.sweep.errors import SweepError, mask_url
from mmlexp.sweep.liveness import alive_since

PENDING, RUNNING, FINISHED, FAILED = "pending", "running", "finished", "failed"

metadata = sa.MetaData()
grids = sa.Table(
    "mmlexp_grids",
    metadata,
    sa.Column("fingerprint", sa.String(64), primary_key=True),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("sweep_dir", sa.Text, nullable=False),
    sa.Column("parent_run_id", sa.String(64)),
    sa.Column("command", sa.Text),
    sa.Column("n_points", sa.Integer, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
)
points = sa.Table(
    "mmlexp_grid_points",
    metadata,
    sa.Column("fingerprint", sa.String(64), primary_key=True),
    sa.Column("generation", sa.Integer, primary_key=True),
    sa.Column("idx", sa.Integer, primary_key=True),
    sa.Column("overrides", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("host", sa.String(255)),
    sa.Column("pid", sa.Integer),
    sa.Column("pid_started", sa.Float),
    sa.Column("heartbeat", sa.Float),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("message", sa.Text),
)


def fingerprint(point_overrides: list[list[str]], tracking: str) -> str:
    """The same points (in any order, their overrides in any order) and the same MLflow store: the same grid.
    (The ledger's rows, not the command line, say which point is which index.)"""
    points = sorted(sorted(point) for point in point_overrides)
    text = json.dumps({"points": points, "tracking": tracking}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class Point:
    idx: int
    overrides: list[str]
    attempts: int  # claims so far, this one included: > 1 means the point was interrupted before


class Ledger:
    """The grid ledger in ``url`` (any SQLAlchemy URL).  ``grace_period``: seconds without a heartbeat after
    which another host's running point is taken over."""

    def __init__(self, url: str, grace_period: float = 300.0):
        try:
            if url.startswith("sqlite:///"):
                from pathlib import Path

                Path(url[len("sqlite:///") :]).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
            args = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
            self.engine = sa.create_engine(url, **args)
            for attempt in range(5):  # workers started together race to create the tables: the loser retries
                try:
                    metadata.create_all(self.engine)
                    break
                except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError):
                    if attempt == 4:
                        raise
                    time.sleep(0.2 * (attempt + 1))
        except Exception as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise SweepError(
                f"hydra.sweeper.storage={mask_url(url)!r}: cannot open the grid ledger ({type(err).__name__}: {reason})"
            ) from err
        self.grace_period = grace_period
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.pid_started = _process_start(self.pid)
        self.key: tuple[str, int] | None = None

    # ---- the grid
    def open_grid(
        self, fp: str, point_overrides: list[list[str]], sweep_dir: str, command: str, fresh: bool = False
    ) -> dict[str, Any]:
        """Find (or create) the grid ``fp``; ``fresh``: start its next generation.  Returns its row.
        Points of the current generation that failed before are pending again."""
        with self.engine.begin() as db:
            found = db.execute(sa.select(grids).where(grids.c.fingerprint == fp)).mappings().first()
            if found is None:
                try:
                    db.execute(
                        grids.insert().values(
                            fingerprint=fp,
                            generation=1,
                            sweep_dir=sweep_dir,
                            command=command,
                            n_points=len(point_overrides),
                            created=time.time(),
                        )
                    )
                except sa.exc.IntegrityError:  # another worker created it in between
                    pass
            elif fresh:
                db.execute(
                    grids.update()
                    .where(grids.c.fingerprint == fp)
                    .values(
                        generation=found["generation"] + 1,
                        sweep_dir=sweep_dir,
                        parent_run_id=None,
                        command=command,
                        created=time.time(),
                    )
                )
        with self.engine.begin() as db:
            row: dict[str, Any] = dict(db.execute(sa.select(grids).where(grids.c.fingerprint == fp)).mappings().one())
        self.key = (fp, row["generation"])
        with self.engine.begin() as db:
            known = {r.idx for r in db.execute(sa.select(points.c.idx).where(*self._where()))}
            for idx, overrides in enumerate(point_overrides):
                if idx not in known:
                    try:
                        with db.begin_nested():
                            db.execute(
                                points.insert().values(
                                    fingerprint=fp,
                                    generation=row["generation"],
                                    idx=idx,
                                    overrides=json.dumps(overrides),
                                    state=PENDING,
                                    attempts=0,
                                )
                            )
                    except sa.exc.IntegrityError:
                        pass
            db.execute(points.update().where(*self._where(), points.c.state == FAILED).values(state=PENDING))
        return row

    @property
    def grid(self) -> tuple[str, int]:
        """(fingerprint, generation) of the grid opened by ``open_grid``."""
        if self.key is None:
            raise RuntimeError("open_grid() first")
        return self.key

    def set_parent(self, run_id: str) -> str:
        """Record the grid's parent MLflow run unless another worker did first; returns the one recorded."""
        fp, generation = self.grid
        with self.engine.begin() as db:
            db.execute(
                grids.update()
                .where(grids.c.fingerprint == fp, grids.c.generation == generation, grids.c.parent_run_id.is_(None))
                .values(parent_run_id=run_id)
            )
            return db.execute(sa.select(grids.c.parent_run_id).where(grids.c.fingerprint == fp)).scalar_one()

    def _where(self) -> list:
        fp, generation = self.grid
        return [points.c.fingerprint == fp, points.c.generation == generation]

    # ---- points
    def states(self) -> dict[int, str]:
        with self.engine.begin() as db:
            return {r.idx: r.state for r in db.execute(sa.select(points.c.idx, points.c.state).where(*self._where()))}

    def claim(self, n: int) -> list[Point]:
        """Claim up to ``n`` points for this worker: pending ones first, then running ones whose worker died."""
        claimed: list[Point] = []
        now = time.time()
        with self.engine.begin() as db:
            rows = (
                db.execute(
                    sa.select(points)
                    .where(*self._where(), points.c.state.in_((PENDING, RUNNING)))
                    .order_by(points.c.idx)
                )
                .mappings()
                .all()
            )
        for row in rows:
            if len(claimed) == n:
                break
            if row["state"] == RUNNING and not self._dead(row, now):
                continue
            mine = self._held(now) | dict(attempts=row["attempts"] + 1, message=None)
            same = [points.c.idx == row["idx"], points.c.state == row["state"], points.c.attempts == row["attempts"]]
            with self.engine.begin() as db:
                if db.execute(points.update().where(*self._where(), *same).values(**mine)).rowcount == 1:
                    claimed.append(Point(row["idx"], json.loads(row["overrides"]), row["attempts"] + 1))
        return claimed

    def _held(self, now: float) -> dict[str, Any]:
        """A point's row values while this worker holds it (running, its host and pid, a fresh heartbeat)."""
        return dict(state=RUNNING, host=self.host, pid=self.pid, pid_started=self.pid_started, heartbeat=now)

    def _dead(self, row: Any, now: float) -> bool:
        if row["host"] == self.host and row["pid"] is not None:
            return not alive_since(row["pid"], row["pid_started"])
        return row["heartbeat"] is None or now - row["heartbeat"] > self.grace_period

    def _update_mine(self, where: list, **values: Any) -> None:
        """Update this worker's points matching ``where`` (another worker's rows are never touched)."""
        with self.engine.begin() as db:
            mine = [points.c.pid == self.pid, points.c.host == self.host]
            db.execute(points.update().where(*self._where(), *mine, *where).values(**values))

    def beat(self, idxs: list[int]) -> None:
        """Heartbeat of this worker's running points."""
        self._update_mine([points.c.idx.in_(idxs), points.c.state == RUNNING], heartbeat=time.time())

    def finish(self, idx: int, state: str, message: str | None = None) -> None:
        faults.hit("ledger")  # fault injection (tests/faults): a no-op unless MMLEXP_FAULT is set
        self._update_mine([points.c.idx == idx], state=state, message=message)

    def take_back(self, idx: int) -> bool:
        """A finished point to run again (its runs were withdrawn from the store): running by this worker, so that
        one worker alone clears its run directory, then ``release`` makes it pending.  False: not finished now."""
        with self.engine.begin() as db:
            where = [*self._where(), points.c.idx == idx, points.c.state == FINISHED]
            return db.execute(points.update().where(*where).values(**self._held(time.time()))).rowcount == 1

    def release(self, idxs: list[int]) -> None:
        """Points this worker claimed but will not run (Ctrl-C): pending again at once."""
        self._update_mine([points.c.idx.in_(idxs), points.c.state == RUNNING], state=PENDING)


def _process_start(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None

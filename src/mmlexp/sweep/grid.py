"""``GridSweeper`` (``hydra/sweeper=mmlexp_grid``, the default for ``-m``): Hydra's basic grid, made resumable,
shareable between workers and checked before it starts.

* Every point of the grid is composed and validated first; one bad point exits 2 naming the point and the key,
  before anything is written (no ledger rows, no MLflow run, no ``multirun/`` folder).
* The points live in a ledger (``mmlexp.sweep.ledger``) in ``storage``, the Optuna searches' RDB storage.
  Re-running the same command skips the FINISHED points, runs the rest and reopens the one parent MLflow run;
  a finished point whose runs were all deleted from the MLflow store (a run withdrawn in the UI) runs again, in a
  fresh run directory; ``hydra.sweeper.fresh=true`` starts the grid over.  Several workers started with the same
  command on one storage split the points; a point whose worker died is taken over.
* Each point runs in a fixed directory, ``<first sweep dir>/<point index>``, so an interrupted point resumes
  from its last checkpoint (``trainer.resume=auto``).
* A point that fails (an error, a diverged run) is recorded and the grid carries on; the sweep exits 1 at the
  end if any point of this pass failed.
"""

import contextlib
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from mmlexp.sweep.errors import SweepError, mask_url
from mmlexp.sweep.jobs import MAX_TAG, POINT_ENV
from mmlexp.sweep.ledger import FAILED, FINISHED, RUNNING, Ledger, fingerprint
from mmlexp.sweep.parent import check_before_writing, command_line, exit_status, open_parent, stale_after_s

log = logging.getLogger(__name__)


class GridSweeper(BasicSweeper):
    """Hydra's basic sweeper (same ``params`` and sweep syntax) with a ledger; see the module docstring."""

    def __init__(
        self,
        storage: str,
        fresh: bool = False,
        batch_size: int | None = None,
        max_batch_size: int | None = None,
        params: dict[str, str] | None = None,
        heartbeat_interval: float = 60,
        grace_period: float | None = None,
        poll_interval: float = 5,
    ):
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.storage, self.fresh = storage, fresh
        self.batch_size = batch_size or max_batch_size or 1
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period or 5 * heartbeat_interval
        self.poll_interval = poll_interval

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.context, self.cfg = hydra_context, config  # (the base class keeps them as Optional)
        assert self.launcher is not None
        self.job_launcher = self.launcher

    # ---- the points, checked before anything is written
    def points(self, arguments: list[str]) -> list[list[str]]:
        parser = OverridesParser.create(config_loader=self.context.config_loader)
        try:
            overrides = parser.parse_overrides(self._parse_config() + list(arguments))
            batches = self.split_arguments(overrides, None)
        except Exception as err:
            raise SweepError(f"the sweep's overrides: {err}") from err
        return [list(point) for point in batches[0]]

    def check(self, points: list[list[str]]) -> None:
        """Compose and validate every point (config rules, the loss's own checks): the first bad one raises."""
        from mmlexp.config import ConfigError, allowed_targets, build, validate

        for idx, point in enumerate(points):
            where = f"grid point {idx} of {len(points)} ({' '.join(point)})"
            try:
                cfg = self.context.config_loader.load_sweep_config(self.cfg, point)
                with contextlib.suppress(Exception):
                    del cfg["hydra"]
                validate(cfg)
                build("loss", cfg.loss, allowed_targets(cfg))
            except ConfigError as err:
                raise SweepError(f"{where}: {err}") from err
            except Exception as err:  # composition: an unknown key or option
                reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise SweepError(f"{where}: {reason}") from err

    # ---- the loop
    def sweep(self, arguments: list[str]) -> Any:
        try:
            if not isinstance(self.batch_size, int) or self.batch_size < 1:
                raise SweepError(f"hydra.sweeper.batch_size={self.batch_size!r}: must be an integer >= 1")
            points = self.points(arguments)
            self.check(points)
            check_before_writing(self.cfg)  # an unusable store or sweep dir stops the grid before the ledger is written
            tracking = OmegaConf.select(self.cfg, "tracking.uri") or ""
            experiment = OmegaConf.select(self.cfg, "tracking.experiment") or ""
            ledger = Ledger(str(self.storage), grace_period=self.grace_period)
        except SweepError as err:  # a clear message, no traceback; nothing was written
            print(f"mmlexp: error: {err}", file=sys.stderr)
            sys.exit(2)
        fp = fingerprint(points, f"{tracking}#{experiment}")
        here = Path(str(self.cfg.hydra.sweep.dir)).resolve()
        grid = ledger.open_grid(fp, points, str(here), command_line()[:MAX_TAG], fresh=bool(self.fresh))
        sweep_dir = Path(grid["sweep_dir"])
        if tracking and OmegaConf.select(self.cfg, "tracking.enabled"):
            self._rerun_withdrawn(ledger, sweep_dir, str(tracking), str(experiment))
        states = ledger.states()
        done = sum(s == FINISHED for s in states.values())
        log.info(
            f"Grid {fp[:12]} (generation {grid['generation']}, {len(points)} points, ledger "
            f"{mask_url(str(self.storage))}): {done} finished, {len(points) - done} to run; "
            f"run dirs in {sweep_dir}"
        )
        parent = self._parent(ledger, grid, sweep_dir, points, arguments)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.cfg, sweep_dir / "multirun.yaml")
        failed: list[str] = []
        try:
            self._loop(ledger, sweep_dir, failed)
        finally:
            self._close(ledger, parent, len(points), failed)
        if failed:
            print(
                f"mmlexp: error: {len(failed)} of {len(points)} grid points failed in this pass (the others ran; "
                "re-run the command to retry them):\n  " + "\n  ".join(failed),
                file=sys.stderr,
            )
            sys.exit(1)

    def _rerun_withdrawn(self, ledger: Ledger, sweep_dir: Path, tracking: str, experiment: str) -> None:
        """Finished points whose runs were all deleted from the store (MLflow's soft delete) are pending again; each
        one's run directory is moved aside, so that it trains afresh instead of resuming the finished checkpoint."""
        finished = [i for i, s in ledger.states().items() if s == FINISHED]
        try:
            again = withdrawn_points(tracking, experiment, ledger.grid[0], sweep_dir, finished) if finished else []
        except Exception as err:  # the store was checked before; a failing query leaves the grid as it is
            log.warning(f"Grid {ledger.grid[0][:12]}: could not ask the store for withdrawn runs ({err})")
            return
        again = [idx for idx in again if ledger.take_back(idx)]  # another worker may have taken one back first
        for idx in again:
            run_dir = sweep_dir / str(idx)
            if run_dir.exists():
                run_dir.rename(sweep_dir / f"{idx}.withdrawn-{time.strftime('%Y%m%d-%H%M%S')}")
        ledger.release(again)
        if again:
            log.info(f"Grid points {again}: their runs were deleted from the MLflow store; they train again")

    def _parent(self, ledger: Ledger, grid: dict, sweep_dir: Path, points: list[list[str]], arguments: list[str]):
        """The grid's one parent MLflow run: reopened when the ledger knows it; two workers that start together
        both create one, the ledger keeps the first and the other worker deletes its own."""
        swept = [a for a in arguments if "," in a or "(" in a] or [str(sweep_dir)]

        def open_(reuse: str | None):
            return open_parent(
                self.cfg,
                sweep_dir,
                name=f"grid {' '.join(swept)}"[:250],
                sweep_id=ledger.grid[0],
                kind="grid",
                params={"sweep.overrides": " ".join(arguments), "grid.points": len(points)},
                reuse=reuse,
                grid_generation=grid["generation"],
            )

        parent = open_(grid["parent_run_id"])
        if parent is None:
            return None
        parent.close_dead_runs(stale_after_s(self.cfg))  # tracking.stale_after_s, as a single run
        recorded = ledger.set_parent(parent.run_id)
        if recorded != parent.run_id:
            parent.stop_heartbeat()
            parent.client.delete_run(parent.run_id)
            parent = open_(recorded)
        return parent

    def _loop(self, ledger: Ledger, sweep_dir: Path, failed: list[str]) -> None:
        while True:
            batch = ledger.claim(self.batch_size)
            if not batch:
                running = [i for i, s in ledger.states().items() if s == RUNNING]
                if not running:
                    return
                time.sleep(self.poll_interval)  # other workers run the last points (or they die: taken over)
                continue
            overrides = [
                p.overrides
                + [
                    f"hydra.sweep.dir='{sweep_dir}'",
                    f"hydra.sweep.subdir={p.idx}",
                    f"+hydra.job.env_set.{POINT_ENV}={p.idx}",
                ]
                for p in batch
            ]
            for p in batch:
                if p.attempts > 1:
                    log.info(
                        f"Grid point {p.idx}, attempt {p.attempts} (interrupted or failed before; it continues "
                        f"from its checkpoint if it has one): {' '.join(p.overrides)}"
                    )
            stop = threading.Event()
            beat = threading.Thread(target=self._beat, args=(ledger, [p.idx for p in batch], stop), daemon=True)
            beat.start()
            told: set[int] = set()
            try:
                returns = self.job_launcher.launch(overrides, initial_job_idx=batch[0].idx)
                for p, ret in zip(batch, returns, strict=True):
                    if ret.status == JobStatus.COMPLETED:
                        ledger.finish(p.idx, FINISHED)
                    else:
                        err = ret._return_value  # (the return_value property re-raises it)
                        message = f"{type(err).__name__}: {err}".splitlines()[0][:1000]
                        ledger.finish(p.idx, FAILED, message)
                        failed.append(f"point {p.idx} ({' '.join(p.overrides)}): {message}")
                        log.error(f"Grid point {p.idx} failed ({message}); the grid carries on")
                    told.add(p.idx)
            finally:
                stop.set()
                beat.join()
                ledger.release([p.idx for p in batch if p.idx not in told])  # Ctrl-C: pending again

    def _beat(self, ledger: Ledger, idxs: list[int], stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_interval):
            with contextlib.suppress(Exception):
                ledger.beat(idxs)

    def _close(self, ledger: Ledger, parent, n_points: int, failed: list[str]) -> None:
        """The parent run ends with the grid: FINISHED when every point is, FAILED if some failed, KILLED on
        Ctrl-C; left RUNNING while other workers still run points."""
        if parent is None:
            return
        states = ledger.states()
        status = exit_status()
        if status == "FINISHED" and any(s == RUNNING for s in states.values()):
            parent.set_tags({"grid.note": "this worker is done; others still run points"})
            parent.stop_heartbeat()
            return
        finished = sum(s == FINISHED for s in states.values())
        with contextlib.suppress(Exception):
            parent.log_metrics(
                {"finished_points": finished, "failed_points": sum(s == FAILED for s in states.values())}, step=0
            )
            from mmlexp.sweep.parent import summarise

            summarise(parent, self.cfg)
        parent.finish("FAILED" if status == "FINISHED" and (failed or finished < n_points) else status)


def withdrawn_points(tracking_uri: str, experiment: str, sweep_id: str, sweep_dir: Path, finished: list[int]):
    """The ``finished`` points of the grid ``sweep_id`` (its generation in ``sweep_dir``) that have a deleted run in
    the store and no active one."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []

    def points(view) -> set[str]:
        runs = client.search_runs(
            [exp.experiment_id], f"tags.`sweep.id` = '{sweep_id}'", run_view_type=view, max_results=50000
        )
        here = [r.data.tags for r in runs if r.data.tags.get("sweep.dir") == str(sweep_dir)]
        return {t["grid.point"] for t in here if "grid.point" in t and t.get("sweep.role") != "parent"}

    deleted, active = points(ViewType.DELETED_ONLY), points(ViewType.ACTIVE_ONLY)
    return [i for i in finished if str(i) in deleted and str(i) not in active]

"""The one reader of the config: build data, encoder, loss and sampler, train, evaluate, track.

``train(cfg)`` is a plain function (the Hydra entrypoint and notebooks both call it) and returns
the selection metric of the best epoch, the objective of sweeps.  Its steps: ``prepare`` (data and split,
the parts, a checkpoint to resume), ``start_tracking``, ``fit_tracked`` (``train.fit``, then ``save_best``).
The sweep layer sits above: its job side reaches a run through ``mmlexp.hooks``.
"""

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import scipy.sparse as sp
import torch
from omegaconf import DictConfig, OmegaConf

from mmlexp import _numba, faults
from mmlexp.checkpoint import BEST_FILE, CHECKPOINT_FILE, find_resume, load_checkpoint, save_atomic
from mmlexp.config import OWN_TARGETS, ConfigError, allowed_targets, build, check_ks, validate
from mmlexp.data import DataError, InteractionData, load_dataset
from mmlexp.data.splits import holdout
from mmlexp.devices import cpu_tags, resolve_device
from mmlexp.evaluation import LongTail, evaluate_embeddings
from mmlexp.evaluation.per_user import save_run_per_user
from mmlexp.hooks import PRUNED_TAG, in_multirun, job_tags, trial_reporter
from mmlexp.memory import check_memory
from mmlexp.optim import choose_deferred_rows, make_optimizer
from mmlexp.tracking import BUFFER_FILE, DEFAULT_TIMEOUT_S, STALE_AFTER_S, Tracker, check_store, flatten, git_commit
from mmlexp.train import Diverged, FitResult, TrainSettings, fit

log = logging.getLogger("mmlexp")


def group_choices(cfg: DictConfig) -> dict[str, str]:
    """The option picked in each group (Hydra's runtime choices, else derived from the config)."""
    with contextlib.suppress(Exception):
        from hydra.core.hydra_config import HydraConfig

        return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items() if v is not None}
    # option, module and file share one name: mmlexp.losses.mml.MultiMarginLoss -> "mml"
    target = lambda node: str(node.get("_target_", "?")).split(".")[-2:][0]  # noqa: E731
    return {
        "dataset": cfg.dataset.name,
        "encoder": target(cfg.encoder),
        "loss": target(cfg.loss),
        "sampler": target(cfg.sampler),
    }


def run_directory(cfg: DictConfig) -> Path:
    with contextlib.suppress(Exception):
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    base = Path("outputs") / time.strftime("%Y-%m-%d/%H-%M-%S")  # outside Hydra (a notebook): a new directory
    for n in range(1000):
        path = base if n == 0 else base.with_name(f"{base.name}-{n}")
        with contextlib.suppress(FileExistsError):
            path.mkdir(parents=True, exist_ok=False)
            return path
    raise RuntimeError(f"cannot create a run directory next to {base}")


@contextlib.contextmanager
def sigterm_as_interrupt():
    """A ``kill`` (SIGTERM) ends the run like Ctrl-C, so the tracked run is marked KILLED. Not in a submitit job:
    SLURM preempts with SIGTERM then submitit's USR2, which checkpoints and requeues the job (hydra/launcher)."""
    if threading.current_thread() is not threading.main_thread() or os.environ.get("SUBMITIT_EXECUTOR"):
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupt_behind(err: BaseException) -> KeyboardInterrupt | SystemExit | None:
    """The interrupt that ``err`` wraps, if any: a ``KeyboardInterrupt`` (Ctrl-C, or a SIGTERM through
    ``sigterm_as_interrupt``) or the ``SystemExit`` of submitit's USR2 handler (it requeues a preempted job, then
    exits). A signal lands wherever Python is, and numba's dispatcher turns one raised inside it into a
    ``SystemError``."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt | SystemExit):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


@contextlib.contextmanager
def interrupts_unwrapped():
    """An interrupt a library wrapped (``interrupt_behind``) leaves as the ``KeyboardInterrupt`` or ``SystemExit``
    it is, wherever in the run it landed (data set-up too): a sweep then counts it as an interrupt, not as a failed
    point, and a preempted submitit job exits to be requeued."""
    try:
        yield
    except Exception as err:
        if (interrupt := interrupt_behind(err)) is None:
            raise
        raise type(interrupt)(*interrupt.args) from err


def load_data(cfg: DictConfig) -> InteractionData:
    if OmegaConf.is_missing(cfg.dataset, "path"):
        raise ConfigError(
            f"dataset.path is required for dataset={cfg.dataset.name}: "
            + (
                "a CSV, TSV, Parquet or RecBole .inter file"
                if cfg.dataset.name == "interactions"
                else "a directory with LightGCN-format train.txt and test.txt"
            )
        )
    return load_dataset(
        cfg.dataset.name,
        path=cfg.dataset.get("path"),
        download=cfg.dataset.get("download", True),
        options=OmegaConf.to_container(cfg.dataset, resolve=True),
    )


def train(cfg: DictConfig) -> float:
    """Train one model as configured, track it, and return the best value of ``trainer.monitor``."""
    with sigterm_as_interrupt(), interrupts_unwrapped():
        setup = prepare(cfg)
        tracker, reopened = start_tracking(setup)
        result = fit_tracked(setup, tracker, reopened)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in result.best_metrics.items())
        print(f"best epoch {result.best_epoch}: {shown}")
        print(f"logged to {tracker.where}; run dir {setup.out_dir}")
        return float(result.best_metrics[setup.settings.monitor])


@dataclass
class Parts:
    """The encoder, loss, sampler and optimizer of a run, and the generator its sampler draws from."""

    model: Any
    loss_fn: Any
    sampler: Any
    optimizer: Any
    generator: torch.Generator


@dataclass
class Setup:
    """Everything ``prepare`` builds from the config before the run is tracked (a bad value fails here, with no
    tracked run left behind)."""

    cfg: DictConfig
    device: torch.device
    data: InteractionData
    fit_train: sp.csr_matrix  # data.train, less the validation slice under eval.selection=valid
    valid: sp.csr_matrix | None
    parts: Parts
    settings: TrainSettings
    evaluate: Callable[[], dict[str, float]]
    out_dir: Path
    shapes: dict[str, list[int]]  # the model's tensor shapes (a checkpoint of others is refused)
    resolved: dict[str, Any]
    resume: dict[str, Any] | None
    users: torch.Tensor  # the rows trained on: one (user, item) pair per interaction of fit_train
    items: torch.Tensor


def prepare(cfg: DictConfig) -> Setup:
    """Check the config, seed, pick the device, load the data and its split, build the parts, find a checkpoint
    to resume from."""
    validate(cfg)
    if cfg.tracking.enabled:  # issue 31: an unusable store stops here, before anything is written
        check_store(cfg.tracking.uri, cfg.tracking.get("timeout", DEFAULT_TIMEOUT_S))
    if cfg.trainer.num_threads:
        _numba.start_pool()  # else its later start would undo the setting
        torch.set_num_threads(cfg.trainer.num_threads)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device, cfg.get("jobs_per_gpu", 1))  # a parallel sweep job: its own GPU
    data, fit_train, valid = load_split(cfg)
    check_ks(cfg, data.n_items, data.name)  # a k above the item count: refused before training
    check_memory(cfg, data.n_users, data.n_items, fit_train.nnz, device)  # issue 31: sizes that cannot fit
    parts = build_parts(cfg, data, fit_train, device)
    settings = TrainSettings(**{k: cfg.trainer[k] for k in TrainSettings.__dataclass_fields__})
    out_dir = run_directory(cfg)
    shapes = {k: list(v.shape) for k, v in parts.model.state_dict().items()}
    resolved: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    resume = find_resume(cfg.trainer.get("resume", "auto"), out_dir, data.fingerprint(), shapes, resolved)
    users, items = (torch.from_numpy(a).to(device) for a in replace(data, train=fit_train).train_pairs())
    evaluate = make_evaluate(cfg, parts.model, data, fit_train, valid)
    if valid is not None:
        settings.monitor = f"valid/{settings.monitor}"  # select on the slice; best/ holds the test metrics there
    return Setup(
        cfg, device, data, fit_train, valid, parts, settings, evaluate, out_dir, shapes, resolved, resume, users, items
    )


def load_split(cfg: DictConfig) -> tuple[InteractionData, sp.csr_matrix, sp.csr_matrix | None]:
    """The dataset, the matrix the model trains on, and the validation slice (None unless eval.selection=valid:
    then the model trains on train minus the slice, and the epoch is picked on the slice)."""
    data = load_data(cfg)
    if str(cfg.eval.get("selection", "paper")) != "valid":
        return data, data.train, None
    fit_train, valid = holdout(data.train, cfg.eval.valid_fraction, cfg.eval.valid_seed)
    if valid.nnz == 0:
        raise ConfigError(
            f"eval.valid_fraction={cfg.eval.valid_fraction!r}: holds out no interaction of "
            f"{data.name} (a user keeps round(fraction * n) of its n train items, at least one "
            "in train); use a larger fraction or eval.selection=paper"
        )
    return data, fit_train, valid


def build_parts(cfg: DictConfig, data: InteractionData, fit_train: sp.csr_matrix, device: torch.device) -> Parts:
    """Encoder, loss and sampler from their config groups (on the allow-list of targets), then the optimizer."""
    allowed = allowed_targets(cfg)
    model = build("encoder", cfg.encoder, allowed, n_users=data.n_users, n_items=data.n_items, train=fit_train).to(
        device
    )
    loss_fn = build("loss", cfg.loss, allowed).to(device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    sampler = build(
        "sampler", cfg.sampler, allowed, n_items=data.n_items, train=fit_train, generator=generator, device=device
    )
    defer, why = choose_deferred_rows(cfg.trainer.defer_rows, sampler, cfg.trainer.batch_size, data.n_items, device)
    if cfg.trainer.optimizer == "adam":
        log.info(why)
    optimizer = make_optimizer(model, cfg.trainer.lr, cfg.trainer.optimizer, cfg.trainer.l2, defer=defer)
    return Parts(model, loss_fn, sampler, optimizer, generator)


def make_evaluate(
    cfg: DictConfig, model: Any, data: InteractionData, fit_train: sp.csr_matrix, valid: sp.csr_matrix | None
) -> Callable[[], dict[str, float]]:
    """``evaluate()``: test metrics (all train items masked, long-tail groups when enabled), plus ``valid/``
    metrics on the held-out slice."""
    ks = list(cfg.eval.ks)
    longtail_cfg = cfg.eval.get("longtail") or {}
    longtail = (
        LongTail.from_train(data.train, longtail_cfg.get("groups", 5), longtail_cfg.get("split", "equal_interactions"))
        if longtail_cfg.get("enabled", False)
        else None
    )

    def evaluate() -> dict[str, float]:
        user_emb, item_emb = model.all_embeddings()
        metrics = evaluate_embeddings(
            user_emb, item_emb, data.train, data.test, ks=ks, chunk_size=cfg.eval.chunk_size, longtail=longtail
        )
        faults.hit("eval")  # fault injection (tests/faults): a no-op unless MMLEXP_FAULT is set
        if valid is not None:
            on_valid = evaluate_embeddings(user_emb, item_emb, fit_train, valid, ks=ks, chunk_size=cfg.eval.chunk_size)
            metrics |= {f"valid/{k}": v for k, v in on_valid.items()}
        return metrics

    return evaluate


def run_tags(setup: Setup, choices: dict[str, str]) -> dict[str, Any]:
    """The tracked run's tags: group choices, dataset fingerprint, device, commit, split; its sweep's in a sweep."""
    cfg, data, valid = setup.cfg, setup.data, setup.valid
    tags = {f"choice.{k}": v for k, v in choices.items()} | {
        "dataset": data.name,
        "device": str(setup.device),
        "git_commit": git_commit(),
        "mlflow.source.git.commit": git_commit(),
        "torch": torch.__version__,
        **cpu_tags(),
        **{f"dataset.{k}": v for k, v in data.fingerprint().items()},
        "selection": str(cfg.eval.get("selection", "paper")),
    }
    if valid is not None:
        tags |= {"valid.interactions": int(valid.nnz), "valid.users": int((valid.getnnz(axis=1) > 0).sum())}
    return tags | job_tags(cfg.tracking.uri)  # in a sweep: mlflow.parentRunId, sweep.id, sweep.job_num, ...


def start_tracking(setup: Setup) -> tuple[Tracker, bool]:
    """Start the tracked run, or reopen the one a resumed checkpoint belongs to: (tracker, reopened)."""
    cfg, resume = setup.cfg, setup.resume
    choices = group_choices(cfg)
    run_name = cfg.tracking.run_name or "-".join(
        [
            choices.get("encoder", "?"),
            choices.get("loss", "?"),
            setup.data.name,
            f"N{cfg.sampler.get('num_negatives', '-')}",
        ]
    )
    tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.artifact_location, cfg.tracking.enabled)
    tracker.buffer_file = setup.out_dir / BUFFER_FILE  # what the store could not take mid-run (issue 31)
    tags = run_tags(setup, choices)
    tracker.close_dead_runs(cfg.tracking.get("stale_after_s", STALE_AFTER_S))  # dead processes' RUNNING runs -> KILLED
    reopened = (
        resume is not None
        and resume.get("tracking_uri") == cfg.tracking.uri
        and tracker.reopen(str(resume.get("run_id")))
    )
    if not reopened:
        tracker.start(run_name, flatten(setup.resolved), tags | ({"resumed_from": resume["path"]} if resume else {}))
    if resume is not None:
        log.info(f"Resuming from {resume['path']} (epoch {resume['epoch']}, step {resume['step']})")
        tracker.set_tags({"resumed_at_epoch": resume["epoch"], "resumed_with_changes": ",".join(resume["changed"])})
    return tracker, bool(reopened)


def epoch_hooks(setup: Setup, tracker: Tracker) -> tuple[Callable[[int, dict[str, float]], None], Callable | None]:
    """``fit``'s callbacks: ``on_epoch_end`` (track, print, report to an Optuna trial) and the per-epoch
    checkpoint writer (None with ``trainer.checkpoint=false``)."""
    identity = {
        "dataset": setup.data.fingerprint(),
        "shapes": setup.shapes,
        "tracking_uri": setup.cfg.tracking.uri,
        "run_id": tracker.run_id,
        "config": OmegaConf.to_yaml(setup.resolved),
    }

    def save_checkpoint(state: dict) -> None:
        save_atomic(state | identity, setup.out_dir / CHECKPOINT_FILE)

    report = trial_reporter(setup.cfg)  # an Optuna trial: report epochs, maybe pruned

    def on_epoch_end(epoch: int, record: dict[str, float]) -> None:
        tracker.log_metrics(record, step=epoch)
        log.info(epoch_line(record, setup.settings.monitor))
        if report is not None:
            report(epoch, record)

    return on_epoch_end, save_checkpoint if setup.cfg.trainer.get("checkpoint", True) else None


def fit_tracked(setup: Setup, tracker: Tracker, reopened: bool) -> FitResult:
    """Run ``fit`` and save its best epoch; the tracked run ends FINISHED, FAILED or KILLED (Ctrl-C, SIGTERM,
    a pruned Optuna trial)."""
    on_epoch_end, checkpoint = epoch_hooks(setup, tracker)
    p = setup.parts
    status = "FAILED"
    try:
        with interrupts_unwrapped():  # a wrapped interrupt reaches the handler below as one
            if not reopened:
                tracker.log_text(OmegaConf.to_yaml(setup.resolved), "config.yaml")
                for name, text in setup.data.artifacts.items():  # dataset=interactions: id mappings, split record
                    tracker.log_text(text, name)
            result = fit(
                p.model,
                p.loss_fn,
                p.sampler,
                p.optimizer,
                setup.users,
                setup.items,
                setup.evaluate,
                setup.settings,
                p.generator,
                on_epoch_end=on_epoch_end,
                checkpoint=checkpoint,
                resume=setup.resume,
            )
            save_best(setup, result, tracker)
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):  # SystemExit: submitit requeues a preempted job (resumes here)
        status = "KILLED"
        raise
    except Diverged as err:
        tracker.set_tags({"failure": str(err)})
        raise
    except Exception as err:
        if type(err).__name__ == "TrialPruned":  # optuna.TrialPruned from the reporter (mmlexp.sweep.pruning)
            tracker.set_tags({PRUNED_TAG: getattr(err, "epoch", "?")})
            status = "KILLED"
        raise
    finally:
        tracker.finish(status)
    return result


def save_best(setup: Setup, result: FitResult, tracker: Tracker) -> None:
    """The best epoch's metrics (``best/...``), its weights (``best.pt`` with ``tracking.save_checkpoint``) and
    its per-user test metrics (``per_user.csv.gz``)."""
    cfg, out_dir = setup.cfg, setup.out_dir
    best = {f"best/{k}": v for k, v in result.best_metrics.items()}
    tracker.log_metrics(best | {"best_epoch": result.best_epoch, "steps": result.steps}, step=result.best_epoch)
    if cfg.tracking.save_checkpoint:
        path = out_dir / BEST_FILE
        save_atomic(
            {
                "state_dict": result.best_state,
                "config": OmegaConf.to_yaml(setup.resolved),
                "best_epoch": result.best_epoch,
                "metrics": result.best_metrics,
            },
            path,
        )
        tracker.log_artifact(path)
    ks = list(cfg.eval.ks)
    save_run_per_user(setup.parts.model, result, setup.data, ks, cfg.eval.chunk_size, out_dir, tracker)


def epoch_line(record: dict[str, float], monitor: str) -> str:
    """One console line per epoch: loss, the monitored metric, and where the time went."""
    parts = [f"epoch {record['epoch']}", f"loss {record['train_loss']:.4f}"]
    if monitor in record:
        parts.append(f"{monitor} {record[monitor]:.4f}")
    parts.append(f"train {record['epoch_time_s']:.1f} s ({record['interactions_per_s']:,.0f} int/s)")
    if "eval_time_s" in record:
        parts.append(f"eval {record['eval_time_s']:.2f} s")
    return "  ".join(parts)


__all__ = ["train", "build", "OWN_TARGETS", "load_checkpoint", "in_multirun", "ConfigError", "DataError", "Diverged"]

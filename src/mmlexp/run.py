"""The one reader of the config: build data, encoder, loss and sampler, train, evaluate, track.

``train(cfg)`` is a plain function (the Hydra entrypoint and notebooks both call it) and returns
the selection metric of the best epoch, the objective of sweeps.
"""

import contextlib
import logging
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mmlexp import deferred
from mmlexp.checkpoint import CHECKPOINT_FILE, find_resume, save_atomic
from mmlexp.config import ConfigError, validate
from mmlexp.data import DataError, InteractionData, load_dataset
from mmlexp.devices import resolve_device
from mmlexp.evaluation import LongTail, evaluate_embeddings
from mmlexp.evaluation.per_user import save_run_per_user
from mmlexp.splits import holdout
from mmlexp.tracking import Tracker, flatten, git_commit
from mmlexp.train import Diverged, TrainSettings, fit, make_optimizer

log = logging.getLogger("mmlexp")

OWN_TARGETS = ["mmlexp.*"]


def build(group: str, node: DictConfig, allowed: list[str], **kwargs: Any) -> Any:
    """``instantiate`` on the execution allow-list; constructor errors name the config key."""
    try:
        return instantiate(node, _execution_whitelist_=allowed, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, (ValueError, TypeError)):
            raise ConfigError(f"{group}.{err.__cause__}") from err
        raise ConfigError(
            f"{group}._target_={node.get('_target_')!r}: {err}\n"
            f"Allowed targets: {allowed} (extend with allowed_targets=['mypkg.*'])"
        ) from err
    except (ValueError, TypeError) as err:  # the constructor refused a value (Hydra re-raises it as is)
        raise ConfigError(f"{group}.{err}") from err


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


def in_multirun() -> bool:
    with contextlib.suppress(Exception):
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    return False


def sweep_job_tags(tracking_uri: str) -> dict[str, str]:
    """A multirun job's links to its sweep (``mmlexp.sweep.jobs``); a single run never imports the sweep layer."""
    if not in_multirun():
        return {}
    from mmlexp.sweep.jobs import job_tags

    return job_tags(tracking_uri)


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
    with sigterm_as_interrupt():
        return _train(cfg)


def _train(cfg: DictConfig) -> float:
    validate(cfg)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device, cfg.get("jobs_per_gpu", 1))  # a parallel sweep job: its own GPU
    allowed = OWN_TARGETS + list(cfg.allowed_targets)
    data = load_data(cfg)
    # eval.selection=valid: train on train minus a held-out slice, pick the epoch on that slice
    selection = str(cfg.eval.get("selection", "paper"))
    fit_train, valid = data.train, None
    if selection == "valid":
        fit_train, valid = holdout(data.train, cfg.eval.valid_fraction, cfg.eval.valid_seed)
        if valid.nnz == 0:
            raise ConfigError(
                f"eval.valid_fraction={cfg.eval.valid_fraction!r}: holds out no interaction of "
                f"{data.name} (a user keeps round(fraction * n) of its n train items, at least one "
                "in train); use a larger fraction or eval.selection=paper"
            )

    model = build("encoder", cfg.encoder, allowed, n_users=data.n_users, n_items=data.n_items, train=fit_train).to(
        device
    )
    loss_fn = build("loss", cfg.loss, allowed).to(device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    sampler = build(
        "sampler", cfg.sampler, allowed, n_items=data.n_items, train=fit_train, generator=generator, device=device
    )
    defer, why = deferred.choose(cfg.trainer.defer_rows, sampler, cfg.trainer.batch_size, data.n_items, device)
    if cfg.trainer.optimizer == "adam":
        log.info(why)
    optimizer = make_optimizer(model, cfg.trainer.lr, cfg.trainer.optimizer, cfg.trainer.l2, defer=defer)
    settings = TrainSettings(**{k: cfg.trainer[k] for k in TrainSettings.__dataclass_fields__})
    out_dir = run_directory(cfg)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    resolved: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    resume = find_resume(cfg.trainer.get("resume", "auto"), out_dir, data.fingerprint(), shapes, resolved)
    users, items = (torch.from_numpy(a).to(device) for a in replace(data, train=fit_train).train_pairs())
    ks = list(cfg.eval.ks)
    longtail_cfg = cfg.eval.get("longtail") or {}
    longtail = (
        LongTail.from_train(data.train, longtail_cfg.get("groups", 5), longtail_cfg.get("split", "equal_interactions"))
        if longtail_cfg.get("enabled", False)
        else None
    )
    if valid is not None:
        settings.monitor = f"valid/{settings.monitor}"  # select on the slice; best/ holds the test metrics there

    def evaluate() -> dict[str, float]:
        """Test metrics (all train items masked), plus ``valid/`` metrics on the held-out slice."""
        user_emb, item_emb = model.all_embeddings()
        metrics = evaluate_embeddings(
            user_emb, item_emb, data.train, data.test, ks=ks, chunk_size=cfg.eval.chunk_size, longtail=longtail
        )
        if valid is not None:
            on_valid = evaluate_embeddings(user_emb, item_emb, fit_train, valid, ks=ks, chunk_size=cfg.eval.chunk_size)
            metrics |= {f"valid/{k}": v for k, v in on_valid.items()}
        return metrics

    choices = group_choices(cfg)
    run_name = cfg.tracking.run_name or "-".join(
        [choices.get("encoder", "?"), choices.get("loss", "?"), data.name, f"N{cfg.sampler.get('num_negatives', '-')}"]
    )
    tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.artifact_location, cfg.tracking.enabled)
    tags = {f"choice.{k}": v for k, v in choices.items()} | {
        "dataset": data.name,
        "device": str(device),
        "git_commit": git_commit(),
        "mlflow.source.git.commit": git_commit(),
        "torch": torch.__version__,
        **{f"dataset.{k}": v for k, v in data.fingerprint().items()},
        "selection": selection,
    }
    if valid is not None:
        tags |= {"valid.interactions": int(valid.nnz), "valid.users": int((valid.getnnz(axis=1) > 0).sum())}
    tags |= sweep_job_tags(cfg.tracking.uri)  # in a sweep: mlflow.parentRunId, sweep.id, sweep.job_num, ...
    tracker.close_dead_runs()  # runs of this store left RUNNING by dead processes -> KILLED
    reopened = (
        resume is not None
        and resume.get("tracking_uri") == cfg.tracking.uri
        and tracker.reopen(str(resume.get("run_id")))
    )
    if not reopened:
        tracker.start(run_name, flatten(resolved), tags | ({"resumed_from": resume["path"]} if resume else {}))
    if resume is not None:
        log.info(f"Resuming from {resume['path']} (epoch {resume['epoch']}, step {resume['step']})")
        tracker.set_tags({"resumed_at_epoch": resume["epoch"], "resumed_with_changes": ",".join(resume["changed"])})
    identity = {
        "dataset": data.fingerprint(),
        "shapes": shapes,
        "tracking_uri": cfg.tracking.uri,
        "run_id": tracker.run_id,
        "config": OmegaConf.to_yaml(resolved),
    }

    def save_checkpoint(state: dict) -> None:
        save_atomic(state | identity, out_dir / CHECKPOINT_FILE)

    report = None
    if os.environ.get("MMLEXP_OPTUNA_TRIAL") is not None:  # an Optuna trial: report epochs, maybe pruned
        from mmlexp.sweep.pruning import trial_reporter

        report = trial_reporter(cfg)

    def on_epoch_end(epoch: int, record: dict[str, float]) -> None:
        tracker.log_metrics(record, step=epoch)
        log.info(epoch_line(record, settings.monitor))
        if report is not None:
            report(epoch, record)

    status = "FAILED"
    try:
        if not reopened:
            tracker.log_text(OmegaConf.to_yaml(resolved), "config.yaml")
            for name, text in data.artifacts.items():  # dataset=interactions: id mappings, split record
                tracker.log_text(text, name)
        result = fit(
            model,
            loss_fn,
            sampler,
            optimizer,
            users,
            items,
            evaluate,
            settings,
            generator,
            on_epoch_end=on_epoch_end,
            checkpoint=save_checkpoint if cfg.trainer.get("checkpoint", True) else None,
            resume=resume,
        )
        best = {f"best/{k}": v for k, v in result.best_metrics.items()}
        tracker.log_metrics(best | {"best_epoch": result.best_epoch, "steps": result.steps}, step=result.best_epoch)
        if cfg.tracking.save_checkpoint:
            path = out_dir / "best.pt"
            torch.save(
                {
                    "state_dict": result.best_state,
                    "config": OmegaConf.to_yaml(resolved),
                    "best_epoch": result.best_epoch,
                    "metrics": result.best_metrics,
                },
                path,
            )
            tracker.log_artifact(path)
        save_run_per_user(model, result, data, ks, cfg.eval.chunk_size, out_dir, tracker)  # per_user.csv.gz
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):  # SystemExit: submitit requeues a preempted job (resumes here)
        status = "KILLED"
        raise
    except Diverged as err:
        tracker.set_tags({"failure": str(err)})
        raise
    except Exception as err:
        if type(err).__name__ == "TrialPruned":  # optuna.TrialPruned from the reporter (mmlexp.sweep.pruning)
            tracker.set_tags({"optuna.pruned_at_epoch": getattr(err, "epoch", "?")})
            status = "KILLED"
        raise
    finally:
        tracker.finish(status)

    shown = "  ".join(f"{k} {v:.4f}" for k, v in result.best_metrics.items())
    print(f"best epoch {result.best_epoch}: {shown}")
    print(f"logged to {tracker.where}; run dir {out_dir}")
    return float(result.best_metrics[settings.monitor])


def epoch_line(record: dict[str, float], monitor: str) -> str:
    """One console line per epoch: loss, the monitored metric, and where the time went."""
    parts = [f"epoch {record['epoch']}", f"loss {record['train_loss']:.4f}"]
    if monitor in record:
        parts.append(f"{monitor} {record[monitor]:.4f}")
    parts.append(f"train {record['epoch_time_s']:.1f} s ({record['interactions_per_s']:,.0f} int/s)")
    if "eval_time_s" in record:
        parts.append(f"eval {record['eval_time_s']:.2f} s")
    return "  ".join(parts)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``best.pt`` written by ``train`` (tensors and plain values only: ``weights_only=True``)."""
    return torch.load(path, map_location="cpu", weights_only=True)


__all__ = ["train", "build", "load_checkpoint", "in_multirun", "ConfigError", "DataError", "Diverged"]

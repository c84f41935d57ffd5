"""The training loop: shuffle rows, sample negatives, score, loss, L2, clip, Adam; evaluate each n epochs.

No DataLoader: the (user, item) rows live in two tensors on the device, each epoch is a random
permutation sliced into batches (nanoGPT style).  The loss is read back (``.item()``) only every
``log_every`` steps, so the hot loop never waits on the device; there, and at the end of each epoch,
a non-finite loss (or non-finite embeddings before an evaluation) stops training with ``Diverged``.

``fit`` hands a ``checkpoint`` callback the whole training state after each evaluated epoch
(``training_state``); ``resume=`` that state continues training as if it had never stopped (the same
batches, negatives and updates: bit-identical on the CPU).
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from mmlexp import faults
from mmlexp.allocator import keep_freed_memory
from mmlexp.graphed_step import training_step
from mmlexp.optim import TableAdam, coalesced, rows_read


@dataclass
class TrainSettings:
    epochs: int = 100
    max_steps: int | None = None
    max_minutes: float | None = None
    batch_size: int = 256
    lr: float = 1e-4
    l2: float = 1e-8
    clip_grad_norm: float | None = 10.0
    eval_every: int = 1
    patience: int | None = None
    monitor: str = "recall@20"
    optimizer: str = "adam"
    precision: str = "fp32"
    progress: bool = True
    log_every: int = 100
    cuda_graph: str = "auto"  # auto | on | off: the step as one CUDA graph (mmlexp.graphed_step)


@dataclass
class FitResult:
    best_epoch: int
    best_metrics: dict[str, float]
    best_state: dict[str, torch.Tensor]
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    stopped_early: bool = False


class Diverged(RuntimeError):
    """Training produced a non-finite loss or non-finite embeddings."""

    def __init__(self, epoch: int, step: int, what: str):
        self.epoch, self.step, self.what = epoch, step, what
        super().__init__(f"diverged at epoch {epoch}, step {step} ({what})")


def embedding_tables(model: nn.Module) -> list[torch.Tensor]:
    """The model's embedding tables (the encoders' ``embedding_tables()``: L2 acts on them)."""
    tables: Callable[[], list[torch.Tensor]] = getattr(model, "embedding_tables")  # noqa: B009
    return tables()


def rng_state(generator: torch.Generator | None) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if generator is not None:
        state["generator"] = generator.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generator: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def start_gradients_(model: nn.Module, l2: float) -> None:
    """Set every gradient to that of the L2 term before the forward: ``grad = l2 * E`` on the FULL
    embedding tables (the gradient of (l2/2)*||E||^2, paper-reference §3), zero elsewhere.

    The buffers are reused from step to step (no allocation, no zero-fill pass of its own), and the
    backward adds the data gradient into them: a sparse gradient (MF's user rows) scatters into its
    few rows in place.  Together it equals autograd on ``loss + (l2/2)*||E||^2``.
    """
    tables = {id(t) for t in embedding_tables(model)} if l2 else set()
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if p.grad is None or p.grad.is_sparse:
            p.grad = torch.empty_like(p)
        if id(p) in tables:
            torch.mul(p.detach(), l2, out=p.grad)
        else:
            p.grad.zero_()


def clipped_step(optimizer: torch.optim.Optimizer, max_norm: float | None) -> None:
    """``clip_grad_norm_(max_norm)`` then ``optimizer.step()``.  A fused optimizer applies the clip
    factor itself (its ``grad_scale`` divides the gradients inside the update), saving a pass."""
    if not max_norm:
        optimizer.step()
        return
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    for p in params:  # lazy Adam's sparse gradients: the norm and the scaling act on the coalesced rows
        if p.grad.is_sparse:
            p.grad = coalesced(p.grad)
    grads = [p.grad.values() if p.grad.is_sparse else p.grad for p in params]
    coef = (max_norm / (torch.nn.utils.get_total_norm(grads, foreach=True) + 1e-6)).clamp_(max=1.0)
    if not optimizer.defaults.get("fused"):
        torch._foreach_mul_(grads, coef)
        optimizer.step()
        return
    fused: Any = optimizer  # torch's fused Adam reads an optional grad_scale attribute
    fused.grad_scale = coef.reciprocal_().float()  # the fused kernels take a float32 scale
    try:
        optimizer.step()
    finally:
        del fused.grad_scale


def l2_penalty(tables: list[torch.Tensor], l2: float) -> float:
    return 0.5 * l2 * sum(float(t.detach().pow(2).sum()) for t in tables)


def train_step(model, loss_fn, sampler, optimizer, users, items, settings: TrainSettings) -> torch.Tensor:
    """One optimiser step on a batch of (user, positive item) rows; returns the detached data loss.

    The gradient is that of ``loss + (l2/2) * ||E||^2`` on the full embedding tables, clipped to
    ``clip_grad_norm``, then Adam: ``TableAdam`` does L2, clip and update in one step (rows this step does
    not read may stay deferred, ``mmlexp.optim.deferred_rows``; ``fit`` materialises them at each epoch's end); another
    optimiser gets the L2 gradient written first (``start_gradients_``) and ``clipped_step``.
    ``settings.optimizer=sparse_adam`` takes its L2 in the optimiser (touched rows only);
    ``settings.precision=bf16`` scores under bfloat16 autocast."""
    table_adam = isinstance(optimizer, TableAdam)
    if table_adam or settings.optimizer == "sparse_adam":
        optimizer.zero_grad(set_to_none=True)
    else:
        start_gradients_(model, settings.l2)
    negatives = sampler.sample(users, items, model)
    if table_adam and optimizer.defer:  # the rows the forward reads up to date; the others may stay deferred
        optimizer.prepare(rows_read(model, sampler, users, items, negatives))
    with torch.autocast(users.device.type, dtype=torch.bfloat16, enabled=settings.precision == "bf16"):
        scores = model(users, items, negatives)
    if scores.dtype in (torch.float16, torch.bfloat16):  # a loss always sees fp32 (or the model's fp64) scores
        scores = scores.float()
    loss = loss_fn(scores, users)
    loss.backward()
    if table_adam:
        optimizer.step(l2=settings.l2, max_norm=settings.clip_grad_norm)
    else:
        clipped_step(optimizer, settings.clip_grad_norm)
    return loss.detach()


@dataclass
class _Progress:
    """What ``fit`` carries from epoch to epoch (and a checkpoint keeps): the best so far and the counters."""

    best: FitResult
    best_score: float = float("-inf")
    bad_evals: int = 0
    step: int = 0
    first_epoch: int = 1
    elapsed: float = 0.0


def _restored(resume: dict | None, model: nn.Module, optimizer, generator) -> _Progress:
    """A fresh start, or the state of ``resume`` (model, optimizer and RNG states loaded)."""
    if resume is None:
        return _Progress(FitResult(best_epoch=-1, best_metrics={}, best_state={}))
    model.load_state_dict(resume["model"])
    optimizer.load_state_dict(resume["optimizer"])
    set_rng_state(resume["rng"], generator)
    best = FitResult(
        best_epoch=resume["best_epoch"],
        best_metrics=dict(resume["best_metrics"]),
        best_state=resume["best_state"],
        history=list(resume["history"]),
    )
    best.stopped_early = bool(resume.get("stopped_early", False))
    return _Progress(
        best, resume["best_score"], resume["bad_evals"], resume["step"], resume["epoch"] + 1, resume["elapsed_s"]
    )


def fit(
    model: nn.Module,
    loss_fn: nn.Module,
    sampler,
    optimizer: torch.optim.Optimizer,
    users: torch.Tensor,
    items: torch.Tensor,
    evaluate: Callable[[], dict[str, float]],
    settings: TrainSettings,
    generator: torch.Generator | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    checkpoint: Callable[[dict], None] | None = None,
    resume: dict | None = None,
) -> FitResult:
    """Train for ``settings.epochs`` (or until ``max_steps`` / ``max_minutes``: the epoch then ends early and
    is evaluated), keep the best epoch by ``settings.monitor``.  Each record carries ``wall_time_s``, the
    seconds since the start of training (evaluation included): the time-to-accuracy curve.

    ``checkpoint(state)`` is called after each evaluated epoch with ``training_state``'s dict; ``resume=state``
    continues from such a state (model, optimizer and RNG states are loaded here).  ``settings.cuda_graph``: on
    CUDA the step is replayed as one CUDA graph where the options allow (``mmlexp.graphed_step``)."""
    run = _restored(resume, model, optimizer, generator)
    keep_freed_memory()  # large per-step temporaries reused, not page-faulted in again (mmlexp.allocator)
    fit_start = time.perf_counter() - run.elapsed
    deadline = fit_start + 60 * settings.max_minutes if settings.max_minutes else float("inf")
    if resume is not None and (
        run.best.stopped_early or run.step >= (settings.max_steps or float("inf")) or time.perf_counter() >= deadline
    ):
        run.best.steps = run.step  # the checkpoint is of the run's last epoch: nothing left to train
        return run.best
    eager = partial(train_step, model, loss_fn, sampler, optimizer, settings=settings)
    step_fn = training_step(eager, model, sampler, optimizer, settings)  # eager, or one CUDA graph per step
    for epoch in range(run.first_epoch, settings.epochs + 1):
        model.train()
        start = time.perf_counter()
        loss_sum, loss_rows, out_of_budget = _train_epoch(
            step_fn, users, items, epoch, run, settings, generator, deadline
        )
        if hasattr(optimizer, "materialize"):  # every deferred row up to date before anything reads the tables
            optimizer.materialize()
        record = _epoch_record(model, epoch, loss_sum, loss_rows, time.perf_counter() - start, run.step, settings)
        done = epoch == settings.epochs or out_of_budget
        evaluated = epoch % settings.eval_every == 0 or done
        if evaluated:
            record |= _evaluated(model, evaluate, epoch, run, settings)
            done = done or run.best.stopped_early
        record["wall_time_s"] = time.perf_counter() - fit_start  # training + evaluation so far
        run.best.history.append(record)
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
        if evaluated and checkpoint is not None:
            checkpoint(_checkpoint_state(model, optimizer, generator, run, epoch, fit_start))
        if done:
            break
    run.best.steps = run.step
    return run.best


def _train_epoch(step_fn, users, items, epoch: int, run: _Progress, settings: TrainSettings, generator, deadline):
    """One pass over the shuffled rows (or until the step / time budget): (loss sum, rows, out of budget)."""
    n_rows, batch = users.shape[0], settings.batch_size
    loss_sum, loss_rows = torch.zeros((), device=users.device), 0
    order = torch.randperm(n_rows, generator=generator, device=generator.device if generator else "cpu")
    order = order.to(users.device)
    bar = tqdm(total=n_rows, desc=f"epoch {epoch}", unit="int", unit_scale=True, disable=not settings.progress,
               leave=False, mininterval=0.5)  # fmt: skip
    out_of_budget = False
    for first in range(0, n_rows, batch):
        rows = order[first : first + batch]
        if rows.numel() == 1 and first > 0:
            break  # a trailing batch of one row is skipped (in-batch negatives need two rows)
        faults.hit("step")  # fault injection (tests/faults): a no-op unless MMLEXP_FAULT is set
        loss = step_fn(users[rows], items[rows])
        loss_sum += loss * rows.numel()
        loss_rows += rows.numel()
        run.step += 1
        if run.step % settings.log_every == 0:
            value = loss.item()
            if not math.isfinite(value):
                raise Diverged(epoch, run.step, f"loss {value}")
            bar.set_postfix(loss=f"{value:.4f}", refresh=False)
        bar.update(rows.numel())
        out_of_budget = (
            settings.max_steps is not None and run.step >= settings.max_steps
        ) or time.perf_counter() >= deadline
        if out_of_budget:
            break
    bar.close()
    return loss_sum, loss_rows, out_of_budget


def _epoch_record(model, epoch: int, loss_sum, loss_rows: int, seconds: float, step: int, settings) -> dict:
    """The epoch's training numbers (a non-finite mean loss is a ``Diverged``)."""
    if not math.isfinite(loss_sum.item()):
        raise Diverged(epoch, step, f"mean loss of the epoch {loss_sum.item()}")
    return {
        "epoch": epoch,
        "train_loss": loss_sum.item() / max(loss_rows, 1),
        "l2_penalty": l2_penalty(embedding_tables(model), settings.l2),
        "epoch_time_s": seconds,
        "interactions_per_s": loss_rows / seconds,
        "step": step,
    }


def _evaluated(model, evaluate, epoch: int, run: _Progress, settings: TrainSettings) -> dict[str, float]:
    """Evaluate (non-finite tables are a ``Diverged``), keep the best epoch, count toward early stopping."""
    model.eval()
    bad = [i for i, t in enumerate(embedding_tables(model)) if not bool(torch.isfinite(t).all())]
    if bad:
        raise Diverged(epoch, run.step, f"non-finite values in embedding table {bad[0]}")
    t0 = time.perf_counter()
    metrics = evaluate()
    out = metrics | {"eval_time_s": time.perf_counter() - t0}
    score = metrics[settings.monitor]
    if score > run.best_score:
        run.best_score, run.bad_evals = score, 0
        run.best.best_epoch, run.best.best_metrics = epoch, dict(metrics)
        run.best.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    else:
        run.bad_evals += 1
    if settings.patience is not None and run.bad_evals >= settings.patience:
        run.best.stopped_early = True
    return out


def _checkpoint_state(model, optimizer, generator, run: _Progress, epoch: int, fit_start: float) -> dict:
    return training_state(
        model,
        optimizer,
        generator,
        run.best,
        epoch=epoch,
        step=run.step,
        best_score=run.best_score,
        bad_evals=run.bad_evals,
        stopped_early=run.best.stopped_early,
        elapsed_s=time.perf_counter() - fit_start,
    )


def training_state(model, optimizer, generator, best: FitResult, **counters) -> dict:
    """Everything ``fit(resume=...)`` needs: model, optimizer and RNG states, the counters, the best epoch so far
    (its weights too) and the history of records."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(generator),
        "best_epoch": best.best_epoch,
        "best_metrics": best.best_metrics,
        "best_state": best.best_state,
        "history": best.history,
        **counters,
    }

"""The training loop: shuffle rows, sample negatives, score, loss, L2, clip, Adam; evaluate each n epochs.

No DataLoader: the (user, item) rows live in two tensors on the device, each epoch is a random
permutation sliced into batches (nanoGPT style).  The loss is read back (``.item()``) only every
``log_every`` steps, so the hot loop never waits on the device.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm


@dataclass
class TrainSettings:
    epochs: int = 100
    max_steps: int | None = None
    batch_size: int = 256
    lr: float = 1e-4
    l2: float = 1e-8
    clip_grad_norm: float | None = 10.0
    eval_every: int = 1
    patience: int | None = None
    monitor: str = "recall@20"
    progress: bool = True
    log_every: int = 100


@dataclass
class FitResult:
    best_epoch: int
    best_metrics: dict[str, float]
    best_state: dict[str, torch.Tensor]
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    stopped_early: bool = False


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Dense Adam with torch defaults (paper-reference §3), fused kernel where available."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr)


def add_l2_gradient_(tables: list[torch.Tensor], l2: float) -> None:
    """grad += l2 * E: the gradient of (l2/2)*||E||^2 on the FULL tables, added before clipping
    exactly as if the term were part of the loss (paper-reference §3)."""
    for table in tables:
        if table.grad is None:
            table.grad = table.detach() * l2
        else:
            table.grad.add_(table.detach(), alpha=l2)


def l2_penalty(tables: list[torch.Tensor], l2: float) -> float:
    return 0.5 * l2 * sum(float(t.detach().pow(2).sum()) for t in tables)


def train_step(model, loss_fn, sampler, optimizer, users, items, settings: TrainSettings) -> torch.Tensor:
    """One optimiser step on a batch of (user, positive item) rows; returns the detached data loss."""
    negatives = sampler.sample(users, items, model)
    scores = model(users, items, negatives)
    loss = loss_fn(scores, users)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if settings.l2:
        add_l2_gradient_(model.embedding_tables(), settings.l2)
    if settings.clip_grad_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip_grad_norm, foreach=True)
    optimizer.step()
    return loss.detach()


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
) -> FitResult:
    """Train for ``settings.epochs`` (or ``max_steps``), keep the best epoch by ``settings.monitor``."""
    n_rows, batch = users.shape[0], settings.batch_size
    best = FitResult(best_epoch=-1, best_metrics={}, best_state={})
    best_score, bad_evals, step = float("-inf"), 0, 0
    for epoch in range(1, settings.epochs + 1):
        model.train()
        start, loss_sum, loss_rows = time.perf_counter(), torch.zeros((), device=users.device), 0
        order = torch.randperm(n_rows, generator=generator, device=generator.device if generator else "cpu")
        order = order.to(users.device)
        bar = tqdm(total=n_rows, desc=f"epoch {epoch}", unit="int", unit_scale=True,
                   disable=not settings.progress, leave=False, mininterval=0.5)
        for first in range(0, n_rows, batch):
            rows = order[first:first + batch]
            if rows.numel() == 1 and first > 0:
                break  # a trailing batch of one row is skipped (in-batch negatives need two rows)
            loss = train_step(model, loss_fn, sampler, optimizer, users[rows], items[rows], settings)
            loss_sum += loss * rows.numel()
            loss_rows += rows.numel()
            step += 1
            if step % settings.log_every == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            bar.update(rows.numel())
            if settings.max_steps is not None and step >= settings.max_steps:
                break
        bar.close()
        seconds = time.perf_counter() - start
        record = {"epoch": epoch, "train_loss": loss_sum.item() / max(loss_rows, 1),
                  "l2_penalty": l2_penalty(model.embedding_tables(), settings.l2),
                  "epoch_time_s": seconds, "interactions_per_s": loss_rows / seconds, "step": step}
        done = epoch == settings.epochs or (settings.max_steps is not None and step >= settings.max_steps)
        if epoch % settings.eval_every == 0 or done:
            model.eval()
            t0 = time.perf_counter()
            metrics = evaluate()
            record |= metrics | {"eval_time_s": time.perf_counter() - t0}
            score = metrics[settings.monitor]
            if score > best_score:
                best_score, bad_evals = score, 0
                best.best_epoch, best.best_metrics = epoch, dict(metrics)
                best.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad_evals += 1
            if settings.patience is not None and bad_evals >= settings.patience:
                best.stopped_early = True
                done = True
        best.history.append(record)
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
        if done:
            break
    best.steps = step
    return best

"""The plain-PyTorch reference of one training step, shared by the CPU and CUDA trainer tests."""

import torch


class FixedSampler:
    """A sampler that returns the same negatives every step."""

    def __init__(self, negatives):
        self.negatives = negatives

    def sample(self, users, items, model=None):
        return self.negatives


def reference_step(model, loss_fn, optimizer, users, items, negatives, l2: float, clip: float | None) -> None:
    """Autograd of loss + (l2/2)||E||^2 on the full tables, clip_grad_norm_, then ``optimizer.step()``."""
    optimizer.zero_grad()
    total = loss_fn(model(users, items, negatives)) + l2 / 2 * sum(t.pow(2).sum() for t in model.embedding_tables())
    total.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()

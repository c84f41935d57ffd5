"""Row-sparse gradients as the optimisers read them (``TableAdam``, ``LazyAdam``):
which parameters the numba kernels (``mmlexp.optim.kernels``) take, a tensor as a 2-D numpy view of rows, and a sparse
row gradient coalesced (each row once, in order) without a needless sort."""

import math

import numpy as np
import torch

from mmlexp._numba import applies_to


def takes_sparse_grads(params) -> bool:
    """True where every parameter is on the numba path of ``TableAdam`` and ``LazyAdam``: a sparse row
    gradient is then read on its rows, never densified."""
    return all(on_kernel_path(p) for p in params)


def on_kernel_path(p: torch.Tensor) -> bool:
    return applies_to(p) and p.is_contiguous()


def adam_scalars(group: dict, t: float, dtype) -> tuple:
    """The per-step scalars of Adam step ``t`` that the numba Adam kernels take, in ``dtype`` (torch's formulas):
    ``(lr / (1 - b1^t), b1, 1 - b1, b2, 1 - b2, eps, sqrt(1 - b2^t))``."""
    (b1, b2), lr, eps = group["betas"], group["lr"], group["eps"]
    scalar = np.dtype(dtype).type
    return tuple(scalar(x) for x in (lr / (1 - b1**t), b1, 1 - b1, b2, 1 - b2, eps, math.sqrt(1 - b2**t)))


def adam_defaults(lr: float, betas: tuple[float, float], eps: float, **extra) -> dict:
    """An Adam optimizer's defaults, checked as ``torch.optim.Adam`` checks them: lr > 0, betas in [0, 1),
    eps >= 0."""
    if not lr > 0:
        raise ValueError(f"lr={lr}: must be > 0")
    if not all(0.0 <= b < 1.0 for b in betas) or len(betas) != 2:
        raise ValueError(f"betas={tuple(betas)}: must be two numbers in [0, 1)")
    if not eps >= 0:
        raise ValueError(f"eps={eps}: must be >= 0")
    return dict(lr=lr, betas=betas, eps=eps, **extra)


def moment_rows(state: dict) -> tuple[np.ndarray, np.ndarray]:
    """Adam's moments ``exp_avg``, ``exp_avg_sq`` of a parameter's state as row views (``as_rows``)."""
    return as_rows(state["exp_avg"]), as_rows(state["exp_avg_sq"])


def as_rows(t: torch.Tensor) -> np.ndarray:
    """A contiguous tensor as a 2-D numpy view (rows x last dim; 1-D and 0-D as one row)."""
    return t.detach().reshape(-1, t.shape[-1] if t.dim() else 1).numpy()


def coalesced(grad: torch.Tensor) -> torch.Tensor:
    """A sparse row gradient with each row once, in order.  Autograd drops the coalesced flag of a gradient
    that is coalesced already (``encoders.cosine.cosine_gather_scores``): strictly increasing rows are marked so without
    the sort of ``coalesce()``; anything else is coalesced."""
    if grad.is_coalesced():
        return grad
    rows = grad._indices()[0]
    if grad.sparse_dim() == 1 and (rows.numel() < 2 or bool((rows[1:] > rows[:-1]).all())):
        return torch.sparse_coo_tensor(
            grad._indices(), grad._values(), grad.shape, is_coalesced=True, check_invariants=False
        )
    return grad.coalesce()


def distinct_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, values) of a sparse row gradient, each row once, in order."""
    grad = coalesced(grad)
    return grad.indices()[0], grad.values()

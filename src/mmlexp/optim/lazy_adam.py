"""``LazyAdam``, the ``trainer.optimizer=sparse_adam`` variant (faster, NOT the paper's semantics).

Dense Adam (the default, paper-reference §3) moves every row of every table every step: the L2
gradient and the moments are non-zero everywhere.  Lazy Adam (TensorFlow's LazyAdam, torch's
``SparseAdam``) updates only the rows a batch touched, with the usual formulas on those rows:

    m_r <- b1 m_r + (1 - b1) g_r,   v_r <- b2 v_r + (1 - b2) g_r^2,
    p_r <- p_r - lr * (m_r / (1 - b1^t)) / (sqrt(v_r / (1 - b2^t)) + eps)

with t the step count of the parameter; untouched rows keep their value and moments.  L2 acts on
the touched rows only (``weight_decay``: g_r += wd * p_r, as BSL and SSM regularise batch rows).
Touched rows are a sparse gradient's indices, or the non-zero rows of a dense 2-D gradient (a row
whose gradient is exactly zero, e.g. a negative below every margin, counts as untouched there);
parameters that are not 2-D get plain dense Adam.
"""

import torch
from torch.autograd.graph import increment_version

from mmlexp._numba import set_threads
from mmlexp.optim.kernels import lazy_adam_rows
from mmlexp.optim.sparse_rows import adam_defaults, adam_scalars, as_rows, distinct_rows, moment_rows, on_kernel_path


class LazyAdam(torch.optim.Optimizer):
    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, adam_defaults(lr, betas, eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            (b1, b2), lr, eps, wd = group["betas"], group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                t = state["step"]
                rows, grad = touched_rows(p.grad)
                if rows is not None and on_kernel_path(p):  # numba: the touched rows updated in place
                    set_threads(torch.get_num_threads())
                    scalar = as_rows(p).dtype.type
                    lazy_adam_rows(
                        as_rows(p),
                        *moment_rows(state),
                        rows.numpy(),
                        grad.contiguous().numpy(),
                        scalar(wd),
                        *adam_scalars(group, t, scalar),
                    )
                    increment_version(p)
                    continue
                if rows is None:  # dense update of the whole parameter
                    m, v = state["exp_avg"], state["exp_avg_sq"]
                    grad = grad + wd * p if wd else grad
                    m.lerp_(grad, 1 - b1)
                    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                    p.addcdiv_(m, (v / (1 - b2**t)).sqrt_().add_(eps), value=-lr / (1 - b1**t))
                    continue
                param, m, v = p[rows], state["exp_avg"][rows], state["exp_avg_sq"][rows]
                if wd:
                    grad = grad + wd * param
                m.lerp_(grad, 1 - b1)
                v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                param.addcdiv_(m, (v / (1 - b2**t)).sqrt_().add_(eps), value=-lr / (1 - b1**t))
                p.index_copy_(0, rows, param)
                state["exp_avg"].index_copy_(0, rows, m)
                state["exp_avg_sq"].index_copy_(0, rows, v)


def touched_rows(grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(rows, their gradient) of a sparse or dense 2-D gradient; (None, grad) for other shapes."""
    if grad.is_sparse:
        return distinct_rows(grad)
    if grad.dim() != 2:
        return None, grad
    rows = grad.ne(0).any(dim=1).nonzero().squeeze(1)
    return rows, grad.index_select(0, rows)

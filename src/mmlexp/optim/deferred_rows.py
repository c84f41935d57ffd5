"""Deferred rows of ``TableAdam``: the dense Adam of the paper at the cost of the rows a batch reads.

A row r that no batch touched at step s still moves (paper-reference §3: L2 on the full tables, dense
Adam): its gradient is only the L2 term times the clip factor, so with the step's scalars

    a_s = l2 * coef_s,   step_s = lr_s / (1 - b1^s),   bc_s = sqrt(1 - b2^s)
    g = a_s p_r,   m_r <- b1 m_r + (1 - b1) g,   v_r <- b2 v_r + (1 - b2) g^2,
    p_r <- p_r - step_s * m_r / (sqrt(v_r) / bc_s + eps)                                   (*)

depends on the row's own (p, m, v) and on scalars only.  ``DeferredTable`` keeps those scalars per
step (``history``) and, per row, the step it is current at (``done``); ``kernels.replay_rows`` applies
the pending steps (*) to a row when it is next needed: before a batch reads it (``TableAdam.prepare``),
or for every row (``TableAdam.materialize``: evaluation, ``state_dict``, end of epoch).  It runs the
same ``kernels.adam_row`` as the dense path on an untouched row, in the same order: bit-identical.

The clip factor ``coef_s = min(1, max_norm / (||l2 E + G|| + 1e-6))`` needs ||E||, deferred rows
included.  Adam moves an element by at most ``step_s * bc_s * K`` per step, with
``K = (1 - b1) / sqrt((1 - b2) (1 - b1^2 / b2))`` bounding |m| / sqrt(v) (Cauchy-Schwarz on the two
exponential sums, b1^2 < b2), so ``| ||E_s|| - sqrt(S) | <= sqrt(n d) * sum of those bounds`` since the
last full materialisation, S the squared norm of the stored rows.  The dense path rounds ``coef_s`` to
the rows' dtype; where both ends of that interval give the same rounded ``coef_s`` (always when the clip
is idle, and almost always when it acts, l2^2 ||E||^2 being tiny next to the data gradient), it is the
dense path's value and the step defers; otherwise ``TableAdam`` materialises every row and takes the
dense step (the fallback, counted in ``TableAdam.fallback_steps``).

Where deferral cannot apply, ``rows_read`` returns None and ``TableAdam`` takes its dense path:
encoders without ``rows_read`` (LightGCN and NGCF propagate over every row each step, SVD++ and
SimpleX read each user's history), samplers that score the model (``hard``: its pool is scored
before the batch's rows are known), parameters off the numba path (CUDA, fp16/bf16 tables), and
models with parameters other than their embedding tables.
"""

import numpy as np
import torch

from mmlexp._numba import serial_jit
from mmlexp.optim.kernels import replay_rows, table_sq_norm
from mmlexp.samplers.base import SCORES_MODEL


@serial_jit
def pending_rows(items, done, upto):  # pragma: no cover - compiled
    """The distinct rows of ``items`` with steps pending (``done[r] < upto``), in order of appearance."""
    flat = items.ravel()
    out = np.empty(flat.shape[0], dtype=np.int64)
    count = 0
    for i in flat:
        if 0 <= done[i] < upto:
            done[i] = -done[i] - 1  # marked: listed once
            out[count] = i
            count += 1
    for k in range(count):
        done[out[k]] = -done[out[k]] - 1
    return out[:count]


def adam_ratio_bound(b1: float, b2: float) -> float:
    """K >= |m| / sqrt(v) for Adam moments from zero (any gradients), 1% over for rounding; inf if b1^2 >= b2."""
    if b1 * b1 >= b2:
        return float("inf")
    return 1.01 * (1 - b1) / np.sqrt((1 - b2) * (1 - b1 * b1 / b2))


class DeferredTable:
    """The pending steps of one table: ``hist[:steps]`` the scalars of each step since the last full
    materialisation, ``done[r]`` how many of them row r has had, ``sq`` an upper bound-friendly running
    sum ||stored rows||^2 and ``drift`` the bound on how far any row has moved since (see the module)."""

    def __init__(self, p: torch.Tensor):
        self.p = p
        self.done = np.zeros(p.shape[0], dtype=np.int64)
        self.hist = np.empty((64, 8), dtype=p.detach().numpy().dtype)
        self.steps = 0
        self.sq = float(table_sq_norm(p.detach().numpy()))
        self.drift = 0.0
        self.version = p._version

    @property
    def pending(self) -> bool:
        return self.steps > 0

    def check_unchanged(self) -> None:
        if self.version != self.p._version and self.pending:
            raise RuntimeError(
                "a table changed outside TableAdam while it had deferred rows: call "
                "optimizer.materialize() before writing to the parameters"
            )
        if self.version != self.p._version:  # nothing pending: start again from the new values
            self.sq, self.version = float(table_sq_norm(self.p.detach().numpy())), self.p._version

    def sq_range(self) -> tuple[float, float]:
        """Bounds of ||E||^2 now (every row at the current step): ``(sqrt(S) -+ sqrt(n d) drift)^2``, 3% wider
        than that for the rounding of S and of the dense path's own sum (fp32 lanes)."""
        n, d = self.p.shape
        root, move = np.sqrt(max(self.sq, 0.0)), np.sqrt(n * d) * self.drift
        return 0.97 * max(root - move, 0.0) ** 2, 1.03 * (root + move) ** 2

    def push(self, scalars: np.ndarray, move_bound: float) -> None:
        """Record one step's scalars (``hist`` columns) and the bound on one element's move that step."""
        if self.steps == self.hist.shape[0]:
            self.hist = np.concatenate([self.hist, np.empty_like(self.hist)])
        self.hist[self.steps] = scalars
        self.steps += 1
        self.drift += move_bound

    def replay(self, p, m, v, rows: np.ndarray | None = None) -> None:
        """Bring ``rows`` (indices, repeats allowed; None: every row) to the current step."""
        if not self.steps:
            return
        if rows is None:
            rows = np.arange(self.p.shape[0], dtype=np.int64)
        else:
            rows = pending_rows(rows, self.done, self.steps)
        if rows.size:
            self.sq += replay_rows(p, m, v, rows, self.done, self.steps, self.hist)

    def reset(self, p) -> None:
        """Every row is current: the history starts again (exact ||E||^2, no drift)."""
        self.done[:] = 0
        self.steps, self.drift = 0, 0.0
        self.sq = float(table_sq_norm(p))


def rows_read(model, sampler, users: torch.Tensor, items: torch.Tensor, negatives: torch.Tensor):
    """{table: indices of the rows this step's forward reads}, or None where deferral cannot apply: the
    model declares no ``rows_read``, or the sampler may read the model (``scores_model``, True unless the
    sampler says otherwise: ``mmlexp.samplers.base``)."""
    if getattr(sampler, "scores_model", SCORES_MODEL) or not hasattr(model, "rows_read"):
        return None
    return model.rows_read(users, items, negatives)

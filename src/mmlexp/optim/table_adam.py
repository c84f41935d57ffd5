"""``TableAdam``, the default optimiser: the paper's dense Adam (paper-reference §3) with L2 and the clip
norm folded into one update,

    g = coef * (l2 * E + G),   coef = min(1, max_norm / (||l2 * E + G|| + 1e-6)),   E <- Adam(g)

(Adam with bias correction, Kingma & Ba 2015, torch's formulas: ``kernels.adam_row``); the rows a step does
not read may be deferred and replayed exactly (``mmlexp.optim.deferred_rows``).
"""

import math
from typing import NamedTuple

import numpy as np
import torch
from torch.autograd.graph import increment_version
from torch.optim.adam import adam as functional_adam

from mmlexp._numba import set_threads
from mmlexp.optim import deferred_rows, kernels
from mmlexp.optim.sparse_rows import adam_defaults, adam_scalars, as_rows, distinct_rows, moment_rows, on_kernel_path

_LOADED = object()  # a kept ||E||^2 from load_state_dict: the checkpoint's rows, whatever p._version says


class TableAdam(torch.optim.Optimizer):
    """Dense Adam on ``loss + (l2/2) * sum ||E||^2`` with the whole gradient clipped to ``max_norm``
    (paper-reference §3): the same update as ``clip_grad_norm_(max_norm)`` then ``torch.optim.Adam`` on
    autograd of that sum, with torch's formulas, but the L2 gradient ``l2 * E`` is never written out:

        G     = the data gradient (dense, sparse rows, or None: zero)
        g     = coef * (l2 * E + G),   coef = min(1, max_norm / (||l2 * E + G|| + 1e-6))
        m, v, E  <- Adam(g)            (every row of every table moves, every step)

    ``step(l2=..., max_norm=...)``: ``l2`` acts on the groups with ``decay=True`` (``make_optimizer`` puts the
    embedding tables there, other parameters in a ``decay=False`` group).  On the CPU (fp32/fp64, numba) it
    is two passes over each table (``kernels.grad_sq_norm``, ``kernels.adam_rows``) with the gradient
    formed in registers, and a sparse gradient (a batch's rows) is read only on its rows; elsewhere the
    gradient is materialised and torch's fused Adam runs with the clip as its ``grad_scale``.

    Deferred rows (``mmlexp.optim.deferred_rows``, ``defer=True``, numba path only): ``prepare(reads)`` before a step's
    forward brings the rows it reads up to date; the step then updates the rows with a gradient and records
    the step's scalars for the others, replayed when next read.  ``materialize()`` brings every row up to
    date (``state_dict()`` does it first); a ``step`` without ``prepare`` is dense.  Same results as dense.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        defer: bool = False,
    ):
        super().__init__(params, adam_defaults(lr, betas, eps, decay=True))
        self.defer = bool(defer)  # the entrypoint chooses (trainer.defer_rows, choose_deferred_rows)
        self._param_sq: dict[torch.Tensor, tuple[object, float]] = {}  # p -> (p._version, ||p||^2) after our update
        self._deferred: dict[torch.Tensor, deferred_rows.DeferredTable] = {}
        self._reads: dict | None = None
        # steps taken deferred (of which with the clip acting) / dense because the clip factor was undecided
        self.deferred_steps = self.clipped_steps = self.fallback_steps = 0

    def _state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state.update(
                step=torch.zeros((), dtype=torch.float32, device=p.device),
                exp_avg=torch.zeros_like(p),
                exp_avg_sq=torch.zeros_like(p),
            )
        return state

    def _rows(self, p: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        state = self._state(p)
        return as_rows(p), *moment_rows(state)

    def prepare(self, reads: dict[torch.Tensor, torch.Tensor] | None) -> None:
        """Before a step's forward: ``reads`` maps each table to the rows the step reads
        (``deferred_rows.rows_read``); those rows are brought up to date and the step may defer the others.
        None, or parameters the deferred path does not cover: everything is materialised, the step is dense."""
        self._reads = None
        params = [p for group in self.param_groups for p in group["params"]]
        if (
            not self.defer
            or reads is None
            or not all(
                group["decay"] and p.dim() == 2 and on_kernel_path(p) and any(p is q for q in reads)
                for group in self.param_groups
                for p in group["params"]
            )
            or len(reads) != len(params)
        ):
            self.materialize()
            return
        set_threads(torch.get_num_threads())
        for p, index in reads.items():
            table = self._deferred.get(p)
            if table is None:
                table = self._deferred[p] = deferred_rows.DeferredTable(p)
            table.check_unchanged()
            if table.pending:
                table.replay(*self._rows(p), index.detach().to(torch.int64).contiguous().numpy())
                increment_version(p)
                table.version = p._version
        self._reads = reads

    def materialize(self) -> None:
        """Bring every deferred row up to date (for evaluation, saving, or any read from outside)."""
        for p, table in self._deferred.items():
            if table.pending:
                table.check_unchanged()
                param, m, v = self._rows(p)
                table.replay(param, m, v)
                table.reset(param)
                increment_version(p)
                table.version = p._version
            if self._param_sq.get(p, (None,))[0] != p._version:  # ||E||^2 summed as adam_rows sums it
                if table.version != p._version:
                    table.check_unchanged()
                self._param_sq[p] = (p._version, float(kernels.table_sq_norm(as_rows(p))))

    def state_dict(self) -> dict:
        """torch's, every row materialised first, plus the kept ||E||^2 (``param_sq``, by parameter index)
        so that a resumed run takes the same clip factor as an uninterrupted one."""
        self.materialize()
        state = super().state_dict()
        index = {id(p): i for i, p in enumerate(p for group in self.param_groups for p in group["params"])}
        state["param_sq"] = {
            index[id(p)]: sq
            for p, (version, sq) in self._param_sq.items()
            if version is _LOADED or version == p._version
        }
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's; the kept ||E||^2 is used at the next step whatever ``p._version`` says (the model may be
        loaded before or after: either way its tables are the checkpoint's).  Nothing stays deferred."""
        state_dict = dict(state_dict)
        kept = state_dict.pop("param_sq", {})
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        for p in params:  # torch keeps a loaded ``step`` where it was read (a checkpoint: the CPU); ours is p's
            if "step" in self.state.get(p, {}):
                self.state[p]["step"] = self.state[p]["step"].to(p.device, torch.float32)
        self._deferred, self._reads, self._param_sq = (
            {},
            None,
            {params[int(i)]: (_LOADED, float(sq)) for i, sq in kept.items()},
        )

    @torch.no_grad()
    def step(self, closure=None, l2: float = 0.0, max_norm: float | None = None):
        loss = closure() if closure is not None else None
        work = []
        for group in self.param_groups:
            decay = float(l2) if group["decay"] else 0.0
            for p in group["params"]:
                if p.grad is None and not decay:
                    continue
                work.append((group, p, decay, self._state(p)))
        reads, self._reads = self._reads, None
        if reads is not None and self._deferred_step(work, reads, max_norm):
            return loss
        self.materialize()
        if not work:
            return loss
        if all(on_kernel_path(p) for _, p, _, _ in work):
            self._kernel_step(work, max_norm)
        else:
            self._torch_step(work, max_norm)
        return loss

    def _kernel_step(self, work, max_norm):
        set_threads(torch.get_num_threads())
        parts = [_kernel_operands(p, decay) for _, p, decay, _ in work]
        coef = 1.0
        if max_norm:
            total = math.sqrt(sum(self._grad_sq_norm(p, ops) for (_, p, _, _), ops in zip(work, parts, strict=True)))
            coef = min(1.0, max_norm / (total + 1e-6))
        for (group, p, _, state), ops in zip(work, parts, strict=True):
            t = float(state["step"].add_(1))
            sq = kernels.adam_rows(
                ops.param,
                *moment_rows(state),
                ops.rows,
                ops.vals,
                ops.l2,
                ops.param.dtype.type(coef),
                *adam_scalars(group, t, ops.param.dtype),
                ops.dense,
            )
            increment_version(p)
            self._param_sq[p] = (p._version, sq)

    def _deferred_step(self, work, reads, max_norm) -> bool:
        """The step on the rows with a gradient, the others deferred (``mmlexp.optim.deferred_rows``); False (nothing
        done) where the bounds on ||E|| of the deferred rows leave the clip factor undecided."""
        dense = [p.grad is not None and not p.grad.is_sparse for _, p, _, _ in work]
        parts = [_row_operands(p, decay, reads[p]) for _, p, decay, _ in work]
        coef = 1.0
        if max_norm:
            bounded = self._clip_coef(work, parts, dense, max_norm)
            if bounded is None:
                self.fallback_steps += 1
                return False
            coef = bounded
        for (group, p, _, state), ops in zip(work, parts, strict=True):
            (b1, b2), lr = group["betas"], group["lr"]
            t = float(state["step"].add_(1))
            scalar = ops.param.dtype.type
            hist = np.array(
                [ops.l2 * scalar(coef), *adam_scalars(group, t, ops.param.dtype)], dtype=ops.param.dtype
            )  # the columns of kernels.replay_rows
            table = self._deferred[p]
            if ops.rows.size:
                table.sq += kernels.adam_touched(
                    ops.param,
                    *moment_rows(state),
                    ops.rows,
                    ops.vals,
                    ops.l2,
                    scalar(coef),
                    *hist[1:],
                )
            table.push(hist, (lr / (1 - b1**t)) * math.sqrt(1 - b2**t) * deferred_rows.adam_ratio_bound(b1, b2))
            table.done[ops.rows] = table.steps
            increment_version(p)
            table.version = p._version
        self.deferred_steps += 1
        self.clipped_steps += coef < 1.0
        return True

    def _clip_coef(self, work, parts, dense, max_norm) -> float | None:
        """The dense path's ``coef`` (``_kernel_step``: the same sums, in its order, rounded to each table's dtype)
        evaluated at both ends of the range of ||E||^2 (``DeferredTable.sq_range``; a dense gradient's
        norm is summed in fp32 lanes there: 1% either way); None where the two ends round differently."""
        touched = [
            kernels.touched_grad_sq(ops.param, ops.rows, ops.vals, ops.l2) if ops.rows.size else 0.0 for ops in parts
        ]
        ends = []
        for side in (0, 1):  # 0: the smallest ||E||, the largest coef
            total = []
            for (_, p, _, _), ops, grad_sq, is_dense in zip(work, parts, touched, dense, strict=True):
                part = 0.0
                if ops.l2:
                    part += float(ops.l2) ** 2 * self._deferred[p].sq_range()[side]
                if ops.rows.size:
                    part += grad_sq
                total.append(part * (0.99, 1.01)[side] if is_dense else part)
            ends.append(min(1.0, max_norm / (math.sqrt(sum(total)) + 1e-6)))
        same = all(ops.param.dtype.type(ends[0]) == ops.param.dtype.type(ends[1]) for ops in parts)
        return ends[1] if same else None

    def _grad_sq_norm(self, p: torch.Tensor, ops: "_Operands") -> float:
        """||l2 * p + G||^2.  Dense G: one pass.  Sparse or no G: l2^2 ||p||^2 (kept from the last update while
        ``p._version`` says p is unchanged, else one pass) plus a pass over G's rows only."""
        if ops.dense:
            return kernels.grad_sq_norm(ops.param, ops.vals, ops.l2)
        total = 0.0
        if ops.l2:
            version, kept = self._param_sq.get(p, (None, 0.0))
            sq = kept
            if version is not _LOADED and version != p._version:
                sq = float(torch.linalg.vector_norm(p.detach(), dtype=torch.float64) ** 2)
            total += float(ops.l2) ** 2 * sq
        if ops.rows.size:
            total += kernels.touched_grad_sq(ops.param, ops.rows, ops.vals, ops.l2)
        return total

    @staticmethod
    def _torch_step(work, max_norm):
        grads = []
        for _, p, decay, _ in work:  # the gradients are this step's own (zero_grad(set_to_none)): added to in place
            grad = torch.zeros_like(p) if p.grad is None else p.grad.to_dense() if p.grad.is_sparse else p.grad
            grads.append(grad.add_(p, alpha=decay) if decay else grad)
        scale = None
        if max_norm:
            total = torch.nn.utils.get_total_norm(grads, foreach=True)
            scale = ((total + 1e-6) / max_norm).clamp_(min=1.0).float()  # 1 / coef: the fused kernel divides
        by_group: dict[int, tuple[dict, list]] = {}
        for (group, p, _, state), grad in zip(work, grads, strict=True):
            by_group.setdefault(id(group), (group, []))[1].append((p, grad, state))
        for group, items in by_group.values():
            (b1, b2), lr, eps = group["betas"], group["lr"], group["eps"]
            params = [p for p, _, _ in items]
            fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64) for p in params)
            if not fused and scale is not None:
                torch._foreach_div_([g for _, g, _ in items], scale)
            functional_adam(
                params,
                [g for _, g, _ in items],
                [s["exp_avg"] for _, _, s in items],
                [s["exp_avg_sq"] for _, _, s in items],
                [],
                [s["step"] for _, _, s in items],
                fused=fused or None,
                foreach=None if fused else False,
                grad_scale=scale.to(params[0].device) if fused and scale is not None else None,
                amsgrad=False,
                beta1=b1,
                beta2=b2,
                lr=lr,
                weight_decay=0.0,
                eps=eps,
                maximize=False,
            )


_NO_ROWS = np.empty(0, dtype=np.int64)


class _Operands(NamedTuple):
    """A parameter and its gradient G as ``kernels`` read them: ``dense`` (vals = G's rows), or sparse
    (row ``rows[k]`` has ``vals[k]``, rows sorted and distinct), G None being sparse and empty."""

    param: np.ndarray
    rows: np.ndarray
    vals: np.ndarray
    l2: np.floating
    dense: bool


def _kernel_operands(p: torch.Tensor, decay: float) -> _Operands:
    param = as_rows(p)
    l2, grad = param.dtype.type(decay), p.grad
    if grad is None:
        return _Operands(param, _NO_ROWS, np.zeros((1, param.shape[1]), param.dtype), l2, False)
    if grad.is_sparse and grad.sparse_dim() != 1:  # element-sparse: not rows, read it dense
        grad = grad.to_dense()
    if not grad.is_sparse:
        return _Operands(param, _NO_ROWS, as_rows(grad.contiguous()), l2, True)
    rows, values = distinct_rows(grad)
    return _Operands(param, rows.numpy(), values.reshape(rows.numel(), -1).contiguous().numpy(), l2, False)


def _row_operands(p: torch.Tensor, decay: float, read: torch.Tensor) -> _Operands:
    """``_kernel_operands`` always in row form: a dense gradient is read on the rows the step read (it is
    zero elsewhere), sorted and distinct."""
    ops = _kernel_operands(p, decay)
    if not ops.dense:
        return ops
    rows = torch.unique(read.detach().reshape(-1)).to(torch.int64).numpy()
    return ops._replace(rows=rows, vals=np.ascontiguousarray(ops.vals[rows]), dense=False)

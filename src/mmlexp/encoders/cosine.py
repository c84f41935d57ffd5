"""Cosine scores of gathered item rows, ``s[b, c] = <u[b], r> / max(||r||, eps)`` with ``r = table[items[b, c]]``,
as one autograd op with its own backward (``cosine_gather_scores``; RecZoo SimpleX's cosine towers).

On the CPU (numba, ``mmlexp._numba``) the forward reads each gathered row once (``cosine_scores``) and the
backward builds the gradient of the touched rows only (``entries_by_row``, ``cosine_rows_grad``,
``gathered_rows_dot``); elsewhere a gather, ``bmm`` and ``scatter_rows_``.  Checked against plain autograd
in tests/test_ops.py.
"""

import numpy as np
import scipy.sparse
import torch
import torch.nn.functional as F

from mmlexp._numba import AHEAD, BLOCKS, applies_to, jit, nb, prefetch_row, serial_jit, set_threads

try:  # scipy's compiled kernel of ``Y += A @ X`` for a CSC matrix A, accumulating into Y in place
    from scipy.sparse._sparsetools import csc_matvecs as _csc_matvecs
except ImportError:  # pragma: no cover - a scipy without it: the public (allocating) product below
    _csc_matvecs = None


@jit
def cosine_scores(user_vecs, table, items, eps, scores, inv_norm):  # pragma: no cover - compiled
    """scores[b, c] = <u[b], r> / max(||r||, eps) with r = table[items[b, c]]; inv_norm[b, c] = 1 / max(||r||, eps).
    One read of each gathered row (no [B, C, d] copy)."""
    batch, cols = items.shape
    d = table.shape[1]
    flat = items.ravel()
    for b in nb.prange(batch):
        for c in range(cols):
            if b * cols + c + AHEAD < flat.shape[0]:
                prefetch_row(table, flat[b * cols + c + AHEAD])
            i = items[b, c]
            dot = table[i, 0] * user_vecs[b, 0]  # sums in the rows' dtype
            sq = table[i, 0] * table[i, 0]
            for j in range(1, d):
                x = table[i, j]
                dot += x * user_vecs[b, j]
                sq += x * x
            inv = 1 / max(np.sqrt(sq), eps)
            inv_norm[b, c] = inv
            scores[b, c] = dot * inv


@jit
def gathered_rows_dot(g, table, items, out):  # pragma: no cover - compiled
    """out[b] = sum over c of g[b, c] * table[items[b, c]] (the user-side gradient of gathered rows)."""
    batch, cols = items.shape
    d = table.shape[1]
    flat = items.ravel()
    for b in nb.prange(batch):
        for j in range(d):
            out[b, j] = 0.0
        for c in range(cols):
            if b * cols + c + AHEAD < flat.shape[0]:
                prefetch_row(table, flat[b * cols + c + AHEAD])
            i = items[b, c]
            w = g[b, c]
            for j in range(d):
                out[b, j] += w * table[i, j]


@serial_jit
def entries_by_row(items, n_rows):  # pragma: no cover - compiled
    """The entries of ``items`` grouped by the table row they read (a counting sort, stable):
    ``(rows, starts, order)`` with ``rows`` the sorted distinct rows and ``order[starts[k]:starts[k + 1]]`` the
    flat indices ``b * C + c`` of the entries that read ``rows[k]``, in increasing order."""
    flat = items.ravel()
    count = np.zeros(n_rows, dtype=np.int64)
    for i in flat:
        count[i] += 1
    n = 0
    for r in range(n_rows):
        if count[r] > 0:
            n += 1
    rows = np.empty(n, dtype=np.int64)
    starts = np.empty(n + 1, dtype=np.int64)
    k = total = 0
    for r in range(n_rows):
        if count[r] > 0:
            rows[k], starts[k] = r, total
            total += count[r]
            count[r] = starts[k]  # from here on: the next free position of row r in ``order``
            k += 1
    starts[n] = total
    order = np.empty(flat.shape[0], dtype=np.int64)
    for e in range(flat.shape[0]):
        order[count[flat[e]]] = e
        count[flat[e]] += 1
    return rows, starts, order


@jit
def cosine_rows_grad(table, g, row_coef, user_vecs, rows, starts, order):  # pragma: no cover - compiled
    """The table gradient of ``cosine_scores`` on its touched rows only, as ``vals[k]`` for row ``rows[k]``:

        vals[k] = table[r] * sum_{(b,c): items[b,c] = r} row_coef[b, c]  +  sum_{(b,c): items[b,c] = r} g[b, c] * u[b]

    with g = upstream * inv_norm and row_coef = -g * score * inv_norm, the entries of each row from
    ``entries_by_row`` (summed in their (b, c) order).  Each row is summed in registers and written once;
    blocks of rows run in parallel.
    """
    n, d = rows.shape[0], table.shape[1]
    cols = g.shape[1]
    g_flat, coef_flat = g.ravel(), row_coef.ravel()
    vals = np.empty((n, d), dtype=table.dtype)
    per = (n + BLOCKS - 1) // BLOCKS
    for blk in nb.prange(BLOCKS):
        acc = np.empty(d, dtype=table.dtype)
        scale = np.zeros(1, dtype=table.dtype)  # a scalar in the rows' dtype
        for k in range(blk * per, min(n, (blk + 1) * per)):
            acc[:] = 0
            scale[0] = 0
            for t in range(starts[k], starts[k + 1]):
                e = order[t]
                scale[0] += coef_flat[e]
                w, b = g_flat[e], e // cols
                for j in range(d):
                    acc[j] += w * user_vecs[b, j]
            r = rows[k]
            for j in range(d):
                vals[k, j] = acc[j] + scale[0] * table[r, j]
    return vals


def scatter_rows_(out: torch.Tensor, items: torch.Tensor, weights: torch.Tensor, vecs: torch.Tensor) -> torch.Tensor:
    """``out[r] += sum over (b, c) with items[b, c] = r of weights[b, c] * vecs[b]``, in place.

    The gradient of gathered rows that all share their batch row's vector, without building the
    ``[B, C, d]`` products: on the CPU, ``items`` read as a sparse ``[n_rows, B]`` CSC matrix (its
    rows are the columns, already in order) times ``vecs``, in scipy's compiled kernel; elsewhere
    one ``index_add_``.
    """
    batch, cols = items.shape
    dim = vecs.shape[1]
    if out.device.type == "cpu" and out.dtype in (torch.float32, torch.float64) and out.is_contiguous():
        indptr = np.arange(0, batch * cols + 1, cols, dtype=np.int64)
        values = weights.detach().reshape(-1).to(out.dtype).numpy()
        x = vecs.detach().to(out.dtype).contiguous().numpy()
        flat = items.reshape(-1).to(torch.int64).contiguous().numpy()
        if _csc_matvecs is not None:
            _csc_matvecs(out.shape[0], batch, dim, indptr, flat, values, x.ravel(), out.numpy().ravel())
        else:
            csc = scipy.sparse.csc_matrix((values, flat, indptr), shape=(out.shape[0], batch))
            out += torch.from_numpy(np.ascontiguousarray(csc @ x))
        return out
    return out.index_add_(0, items.reshape(-1), (weights.unsqueeze(-1) * vecs.unsqueeze(1)).view(-1, dim).to(out.dtype))


class _CosineGatherScores(torch.autograd.Function):
    """s[b, c] = <u[b], r[b, c]> / max(||r[b, c]||, eps) with r[b, c] = table[items[b, c]].

    With g = grad * inv_norm the row gradient is d L / d r = g * u - (g * s * inv_norm) * r, and as every
    r[b, c] is the table row it came from, the table gradient is ``table[i] * sum of -(g * s * inv_norm)``
    over the entries of row i (a scalar scatter) plus ``sum of g * u[b]`` over them (no ``[B, C, d]`` buffer).

    CPU (numba): one pass reads each gathered row once for its dot product and its norm; the
    backward builds the gradient of the touched rows only.  Elsewhere (CUDA, bf16 autocast, no numba): a
    gather, norms from one pass over the table, ``bmm``, and ``scatter_rows_`` for the row sums.
    """

    @staticmethod
    def forward(ctx, user_vecs: torch.Tensor, table: torch.Tensor, items: torch.Tensor, eps: float, sparse_grad: bool):
        batch, cols = items.shape
        ctx.sparse_grad, ctx.kernel = sparse_grad, _on_kernel_path(user_vecs, table)
        if ctx.kernel:  # CPU: one numba pass, the rows are read once and never copied
            set_threads(torch.get_num_threads())
            items = items.to(torch.int64).contiguous()
            scores = torch.empty(batch, cols, dtype=table.dtype)
            inv_norm = torch.empty(batch, cols, dtype=table.dtype)
            cosine_scores(
                user_vecs.detach().contiguous().numpy(),
                table.detach().numpy(),
                items.numpy(),
                eps,
                scores.numpy(),
                inv_norm.numpy(),
            )
            ctx.save_for_backward(user_vecs, table, items, inv_norm, scores)
            return scores
        flat = items.reshape(-1)
        device = user_vecs.device.type
        # Under autocast (trainer.precision=bf16) the gathered rows and their dot products are bf16;
        # norms, scores and every gradient stay fp32.
        low = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        source = table.detach() if low is None else table.detach().to(low)
        rows = F.embedding(flat, source).view(batch, cols, -1)
        inv_norm = table.detach().norm(dim=1).clamp_min_(eps).reciprocal_()[flat].view(batch, cols)
        with torch.autocast(device, enabled=False):
            dots = torch.bmm(rows, user_vecs.to(rows.dtype).unsqueeze(-1)).squeeze(-1)
        scores = dots.to(table.dtype).mul_(inv_norm)
        ctx.save_for_backward(user_vecs, table, items, rows, inv_norm, scores)
        return scores

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.kernel:
            return _kernel_backward(ctx, grad)
        user_vecs, table, items, rows, inv_norm, scores = ctx.saved_tensors
        g = grad * inv_norm  # [B, C]
        grad_user = None
        if ctx.needs_input_grad[0]:
            grad_user = torch.bmm(g.to(rows.dtype).unsqueeze(1), rows).squeeze(1).to(user_vecs.dtype)
        grad_table = None
        if ctx.needs_input_grad[1]:
            row_scale = torch.zeros(table.shape[0], dtype=g.dtype, device=g.device)
            row_scale.index_add_(0, items.reshape(-1), (-g * scores * inv_norm).reshape(-1))
            grad_table = scatter_rows_(table.detach() * row_scale.unsqueeze(1), items, g, user_vecs)
            if ctx.sparse_grad:
                grad_table = grad_table.to_sparse(1)  # row-sparse, as the kernel path returns
        return grad_user, grad_table, None, None, None


def _on_kernel_path(user_vecs: torch.Tensor, table: torch.Tensor) -> bool:
    return (
        applies_to(user_vecs, table)
        and user_vecs.dtype == table.dtype
        and table.is_contiguous()
        and not torch.is_autocast_enabled("cpu")
    )


def _kernel_backward(ctx, grad: torch.Tensor):
    """The backward above in numba: the user gradient sum_c g[b, c] r[b, c], and the table gradient on the
    touched rows only (``cosine_rows_grad``): sparse (coalesced) or written into a zero table."""
    user_vecs, table, items, inv_norm, scores = ctx.saved_tensors
    g = grad.contiguous() * inv_norm
    grad_user = grad_table = None
    weights = table.detach().numpy()
    if ctx.needs_input_grad[0]:
        grad_user = torch.empty_like(user_vecs, memory_format=torch.contiguous_format)
        gathered_rows_dot(g.numpy(), weights, items.numpy(), grad_user.numpy())
    if ctx.needs_input_grad[1]:
        row_coef = -(g * scores * inv_norm)
        rows, starts, order = entries_by_row(items.numpy(), table.shape[0])
        vals = torch.from_numpy(
            cosine_rows_grad(
                weights, g.numpy(), row_coef.numpy(), user_vecs.detach().contiguous().numpy(), rows, starts, order
            )
        )
        rows = torch.from_numpy(rows)
        if ctx.sparse_grad:
            grad_table = torch.sparse_coo_tensor(
                rows.unsqueeze(0), vals, table.shape, is_coalesced=True, check_invariants=False
            )
        else:
            grad_table = torch.zeros_like(table).index_copy_(0, rows, vals)
    return grad_user, grad_table, None, None, None


def cosine_gather_scores(
    user_vecs: torch.Tensor, table: torch.Tensor, items: torch.Tensor, eps: float = 1e-12, sparse_grad: bool = False
) -> torch.Tensor:
    """Scores ``[B, C]`` of ``user_vecs[B, d]`` against the L2-normalised rows ``table[items]``.

    ``items`` is ``[B, C]`` (a list per row) or ``[1, C]`` (one list shared by all rows: the C rows
    are gathered and normalised once and scored with one matrix product).  ``sparse_grad``: the table's
    gradient comes back as a sparse (coalesced) tensor of the touched rows, as ``nn.Embedding(sparse=True)``
    (for an optimiser that reads it without densifying: ``mmlexp.optim.TableAdam`` on the CPU).
    """
    if items.shape[0] == 1 and user_vecs.shape[0] != 1:
        rows = table.index_select(0, items[0])
        return user_vecs @ (rows / rows.norm(dim=-1, keepdim=True).clamp_min(eps)).T
    return _CosineGatherScores.apply(user_vecs, table, items, eps, sparse_grad)

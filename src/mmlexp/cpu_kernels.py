"""Numba kernels of the CPU hot path (one pass each, parallel over rows or row blocks).

Each is the loop form of a formula given in its caller and is checked against that caller's PyTorch
path in the tests:

  cosine_scores, gathered_rows_dot, touched_rows, cosine_rows_grad   ``mmlexp.ops.cosine_gather_scores``
  grad_sq_norm, touched_grad_sq, adam_rows                          ``mmlexp.optim.TableAdam`` (the default)
  lazy_adam_rows                                                    ``mmlexp.lazy_adam.LazyAdam`` (sparse_adam)
  hinge_family_loss                                                 ``mmlexp.losses._hinge`` (MML, CCL)

``AVAILABLE`` is False where numba is missing, and ``applies_to`` says whether given tensors can be
handed over; otherwise callers take their PyTorch path.
"""

import numpy as np
import torch

try:
    import numba as nb
    from llvmlite import ir
    from numba.extending import intrinsic

    AVAILABLE = True
except ImportError:  # pragma: no cover - numba is a dependency; the PyTorch paths stay correct without it
    nb, AVAILABLE = None, False  # type: ignore[assignment]

# Reassociation and fused multiply-add, but NaN and inf keep their meaning (no "nnan"/"ninf").
_FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}
_BLOCKS = 64  # row blocks per call: enough for any core count, few enough to amortise the dispatch


def _jit(fn):
    return nb.njit(parallel=True, fastmath=_FAST, cache=True, nogil=True)(fn) if AVAILABLE else fn


if AVAILABLE:

    @intrinsic
    def prefetch_row(typingctx, array, row):
        """Hint the cache to fetch ``array[row]`` (``llvm.prefetch``; no effect on results).  The gathers below
        read rows in a random order that no hardware prefetcher predicts: asking a few rows ahead halves
        their time when the table is not in cache."""

        def codegen(context, builder, signature, args):
            ary = context.make_array(signature.args[0])(context, builder, args[0])
            byte = ir.IntType(8).as_pointer()
            row = context.cast(builder, args[1], signature.args[1], nb.types.intp)
            offset = builder.mul(row, builder.extract_value(ary.strides, 0))
            address = builder.inttoptr(builder.add(builder.ptrtoint(ary.data, ir.IntType(64)), offset), byte)
            i32 = ir.IntType(32)
            fn = builder.module.declare_intrinsic(
                "llvm.prefetch", fnty=ir.FunctionType(ir.VoidType(), [byte, i32, i32, i32])
            )
            builder.call(
                fn, [address, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)]
            )  # read, keep, data
            return context.get_dummy_value()

        return nb.types.void(array, row), codegen


_AHEAD = 8  # rows prefetched ahead in the random gathers


def applies_to(*tensors) -> bool:
    """Whether the kernels can take these tensors: numba is there and each is a plain CPU fp32/fp64 tensor
    (not a ``torch.func`` transform's wrapper, which has no memory of its own to hand to numba)."""
    return AVAILABLE and all(
        t.device.type == "cpu"
        and t.dtype in (torch.float32, torch.float64)
        and not torch._C._functorch.is_functorch_wrapped_tensor(t)
        for t in tensors
    )


def set_threads(n: int) -> None:
    """Use ``n`` threads (capped at numba's pool), to follow ``torch.get_num_threads()``."""
    if AVAILABLE:
        nb.set_num_threads(max(1, min(int(n), nb.config.NUMBA_NUM_THREADS)))  # type: ignore[attr-defined]


@_jit
def grad_sq_norm(p, grad, l2):  # pragma: no cover - compiled
    """||l2 * p + grad||^2 for a dense gradient."""
    n, d = p.shape
    step = (n + _BLOCKS - 1) // _BLOCKS
    acc = np.zeros(_BLOCKS)
    for blk in nb.prange(_BLOCKS):
        lanes = np.zeros(d, p.dtype)  # per-column sums in the rows' dtype: vectorised; added up in float64
        for r in range(blk * step, min(n, (blk + 1) * step)):
            for j in range(d):
                g = l2 * p[r, j] + grad[r, j]
                lanes[j] += g * g
        acc[blk] = lanes.astype(np.float64).sum()
    return acc.sum()


@_jit
def touched_grad_sq(p, rows, vals, l2):  # pragma: no cover - compiled
    """sum over k of ||l2 * p[rows[k]] + vals[k]||^2 - ||l2 * p[rows[k]]||^2: with l2^2 ||p||^2 (known from the
    last update) it is the squared norm of the gradient l2 * p + G of a sparse G, reading its rows only."""
    n, d = vals.shape
    step = (n + _BLOCKS - 1) // _BLOCKS
    acc = np.zeros(_BLOCKS)
    two_l2 = l2 + l2
    for blk in nb.prange(_BLOCKS):
        lanes = np.zeros(d, p.dtype)
        for k in range(blk * step, min(n, (blk + 1) * step)):
            r = rows[k]
            for j in range(d):
                lanes[j] += (two_l2 * p[r, j] + vals[k, j]) * vals[k, j]
        acc[blk] = lanes.astype(np.float64).sum()
    return acc.sum()


@_jit
def adam_rows(p, m, v, rows, vals, l2, coef, step_size, b1, c1, b2, c2, eps, bc2_sqrt, dense):  # pragma: no cover
    """Dense Adam on every row of ``p`` (torch's formulas) with gradient g = coef * (l2 * p + G):

        m <- b1 m + c1 g,  v <- b2 v + c2 g^2,  p <- p - step_size * m / (sqrt(v) / bc2_sqrt + eps)

    G[r] = vals[r] (``dense``), or vals[k] for r = rows[k] (rows sorted, distinct) and 0 elsewhere;
    c1 = 1 - b1, c2 = 1 - b2, ``step_size = lr / (1 - b1^t)``, ``bc2_sqrt = sqrt(1 - b2^t)``; every scalar
    in the dtype of ``p`` (no float64 arithmetic on fp32 rows).  Returns ||p||^2 after the update (the next
    step's clip norm needs it; the rows are in registers here).
    """
    n, d = p.shape
    step = (n + _BLOCKS - 1) // _BLOCKS
    a = l2 * coef
    acc = np.zeros(_BLOCKS)
    for blk in nb.prange(_BLOCKS):
        lanes = np.zeros(d, p.dtype)
        g = np.empty(d, p.dtype)
        first = blk * step
        k = 0 if dense else np.searchsorted(rows, first)  # the next sparse row at or after ``first``
        for r in range(first, min(n, (blk + 1) * step)):
            if dense:
                for j in range(d):
                    g[j] = a * p[r, j] + coef * vals[r, j]
            elif k < rows.shape[0] and rows[k] == r:
                for j in range(d):
                    g[j] = a * p[r, j] + coef * vals[k, j]
                k += 1
            else:
                for j in range(d):
                    g[j] = a * p[r, j]
            for j in range(d):
                mj = b1 * m[r, j] + c1 * g[j]
                vj = b2 * v[r, j] + c2 * g[j] * g[j]
                m[r, j] = mj
                v[r, j] = vj
                x = p[r, j] - step_size * mj / (np.sqrt(vj) / bc2_sqrt + eps)
                p[r, j] = x
                lanes[j] += x * x
        acc[blk] = lanes.astype(np.float64).sum()
    return acc.sum()


@_jit
def cosine_scores(user_vecs, table, items, eps, scores, inv_norm):  # pragma: no cover - compiled
    """scores[b, c] = <u[b], r> / max(||r||, eps) with r = table[items[b, c]]; inv_norm[b, c] = 1 / max(||r||, eps).
    One read of each gathered row (no [B, C, d] copy)."""
    batch, cols = items.shape
    d = table.shape[1]
    flat = items.ravel()
    for b in nb.prange(batch):
        for c in range(cols):
            if b * cols + c + _AHEAD < flat.shape[0]:
                prefetch_row(table, flat[b * cols + c + _AHEAD])
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


@_jit
def gathered_rows_dot(g, table, items, out):  # pragma: no cover - compiled
    """out[b] = sum over c of g[b, c] * table[items[b, c]] (the user-side gradient of gathered rows)."""
    batch, cols = items.shape
    d = table.shape[1]
    flat = items.ravel()
    for b in nb.prange(batch):
        for j in range(d):
            out[b, j] = 0.0
        for c in range(cols):
            if b * cols + c + _AHEAD < flat.shape[0]:
                prefetch_row(table, flat[b * cols + c + _AHEAD])
            i = items[b, c]
            w = g[b, c]
            for j in range(d):
                out[b, j] += w * table[i, j]


@nb.njit(cache=True) if AVAILABLE else (lambda f: f)
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


@_jit
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
    per = (n + _BLOCKS - 1) // _BLOCKS
    for blk in nb.prange(_BLOCKS):
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


@nb.njit(cache=True, fastmath=_FAST, nogil=True) if AVAILABLE else (lambda f: f)
def hinge_family_loss(scores, margins, weights, pos_weight, neg_weight, grad):  # pragma: no cover - compiled
    """The MML/CCL loss and its gradient in one pass over ``scores`` [B, 1+N] (column 0 the positive):

        L = (1/B) sum_b [ pos_weight * max(0, 1 - s_b0) + neg_weight * (1/N) sum_c sum_k w_k max(0, s_bc - m_k) ]

    ``grad`` receives dL/ds (relu's convention: slope 0 at a kink).  A NaN score makes L NaN."""
    batch, cols = scores.shape
    n_neg = cols - 1
    total = 0.0
    for b in range(batch):
        s0 = scores[b, 0]
        row = 0.0
        grad[b, 0] = 0.0
        if s0 < 1:
            row += pos_weight * (1 - s0)
            grad[b, 0] = -pos_weight / batch
        elif s0 != s0:
            row += s0
        penalty = 0.0
        for c in range(1, cols):
            s = scores[b, c]
            slope = 0.0
            for k in range(margins.shape[0]):
                if s > margins[k]:
                    penalty += weights[k] * (s - margins[k])
                    slope += weights[k]
            if s != s:
                penalty += s
            grad[b, c] = neg_weight * slope / (n_neg * batch)
        total += row + neg_weight * penalty / n_neg
    return total / batch


@_jit
def lazy_adam_rows(p, m, v, rows, vals, wd, step_size, b1, c1, b2, c2, eps, bc2_sqrt):  # pragma: no cover
    """Lazy Adam on the rows ``rows`` only (distinct), gradient g = vals[k] + wd * p[r] there; the update
    as ``adam_rows``; every other row, its moments included, is left as it is."""
    d = p.shape[1]
    for k in nb.prange(rows.shape[0]):
        r = rows[k]
        for j in range(d):
            g = vals[k, j] + wd * p[r, j]
            mj = b1 * m[r, j] + c1 * g
            vj = b2 * v[r, j] + c2 * g * g
            m[r, j] = mj
            v[r, j] = vj
            p[r, j] -= step_size * mj / (np.sqrt(vj) / bc2_sqrt + eps)

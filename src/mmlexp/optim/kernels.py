"""The numba Adam row update and the passes around it (CPU, fp32/fp64 tables, ``mmlexp._numba``).

``adam_row`` is THE update, Adam with bias correction (Kingma & Ba 2015, torch's formulas), on one row r
with its gradient g written out:

    m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2,
    p <- p - step_size * m / (sqrt(v) / bc2_sqrt + eps),   step_size = lr / (1 - b1^t),  bc2_sqrt = sqrt(1 - b2^t)

inlined (numba IR) into each caller, so that every path rounds alike (fastmath rounds a loop as its shape
says, same shape, same bits):

  adam_rows      every row of a table, g = coef * (l2 * p + G)         (``TableAdam``, the dense path)
  adam_touched   the rows a step read only, the same g                 (``TableAdam``, deferred rows)
  replay_rows    a row's pending steps, g = l2 * coef_s * p            (``optim.deferred_rows``)

``lazy_adam_rows`` (``LazyAdam``: touched rows only, g = G + wd * p, L2 on the touched rows as RecZoo/RecBox
regularise batch rows) has the same formulas with g in a register; written out through ``adam_row`` it rounds
``v`` differently, so it keeps its own loop (the golden digests pin both).  The clip norm's passes
(``grad_sq_norm``, ``touched_grad_sq``, ``table_sq_norm``) sum in ``adam_rows``' blocks and lanes.  Every
scalar is in the dtype of ``p`` (no float64 arithmetic on fp32 rows).
"""

import numpy as np

from mmlexp._numba import AHEAD, BLOCKS, inline_jit, jit, nb, prefetch_row


@inline_jit
def adam_row(p, m, v, r, g, step_size, b1, c1, b2, c2, eps, bc2_sqrt, lanes):  # pragma: no cover - compiled
    """One Adam step on row ``r`` of ``p`` (and its moments ``m``, ``v``) with gradient ``g[d]``;
    ``lanes[j] += p[r, j]^2`` after the update (the next clip norm's sum)."""
    for j in range(p.shape[1]):
        mj = b1 * m[r, j] + c1 * g[j]
        vj = b2 * v[r, j] + c2 * g[j] * g[j]
        m[r, j] = mj
        v[r, j] = vj
        x = p[r, j] - step_size * mj / (np.sqrt(vj) / bc2_sqrt + eps)
        p[r, j] = x
        lanes[j] += x * x


@jit
def adam_rows(p, m, v, rows, vals, l2, coef, step_size, b1, c1, b2, c2, eps, bc2_sqrt, dense):  # pragma: no cover
    """``adam_row`` on every row of ``p`` with g = coef * (l2 * p + G): G[r] = vals[r] (``dense``), or vals[k]
    for r = rows[k] (rows sorted, distinct) and 0 elsewhere.  Returns ||p||^2 after the update (float64)."""
    n, d = p.shape
    step = (n + BLOCKS - 1) // BLOCKS
    a = l2 * coef
    acc = np.zeros(BLOCKS)
    for blk in nb.prange(BLOCKS):
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
            adam_row(p, m, v, r, g, step_size, b1, c1, b2, c2, eps, bc2_sqrt, lanes)
        acc[blk] = lanes.astype(np.float64).sum()
    return acc.sum()


@jit
def adam_touched(p, m, v, rows, vals, l2, coef, step_size, b1, c1, b2, c2, eps, bc2_sqrt):  # pragma: no cover
    """``adam_row`` on the rows ``rows[k]`` (distinct, current) only, g = l2 coef p + coef vals[k].
    Returns the change of sum ||p_r||^2 (float64)."""
    n, d = rows.shape[0], p.shape[1]
    per = (n + BLOCKS - 1) // BLOCKS
    a = l2 * coef
    delta = np.zeros(BLOCKS)
    for blk in nb.prange(BLOCKS):
        g = np.empty(d, p.dtype)
        lanes = np.zeros(d, p.dtype)
        for k in range(blk * per, min(n, (blk + 1) * per)):
            if k + AHEAD < n:
                prefetch_row(p, rows[k + AHEAD])
                prefetch_row(m, rows[k + AHEAD])
                prefetch_row(v, rows[k + AHEAD])
            r = rows[k]
            for j in range(d):
                lanes[j] -= p[r, j] * p[r, j]
            for j in range(d):
                g[j] = a * p[r, j] + coef * vals[k, j]
            adam_row(p, m, v, r, g, step_size, b1, c1, b2, c2, eps, bc2_sqrt, lanes)
        delta[blk] = lanes.astype(np.float64).sum()
    return delta.sum()


# hist columns of ``replay_rows``: a = l2 * coef, step_size, b1, 1 - b1, b2, 1 - b2, eps, sqrt(1 - b2^t)
A, STEP, B1, C1, B2, C2, EPS, BC2 = range(8)


@jit
def replay_rows(p, m, v, rows, done, upto, hist):  # pragma: no cover - compiled
    """``adam_row`` for steps ``done[r] .. upto-1`` of ``hist`` on each row r of ``rows`` (distinct), with
    g = a_s p (no data gradient), then ``done[r] = upto``.  Returns the change of sum ||p_r||^2 (float64)."""
    n, d = rows.shape[0], p.shape[1]
    per = (n + BLOCKS - 1) // BLOCKS
    delta = np.zeros(BLOCKS)
    for blk in nb.prange(BLOCKS):
        g = np.empty(d, p.dtype)
        lanes = np.zeros(d, p.dtype)
        shape = np.zeros(d, p.dtype)  # adam_row's ||p||^2 lanes, kept only for the loop's shape
        for k in range(blk * per, min(n, (blk + 1) * per)):
            if k + AHEAD < n:  # the rows come in a random order: fetch a few ahead (no effect on results)
                prefetch_row(p, rows[k + AHEAD])
                prefetch_row(m, rows[k + AHEAD])
                prefetch_row(v, rows[k + AHEAD])
            r = rows[k]
            first = done[r]
            if first >= upto:
                continue
            for j in range(d):
                lanes[j] -= p[r, j] * p[r, j]
            for s in range(first, upto):
                a, step_size, bc2_sqrt, eps = hist[s, A], hist[s, STEP], hist[s, BC2], hist[s, EPS]
                b1, c1, b2, c2 = hist[s, B1], hist[s, C1], hist[s, B2], hist[s, C2]
                for j in range(d):
                    g[j] = a * p[r, j]
                adam_row(p, m, v, r, g, step_size, b1, c1, b2, c2, eps, bc2_sqrt, shape)
            for j in range(d):
                lanes[j] += p[r, j] * p[r, j]
            done[r] = upto
        delta[blk] = lanes.astype(np.float64).sum() + 0.0 * shape[0]
    return delta.sum()


@jit
def lazy_adam_rows(p, m, v, rows, vals, wd, step_size, b1, c1, b2, c2, eps, bc2_sqrt):  # pragma: no cover
    """Lazy Adam on the rows ``rows`` only (distinct), g = vals[k] + wd * p[r] there; every other row, its
    moments included, is left as it is.  ``adam_row``'s formulas with g kept in a register, not written out:
    its own rounding (``v`` differs in the last bit from ``adam_row``'s), which the golden digests pin."""
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


@jit
def grad_sq_norm(p, grad, l2):  # pragma: no cover - compiled
    """||l2 * p + grad||^2 for a dense gradient."""
    n, d = p.shape
    step = (n + BLOCKS - 1) // BLOCKS
    acc = np.zeros(BLOCKS)
    for blk in nb.prange(BLOCKS):
        lanes = np.zeros(d, p.dtype)  # per-column sums in the rows' dtype: vectorised; added up in float64
        for r in range(blk * step, min(n, (blk + 1) * step)):
            for j in range(d):
                g = l2 * p[r, j] + grad[r, j]
                lanes[j] += g * g
        acc[blk] = lanes.astype(np.float64).sum()
    return acc.sum()


@jit
def touched_grad_sq(p, rows, vals, l2):  # pragma: no cover - compiled
    """sum over k of ||l2 * p[rows[k]] + vals[k]||^2 - ||l2 * p[rows[k]]||^2: with l2^2 ||p||^2 (known from the
    last update) it is the squared norm of the gradient l2 * p + G of a sparse G, reading its rows only."""
    n, d = vals.shape
    step = (n + BLOCKS - 1) // BLOCKS
    acc = np.zeros(BLOCKS)
    two_l2 = l2 + l2
    for blk in nb.prange(BLOCKS):
        lanes = np.zeros(d, p.dtype)
        for k in range(blk * step, min(n, (blk + 1) * step)):
            r = rows[k]
            for j in range(d):
                lanes[j] += (two_l2 * p[r, j] + vals[k, j]) * vals[k, j]
        acc[blk] = lanes.astype(np.float64).sum()
    return acc.sum()


@jit
def table_sq_norm(p):  # pragma: no cover - compiled
    """||p||^2 summed as ``adam_rows`` sums it (same blocks, lanes in the rows' dtype)."""
    n, d = p.shape
    step = (n + BLOCKS - 1) // BLOCKS
    acc = np.zeros(BLOCKS)
    for blk in nb.prange(BLOCKS):
        lanes = np.zeros(d, p.dtype)
        for r in range(blk * step, min(n, (blk + 1) * step)):
            for j in range(d):
                x = p[r, j]
                lanes[j] += x * x
        acc[blk] = lanes.astype(np.float64).sum()
    return acc.sum()

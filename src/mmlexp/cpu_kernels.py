"""Numba kernels of the CPU hot path (one pass each, parallel over row blocks).

Each is the loop form of a formula given in its caller (``mmlexp.optim.TableAdam``,
``mmlexp.ops.cosine_gather_scores``) and is checked against plain PyTorch in the tests.  ``AVAILABLE``
is False where numba is missing; callers then take their PyTorch path.
"""

import numpy as np

try:
    import numba as nb
    AVAILABLE = True
except ImportError:  # pragma: no cover - numba is a dependency; the PyTorch paths stay correct without it
    nb, AVAILABLE = None, False

# Reassociation and fused multiply-add, but NaN and inf keep their meaning (no "nnan"/"ninf").
_FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}
_BLOCKS = 64  # row blocks per call: enough for any core count, few enough to amortise the dispatch


def _jit(fn):
    return nb.njit(parallel=True, fastmath=_FAST, cache=True, nogil=True)(fn) if AVAILABLE else fn


def set_threads(n: int) -> None:
    """Use ``n`` threads (capped at numba's pool), to follow ``torch.get_num_threads()``."""
    if AVAILABLE:
        nb.set_num_threads(max(1, min(int(n), nb.config.NUMBA_NUM_THREADS)))


@_jit
def grad_sq_norm(p, slot, vals, l2, dense):  # pragma: no cover - compiled
    """sum over rows r of ||l2 * p[r] + G[r]||^2, with G[r] = vals[r] (dense) or vals[slot[r]] (0 if slot < 0)."""
    n, d = p.shape
    step = (n + _BLOCKS - 1) // _BLOCKS
    acc = np.zeros(_BLOCKS)
    for blk in nb.prange(_BLOCKS):
        lanes = np.zeros(d, p.dtype)
        for r in range(blk * step, min(n, (blk + 1) * step)):
            k = r if dense else slot[r]
            if k >= 0:
                for j in range(d):
                    g = l2 * p[r, j] + vals[k, j]
                    lanes[j] += g * g
            else:
                for j in range(d):
                    g = l2 * p[r, j]
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
def adam_rows(p, m, v, slot, vals, l2, coef, step_size, b1, c1, b2, c2, eps, bc2_sqrt, dense):  # pragma: no cover
    """Dense Adam on every row of ``p`` (torch's formulas) with gradient g = coef * (l2 * p + G):

        m <- b1 m + c1 g,  v <- b2 v + c2 g^2,  p <- p - step_size * m / (sqrt(v) / bc2_sqrt + eps)

    G as in ``grad_sq_norm``; c1 = 1 - b1, c2 = 1 - b2, ``step_size = lr / (1 - b1^t)``,
    ``bc2_sqrt = sqrt(1 - b2^t)``; every scalar in the dtype of ``p`` (no float64 arithmetic on fp32 rows).
    Returns ||p||^2 after the update (the next step's clip norm needs it; the rows are in registers here).
    """
    n, d = p.shape
    step = (n + _BLOCKS - 1) // _BLOCKS
    a = l2 * coef
    acc = np.zeros(_BLOCKS)
    for blk in nb.prange(_BLOCKS):
        lanes = np.zeros(d, p.dtype)  # per-column sums in the rows' dtype: vectorised; added up in float64
        g = np.empty(d, p.dtype)
        for r in range(blk * step, min(n, (blk + 1) * step)):
            k = r if dense else slot[r]
            if k >= 0:
                for j in range(d):
                    g[j] = a * p[r, j] + coef * vals[k, j]
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
    for b in nb.prange(batch):
        for c in range(cols):
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
    for b in nb.prange(batch):
        for j in range(d):
            out[b, j] = 0.0
        for c in range(cols):
            i = items[b, c]
            w = g[b, c]
            for j in range(d):
                out[b, j] += w * table[i, j]


@nb.njit(cache=True) if AVAILABLE else (lambda f: f)
def touched_rows(items, n_rows):  # pragma: no cover - compiled
    """(sorted distinct rows of ``items``, slot: row -> its position there, -1 if untouched)."""
    slot = np.full(n_rows, -1, dtype=np.int64)
    for i in items.ravel():
        slot[i] = 0
    count = 0
    for r in range(n_rows):
        if slot[r] == 0:
            slot[r] = count
            count += 1
    rows = np.empty(count, dtype=np.int64)
    for r in range(n_rows):
        if slot[r] >= 0:
            rows[slot[r]] = r
    return rows, slot


@_jit
def cosine_rows_grad(table, items, g, row_coef, user_vecs, rows, slot, parts):  # pragma: no cover - compiled
    """The table gradient of ``cosine_scores`` on its touched rows only, as ``vals[k]`` for row ``rows[k]``:

        vals[k] = table[r] * sum_{(b,c): items[b,c] = r} row_coef[b, c]  +  sum_{(b,c): items[b,c] = r} g[b, c] * u[b]

    with g = upstream * inv_norm and row_coef = -g * score * inv_norm.  ``parts`` threads each own a
    contiguous range of slots (no two threads write one row); each scans every entry.
    """
    batch, cols = items.shape
    d = table.shape[1]
    n = rows.shape[0]
    vals = np.zeros((n, d), dtype=table.dtype)
    scale = np.zeros(n, dtype=table.dtype)
    for part in nb.prange(parts):
        lo, hi = part * n // parts, (part + 1) * n // parts
        for b in range(batch):
            for c in range(cols):
                k = slot[items[b, c]]
                if k < lo or k >= hi:
                    continue
                scale[k] += row_coef[b, c]
                w = g[b, c]
                for j in range(d):
                    vals[k, j] += w * user_vecs[b, j]
        for k in range(lo, hi):
            r = rows[k]
            for j in range(d):
                vals[k, j] += scale[k] * table[r, j]
    return vals

"""Top-K ranking kernels: the exact top-``k`` items per user by ``user_emb @ item_emb.T``, train items excluded.

Three kernels (``method``): ``"topk"`` (dense scores + ``torch.topk``, the reference, and the path on
accelerators), ``"blocked"`` (exact block-max selection) and ``"bf16"`` (a bf16 screen of the
candidates, re-scored exactly; CPU only).

Speed (CPU). A dense ``[users, items]`` score matrix followed by ``torch.topk`` spends about as
much time in the top-k (~1.7 ns per score and thread) as in the matrix product. Here users are
processed in chunks whose scores are laid out item-major (``items @ users_chunk.T``, the faster
GEMM shape for d ~ 64), and the top-k is found without sorting whole rows (``method="blocked"``):

1. block maxima over ``_BLOCK`` consecutive items (one vectorised pass), then group maxima over
   ``_GROUP`` blocks; the k-th largest group maximum ``t`` is a lower bound of the k-th largest
   score (k disjoint groups have their maximum >= t);
2. only blocks whose maximum is >= t can hold a top-k item: those few are gathered, their items
   >= t kept (about k + a few per user), and a small padded ``topk`` picks the exact top-k.

On CPUs where oneDNN runs bf16 matrix products (``method="bf16"``, the default there), the
selection runs on bf16 scores (the product is ~3x cheaper than fp32) and the result is still
exact: with ``|s_bf16 - s| <= delta_u = _BF16_REL_ERR * ||u|| * max_i ||v_i||`` (a worst-case
rounding bound, checked by an adversarial test), an item whose bf16 score is below
``t - 2 delta_u`` scores below k other items, so the candidates are the items at or above that
line; they are re-scored in fp32 (fp64 for fp64 embeddings) and the top-k is taken on those
scores. The bound is also checked on the candidates at run time. A chunk that breaks it, or
whose candidates are too many to pay off (wide score ties relative to delta), is redone by the
exact fp32 path, and so are all later chunks.

Ties are broken arbitrarily (whatever the selection does); results are exact otherwise.
"""

from __future__ import annotations

import copy
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp
import torch

from mmlexp.evaluation._checks import _as_csr, _check_embeddings, _check_users, _is_int

METHODS = ("auto", "bf16", "blocked", "topk")

# Selection layout (CPU paths): items per block, blocks per threshold group. Tests shrink them.
_BLOCK = 16
_GROUP = 8
# Worst-case relative error of a bf16-input, fp32-accumulate, bf16-output dot product against the
# fp32 re-score, per unit of ||u||*||v||: inputs rounded to bf16 (2 * 2^-8 + 2^-16), output
# rounded to bf16 (2^-8 * (1 + 2^-7)); the fp32 accumulation terms (2 * d * 2^-24) are added per d.
_BF16_REL_ERR = 2.0**-7 + 2.0**-16 + 2.0**-8 * (1 + 2.0**-7)
_BF16_SAFETY = 1.05
# A bf16 chunk with more than (k * _BF16_MAX_CAND_PER_K + _BF16_MAX_CAND_EXTRA) candidates per
# user is redone, with all later chunks, by the exact path: past that, gathering and re-scoring
# them costs more than the fp32 product saves (measured on Gowalla-sized data, 1 thread: random
# unit vectors give ~120 per user at k=50; popularity-heavy or clustered embeddings 200-400).
_BF16_MAX_CAND_PER_K = 1
_BF16_MAX_CAND_EXTRA = 192
# CPU: run chunks in parallel threads (one intra-op thread each) instead of splitting each op.
_CHUNK_THREADS = True
# Bytes of score buffer per chunk when chunk_size is None (_chunk_budget).
_CHUNK_BYTES = {"bf16": 2**24, "blocked": 2**24, "topk": 2**26, "device": 2**28}
_FLOAT_BYTES = 4  # an fp32 score


def _chunk_budget(method: str, device: torch.device) -> int:
    """Bytes of score buffer per chunk when chunk_size is None."""
    return _CHUNK_BYTES["device" if device.type != "cpu" else method]


def _n_workers(threads: int, n_chunks: int, device: torch.device) -> int:
    """Worker threads that rank chunks side by side: one per thread on the CPU (at most one per chunk), else one."""
    return min(threads, n_chunks) if device.type == "cpu" and _CHUNK_THREADS else 1


def _resolve_method(method: str, device: torch.device) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "auto":
        if device.type != "cpu":
            return "topk"
        return "bf16" if _cpu_bf16_matmul() else "blocked"
    if method == "bf16" and device.type != "cpu":
        raise ValueError(
            f"method='bf16' is for CPU tensors only (its error bound assumes fp32 "
            f"accumulation); embeddings are on {device}. Use 'topk' or 'blocked'"
        )
    return method


def _cpu_bf16_matmul() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def rank_top_k(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    train: sp.spmatrix,
    k_max: int,
    users=None,
    chunk_size: int | None = None,
    *,
    method: str = "auto",
    progress: bool = False,
) -> torch.Tensor:
    """Top-``k_max`` items per user by ``user_emb @ item_emb.T``, excluding the user's train items.

    ``users``: indices of the users to rank (default all), in output order. Returns a CPU
    LongTensor ``[len(users), k_max]``, best first. ``method``: ``"topk"`` (dense scores +
    ``torch.topk``), ``"blocked"`` (exact block-max selection), ``"bf16"`` (bf16 pre-filter, exact
    re-score; CPU only) or ``"auto"`` (``bf16`` on CPUs with oneDNN bf16, ``blocked`` on other
    CPUs, ``topk`` on accelerators). A user with fewer than ``k_max`` non-train items gets train
    items (in arbitrary order) at the end of the list.
    """
    n_users, n_items = _check_embeddings(user_emb, item_emb)
    if not _is_int(k_max) or not 1 <= k_max <= n_items:
        raise ValueError(f"k_max must be an int in [1, n_items={n_items}], got {k_max!r}")
    train = _as_csr(train, "train", (n_users, n_items))
    users = _check_users(users, n_users)
    return _rank(user_emb, item_emb, train, int(k_max), users, chunk_size, method, progress)


def workspace_bytes(
    n_users: int, n_items: int, dim: int, k: int, chunk_size, device: torch.device, threads: int
) -> dict[str, int]:
    """Bytes the workers (up to ``threads`` on the CPU, one chunk each) hold while they rank with the kernel
    ``"auto"`` picks on ``device``. Per worker: the chunk's fp32
    scores and as much again for the selection (``topk``'s working copy, the blocked path's gathered blocks); the
    bf16 screen adds its re-scored candidates, ``[chunk, k + 192, dim]`` fp32 rows (the most a chunk admits on
    average per user), a buffer still held when a later chunk falls back to the fp32 path. For :mod:`mmlexp.memory`."""
    method = _resolve_method("auto", device)
    n_pad = n_items if method == "topk" else _block_params(n_items, k)[2]
    if chunk_size is None:
        elem = 2 if method == "bf16" else _FLOAT_BYTES
        chunk_size = _pow2_chunk(_chunk_budget(method, device) // (n_pad * elem))
    chunk = min(int(chunk_size), n_users)
    workers = _n_workers(threads, -(-n_users // chunk), device)
    parts = {"scores": chunk * n_pad * _FLOAT_BYTES, "selection": chunk * n_pad * _FLOAT_BYTES}
    if method == "bf16":
        parts["re-scored candidates"] = chunk * (k * _BF16_MAX_CAND_PER_K + _BF16_MAX_CAND_EXTRA) * dim * _FLOAT_BYTES
    return {part: workers * size for part, size in parts.items()}


def _rank(
    user_emb, item_emb, exclude: sp.csr_matrix, k: int, users: np.ndarray, chunk_size, method: str, progress: bool
) -> torch.Tensor:
    if chunk_size is not None and (not _is_int(chunk_size) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    device = item_emb.device
    method = _resolve_method(method, device)
    n_eval = len(users)
    if n_eval == 0:
        return torch.empty(0, k, dtype=torch.long)

    dtype = torch.float64 if torch.float64 in (user_emb.dtype, item_emb.dtype) else torch.float32
    u = user_emb.detach()[torch.from_numpy(users).to(device)].to(dtype).contiguous()
    v = item_emb.detach().to(dtype).contiguous()
    rows = exclude if n_eval == exclude.shape[0] and np.array_equal(users, np.arange(n_eval)) else exclude[users]
    ranker: _DenseTopK | _BlockedTopK = _DenseTopK(v, k) if method == "topk" else _BlockedTopK(v, k, method == "bf16")
    if chunk_size is None:
        chunk_size = ranker.default_chunk(_chunk_budget(method, device))
    out = torch.empty(n_eval, k, dtype=torch.long)
    _rank_chunks(ranker, u, _ChunkMask(rows, device), out, min(int(chunk_size), n_eval), progress)
    return out


def _rank_chunks(ranker, u: torch.Tensor, mask, out: torch.Tensor, chunk_size: int, progress: bool) -> None:
    """Fill ``out`` with the top-k of each chunk of ``chunk_size`` users.

    CPU: the chunks are spread over worker threads that run their ops on one thread each, rather than each op
    being split over all threads: many small ops that each wait for all threads stall whenever one is descheduled
    (another busy process): 15x slower on 2 cores with one busy, against ~1x this way; as fast on idle cores."""
    n_eval = len(out)
    n_chunks = -(-n_eval // chunk_size)
    threads = torch.get_num_threads()
    n_workers = _n_workers(threads, n_chunks, u.device)
    rankers = [ranker] + [ranker.sibling() for _ in range(n_workers - 1)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_eval, desc="evaluate", unit="user", leave=False)

    def work(w: int) -> None:
        with torch.no_grad():
            for i in range(w, n_chunks, n_workers):
                s, e = i * chunk_size, min((i + 1) * chunk_size, n_eval)
                out[s:e] = rankers[w](u[s:e], mask, s, e).cpu()
                if bar is not None:
                    bar.update(e - s)

    try:
        if n_workers == 1:
            work(0)
        else:
            torch.set_num_threads(1)  # process-wide: restored below
            try:
                with ThreadPoolExecutor(n_workers) as pool:
                    list(pool.map(work, range(n_workers)))
            finally:
                torch.set_num_threads(threads)
    finally:
        if bar is not None:
            bar.close()


class _ChunkMask:
    """Excluded (user, item) pairs of a row range, as flat offsets into a chunk's score matrix."""

    def __init__(self, rows: sp.csr_matrix, device):
        self.indptr = rows.indptr.astype(np.int64)
        counts = torch.from_numpy(np.diff(self.indptr))
        self.row = torch.repeat_interleave(torch.arange(rows.shape[0]), counts).to(device)
        self.col = torch.from_numpy(rows.indices.astype(np.int64)).to(device)

    def flat(self, s: int, e: int, item_major: bool, width: int) -> torch.Tensor:
        """Offsets for rows s..e-1; ``width``: row length (user-major) or chunk size (item-major)."""
        a, b = self.indptr[s], self.indptr[e]
        r, c = self.row[a:b] - s, self.col[a:b]
        return c * width + r if item_major else r * width + c


class _DenseTopK:
    """Reference path: dense [chunk, items] scores, train items set to -inf, ``torch.topk``."""

    def __init__(self, v: torch.Tensor, k: int):
        self.v, self.k = v, k
        self.buf = None

    def default_chunk(self, budget: int) -> int:
        return _pow2_chunk(budget // (self.v.shape[0] * self.v.element_size()))

    def sibling(self) -> _DenseTopK:
        """Same items, own buffer (for another worker thread)."""
        twin = copy.copy(self)
        twin.buf = None
        return twin

    def __call__(self, u: torch.Tensor, mask: _ChunkMask, s: int, e: int) -> torch.Tensor:
        n, n_items = u.shape[0], self.v.shape[0]
        scores = _buffer(self, "buf", n * n_items, u.dtype, u.device).view(n, n_items)
        torch.mm(u, self.v.T, out=scores)
        scores.view(-1)[mask.flat(s, e, False, n_items)] = -math.inf
        return torch.topk(scores, self.k, dim=1, sorted=True).indices


class _BlockedTopK:
    """Block-max selection on item-major chunk scores (see module docstring), optionally bf16."""

    def __init__(self, v: torch.Tensor, k: int, bf16: bool):
        n_items, d = v.shape
        self.k, self.n_items, self.v = k, n_items, v
        self.bs, self.g, self.n_pad = _block_params(n_items, k)
        self.coarse_dtype = torch.bfloat16 if bf16 else v.dtype
        vp = torch.zeros(self.n_pad, d, dtype=self.coarse_dtype, device=v.device)
        vp[:n_items] = v
        self.vc = vp  # coarse item matrix, padded with zero rows (their scores are set to -inf)
        self.bf16 = bf16
        self.exact_fallback: _BlockedTopK | None = None  # in v.dtype, used once a bf16 chunk fails
        if bf16:
            rel = (_BF16_REL_ERR + 2 * d * 2.0**-24) * _BF16_SAFETY
            self.delta_scale = rel * float(v.norm(dim=1).max())
            self.delta_abs = d * 2.0**-120  # bf16 products flushed to zero (denormals)
        self.buf = self.bm_buf = self.v_buf = None
        self.offsets: dict[int, torch.Tensor] = {}
        self.n_candidates = 0  # diagnostics: candidates selected so far (summed over chunks)

    def default_chunk(self, budget: int) -> int:
        return _pow2_chunk(budget // (self.n_pad * self.vc.element_size()))

    def sibling(self) -> _BlockedTopK:
        """Same items, own buffers and fallback state (for another worker thread)."""
        twin = copy.copy(self)
        twin.buf = twin.bm_buf = twin.v_buf = twin.exact_fallback = None
        twin.offsets, twin.n_candidates = {}, 0
        return twin

    def __call__(self, u: torch.Tensor, mask: _ChunkMask, s: int, e: int) -> torch.Tensor:
        if self.bf16 and self.exact_fallback is None:
            top = self._select(u, mask, s, e)
            if top is not None:
                return top
            # bound broken or too many candidates: this chunk and the rest with exact scores
            self.exact_fallback = _BlockedTopK(self.v, self.k, bf16=False)
            self.buf = self.bm_buf = None
        if self.exact_fallback is not None:
            return self.exact_fallback(u, mask, s, e)
        return self._select(u, mask, s, e)

    def _select(self, u, mask, s, e):
        """The chunk's top-k in four steps, or None where the bf16 bound or the candidate limit fails."""
        scores = self._coarse_scores(u, mask, s, e)
        bmax, lower, delta = self._threshold(scores, u)
        found = self._candidates(scores, bmax, lower, u)
        if found is None:
            return None
        row, item, cval = found
        cand, items = self._padded(row, item, cval, u)
        if self.bf16:  # exact scores of the candidates; check the bound on them
            cand = self._rescored(cand, items, delta, u)
            if cand is None:
                return None
        best = torch.topk(cand, self.k, dim=1, sorted=True).indices  # 4. exact top-k among each row's candidates
        return items.gather(1, best)

    def _coarse_scores(self, u, mask, s, e) -> torch.Tensor:
        """Item-major coarse scores [n_pad, n]; padding rows and train items -> -inf."""
        n = u.shape[0]
        scores = _buffer(self, "buf", self.n_pad * n, self.coarse_dtype, u.device).view(self.n_pad, n)
        torch.mm(self.vc, u.to(self.coarse_dtype).T, out=scores)
        scores[self.n_items :] = -math.inf
        scores.view(-1)[mask.flat(s, e, True, n)] = -math.inf
        return scores

    def _threshold(self, scores, u):
        """1. Block maxima [nb, n], group maxima, and a threshold with >= k items at or above it (lowered by the
        bf16 error bound ``2 delta``)."""
        n, bs, g = u.shape[0], self.bs, self.g
        nb = self.n_pad // bs
        bmax = _buffer(self, "bm_buf", nb * n, self.coarse_dtype, u.device).view(nb, n)
        torch.amax(scores.view(nb, bs, n), dim=1, out=bmax)
        gmax = bmax.view(nb // g, g, n).amax(dim=1) if g > 1 else bmax
        thr = torch.topk(gmax.T, self.k, dim=1, sorted=False).values.amin(dim=1).to(u.dtype)
        if not self.bf16:
            return bmax, thr, None
        delta = u.norm(dim=1) * self.delta_scale + self.delta_abs  # compared in u.dtype: no rounding of the line
        return bmax, thr - 2 * delta, delta

    def _candidates(self, scores, bmax, lower, u) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """2. Candidate blocks -> candidate items (row, item, coarse value), rows ascending; None over the limit."""
        n, k, bs = u.shape[0], self.k, self.bs
        r, blk = (bmax.T.to(u.dtype) >= lower[:, None]).nonzero(as_tuple=True)
        limit = (_BF16_MAX_CAND_PER_K * k + _BF16_MAX_CAND_EXTRA) * n if self.bf16 else None
        if limit is not None and r.numel() > limit:
            return None
        flat, offs = scores.view(-1), self._offsets(n, u.device)
        vals = flat.index_select(0, ((blk * (bs * n) + r)[:, None] + offs).view(-1)).view(-1, bs).to(u.dtype)
        p, off = (vals >= lower.index_select(0, r)[:, None]).nonzero(as_tuple=True)
        row = r.index_select(0, p)
        item = blk.index_select(0, p) * bs + off
        cval = vals.view(-1).index_select(0, p * bs + off)
        if bool((lower == -math.inf).any()):  # all items are candidates there: drop padding
            keep = (item < self.n_items).nonzero().view(-1)
            row, item, cval = row.index_select(0, keep), item.index_select(0, keep), cval.index_select(0, keep)
        self.n_candidates += row.numel()
        if limit is not None and row.numel() > limit:
            return None
        return row, item, cval

    def _padded(self, row, item, cval, u):
        """3. Candidates padded to [n, width] (every row has >= k): -inf marks empty slots, the lowest finite
        value excluded items (candidates only where a row has < k others)."""
        n, dev = u.shape[0], u.device
        counts = torch.bincount(row, minlength=n)
        width = int(counts.max())
        pos = row * width + torch.arange(row.numel(), device=dev) - (torch.cumsum(counts, 0) - counts)[row]
        lowest = torch.finfo(u.dtype).min
        cand = torch.full((n * width,), -math.inf, dtype=u.dtype, device=dev)
        cand = cand.index_copy_(0, pos, cval.masked_fill_(cval == -math.inf, lowest)).view(n, width)
        items = torch.zeros(n * width, dtype=torch.long, device=dev).index_copy_(0, pos, item).view(n, width)
        return cand, items

    def _rescored(self, cand, items, delta, u):
        """The candidates' exact scores, or None where a coarse score is off by more than the bound ``delta``."""
        (n, width), d = cand.shape, u.shape[1]
        cand_v = _buffer(self, "v_buf", n * width * d, u.dtype, u.device).view(n * width, d)
        torch.index_select(self.v, 0, items.view(-1), out=cand_v)
        exact = torch.bmm(u[:, None, :], cand_v.view(n, width, d).transpose(1, 2))[:, 0, :]
        real = cand > torch.finfo(u.dtype).min
        if bool(((cand - exact).abs_() > delta[:, None]).logical_and_(real).any()):
            return None
        return torch.where(real, exact, cand)

    def _offsets(self, n, dev):
        if n not in self.offsets:
            self.offsets[n] = torch.arange(self.bs, device=dev) * n
        return self.offsets[n]


def _block_params(n_items: int, k: int) -> tuple[int, int, int]:
    """(block size, blocks per group, padded item count) with at least k groups."""
    bs, g = _BLOCK, _GROUP
    while True:
        span = bs * g
        n_pad = -(-n_items // span) * span
        if n_pad // span >= k or span == 1:
            return bs, g, n_pad
        if g > 1:
            g //= 2
        else:
            bs //= 2


def _pow2_chunk(n: int) -> int:
    return 1 << max(4, min(16, int(max(n, 1)).bit_length() - 1))


def _buffer(owner, name: str, numel: int, dtype, device) -> torch.Tensor:
    """A reusable flat buffer (fresh large allocations page-fault on every chunk)."""
    buf = getattr(owner, name)
    if buf is None or buf.numel() < numel or buf.dtype != dtype:
        buf = torch.empty(numel, dtype=dtype, device=device)
        setattr(owner, name, buf)
    return buf[:numel]

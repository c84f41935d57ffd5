"""Sparse user-item graph helpers shared by LightGCN, NGCF, SVD++ and SimpleX.

- ``normalized_adjacency(train)``: A_hat = D^-1/2 A D^-1/2 of the bipartite graph
  A = [[0, R], [R^T, 0]] (users first, then items), as a torch sparse CSR tensor.
- ``propagate(adj, x)``: ``adj @ x`` with a backward that uses the symmetry of ``adj``
  (grad_x = adj @ grad), one sparse product each way instead of autograd's CSR transpose.
- ``row_entries(indptr, rows)`` / ``batch_csr``: the stored entries of a batch of CSR rows, packed
  and vectorised (no Python loop over users): per-user histories (SimpleX) and row products (SVD++).
"""

import warnings

import numpy as np
import scipy.sparse as sp
import torch


def torch_csr(matrix: sp.spmatrix, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A scipy matrix as a torch sparse CSR tensor (int32 indices when they fit, as MKL/cuSPARSE prefer)."""
    matrix = sp.csr_matrix(matrix)
    matrix.sort_indices()
    index = np.int32 if matrix.nnz < 2**31 - 1 and max(matrix.shape) < 2**31 - 1 else np.int64
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            torch.from_numpy(matrix.indptr.astype(index)),
            torch.from_numpy(matrix.indices.astype(index)),
            torch.from_numpy(matrix.data.astype(np.float32)).to(dtype),
            size=matrix.shape,
            check_invariants=False,
        )


def bipartite_adjacency(train: sp.spmatrix) -> sp.csr_matrix:
    """A = [[0, R], [R^T, 0]] with R the binary users x items matrix (duplicates collapsed to 1)."""
    r = sp.csr_matrix(train, dtype=np.float32, copy=True)
    r.sum_duplicates()
    r.data[:] = 1.0
    return sp.bmat([[None, r], [r.T, None]], format="csr", dtype=np.float32)


def normalized_adjacency(train: sp.spmatrix) -> torch.Tensor:
    """Symmetric-normalised bipartite adjacency ``[(U+I), (U+I)]``, torch sparse CSR, float32.

    A_hat[u, U+i] = A_hat[U+i, u] = 1 / sqrt(deg(u) * deg(i)) for every training pair (u, i), where
    deg counts a node's training interactions; nodes without interactions (e.g. items seen only in
    test) have an all-zero row and column (D^-1/2 taken as 0 there).  No self-loops (LightGCN).
    """
    a = bipartite_adjacency(train)
    deg = np.asarray(a.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(deg)
    np.power(deg, -0.5, out=inv_sqrt, where=deg > 0)
    d = sp.diags(inv_sqrt.astype(np.float32))
    return torch_csr(d @ a @ d)


class _SymmetricSpMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.adj = adj
        return adj @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, ctx.adj @ grad.contiguous()


def propagate(adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``adj @ x`` for a SYMMETRIC sparse ``adj`` (no gradient to ``adj``)."""
    if x.requires_grad:
        return _SymmetricSpMM.apply(adj, x)
    return adj @ x


def row_segments(indptr: torch.Tensor, rows: torch.Tensor, take_last: torch.Tensor | None = None):
    """Storage positions of the entries of CSR ``rows`` (optionally only the last ``take_last[b]`` of row b).

    Returns ``(starts, lengths)`` ``[B]`` of the (possibly truncated) segments; row b's entries are
    ``indices[starts[b] : starts[b] + lengths[b]]``.
    """
    ends = indptr[rows + 1]
    lengths = ends - indptr[rows]
    if take_last is not None:
        lengths = torch.minimum(lengths, take_last)
    return ends - lengths, lengths


def row_entries(indptr: torch.Tensor, rows: torch.Tensor, take_last: torch.Tensor | None = None):
    """The stored entries of CSR ``rows``, packed (no padding): ``(seg, pos, offset, lengths)``.

    Entry t belongs to batch row ``seg[t]``, sits at storage position ``pos[t]`` (index ``indices`` and
    ``data`` with it) and is the ``offset[t]``-th entry of its (possibly truncated) segment;
    ``lengths[b]`` entries per row, rows in batch order, each row's entries in storage order.
    """
    starts, lengths = row_segments(indptr, rows, take_last)
    first = torch.cumsum(lengths, 0) - lengths
    total = int(lengths.sum())
    seg = torch.repeat_interleave(torch.arange(rows.numel(), device=indptr.device), lengths, output_size=total)
    offset = torch.arange(total, device=indptr.device, dtype=lengths.dtype) - first[seg]
    return seg, starts[seg] + offset, offset, lengths


def batch_csr(
    indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, rows: torch.Tensor, n_cols: int
) -> torch.Tensor:
    """Rows ``rows`` of the CSR matrix (indptr, indices, values) as a ``[B, n_cols]`` torch sparse CSR tensor."""
    _, pos, _, lengths = row_entries(indptr, rows)
    crow = torch.zeros(rows.numel() + 1, dtype=indptr.dtype, device=indptr.device)
    torch.cumsum(lengths, 0, out=crow[1:])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            crow, indices[pos].to(indptr.dtype), values[pos], size=(rows.numel(), n_cols), check_invariants=False
        )


# ---------------------------------------------------------------- packed segments
# Entries sorted by segment (row b's entries contiguous, rows in order), ``lengths[b]`` per segment.
# ``segment_sum`` and ``segment_expand`` are adjoint; each is the other's backward.  On CPU they are
# several times faster than index_add / scatter_add (which serialise on the few output rows) and
# than index_select's backward (an index_add).


class _SegmentSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, seg: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(seg)
        return torch.segment_reduce(x, "sum", lengths=lengths, axis=0, unsafe=True)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (seg,) = ctx.saved_tensors
        return grad.index_select(0, seg), None, None


class _SegmentExpand(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, seg: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(lengths)
        return x.index_select(0, seg)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (lengths,) = ctx.saved_tensors
        return torch.segment_reduce(grad.contiguous(), "sum", lengths=lengths, axis=0, unsafe=True), None, None


def segment_sum(x: torch.Tensor, seg: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``out[b] = sum of x[t] with seg[t] == b`` (``[B, ...]``; 0 for empty segments); ``x`` sorted by segment."""
    if x.shape[0] == 0:
        return x.new_zeros((lengths.numel(), *x.shape[1:]))
    return _SegmentSum.apply(x, seg, lengths)


def segment_expand(x: torch.Tensor, seg: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``out[t] = x[seg[t]]`` (``[T, ...]``), whose gradient is a segment sum."""
    return _SegmentExpand.apply(x, seg, lengths)


def segment_max(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-segment maximum (no gradient), -inf for empty segments."""
    if x.shape[0] == 0:
        return x.new_full((lengths.numel(),), float("-inf"))
    return torch.segment_reduce(x.detach(), "max", lengths=lengths, unsafe=True)


# ---------------------------------------------------------------- rows of a propagation
def scipy_view(adj: torch.Tensor) -> sp.csr_matrix:
    """A CPU torch sparse CSR tensor as a scipy CSR matrix over the same arrays (no copy of the values)."""
    return sp.csr_matrix(
        (adj.values().numpy(), adj.col_indices().numpy(), adj.crow_indices().numpy()), shape=tuple(adj.shape)
    )


class _RowsProduct(torch.autograd.Function):
    """``sub @ x`` with ``sub = adj[rows]`` (scipy CSR) of a SYMMETRIC ``adj``; backward ``sub^T @ grad``
    (scipy's CSC view of the same arrays: no transpose is built)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sub: sp.csr_matrix) -> torch.Tensor:
        ctx.sub = sub
        return torch.from_numpy(sub @ x.detach().numpy())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return torch.from_numpy(ctx.sub.T @ grad.contiguous().numpy()), None


def rows_product(adj: torch.Tensor, rows: torch.Tensor, x: torch.Tensor, scipy_adj: sp.csr_matrix | None = None):
    """``(adj @ x)[rows]`` for a SYMMETRIC sparse CSR ``adj`` without the other rows: one product of the ``rows``
    of ``adj`` each way (forward and backward).  CPU: scipy on ``scipy_adj`` (``scipy_view(adj)``); elsewhere the
    rows as a torch sparse COO tensor (autograd's sparse product)."""
    if x.device.type == "cpu" and x.dtype == torch.float32:
        sub = (scipy_adj if scipy_adj is not None else scipy_view(adj))[rows.numpy()]
        return _RowsProduct.apply(x, sub) if x.requires_grad else torch.from_numpy(sub @ x.numpy())
    crow, col = adj.crow_indices().long(), adj.col_indices().long()
    sub = batch_csr(crow, col, adj.values(), rows, adj.shape[1]).to_sparse_coo()
    return torch.sparse.mm(sub, x)

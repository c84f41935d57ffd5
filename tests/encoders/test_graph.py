"""Graph helpers: the normalised adjacency against hand-computed numbers, the symmetric sparse product,
vectorised CSR row extraction."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mmlexp.encoders import normalized_adjacency
from mmlexp.encoders.graph import batch_csr, propagate, row_entries

# 3 users x 4 items; item 3 has no interaction.  Degrees: users 2, 1, 2; items 2, 2, 1, 0.
R = sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0]], dtype=np.float32))
H = 0.5  # 1/sqrt(2*2)
S = 0.7071067811865476  # 1/sqrt(1*2) = 1/sqrt(2*1)
# rows/cols: u0 u1 u2 i0 i1 i2 i3, written by hand
EXPECTED = torch.tensor(
    [
        [0, 0, 0, H, H, 0, 0],  # u0 - i0 (deg 2, 2), u0 - i1 (2, 2)
        [0, 0, 0, 0, S, 0, 0],  # u1 - i1 (1, 2)
        [0, 0, 0, H, 0, S, 0],  # u2 - i0 (2, 2), u2 - i2 (2, 1)
        [H, 0, H, 0, 0, 0, 0],
        [H, S, 0, 0, 0, 0, 0],
        [0, 0, S, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0],  # isolated item: zero row and column
    ],
    dtype=torch.float32,
)


def test_normalized_adjacency_matches_hand_computed_values():
    adj = normalized_adjacency(R)
    assert adj.layout == torch.sparse_csr and adj.shape == (7, 7) and adj.dtype == torch.float32
    assert adj.values().numel() == 2 * R.nnz
    torch.testing.assert_close(adj.to_dense(), EXPECTED)


def test_duplicate_and_non_binary_entries_count_once():
    coo = sp.coo_matrix(
        (np.array([1, 1, 3, 1, 1, 2], np.float32), (np.array([0, 0, 0, 1, 2, 2]), np.array([0, 0, 1, 1, 0, 2]))),
        shape=(3, 4),
    )
    torch.testing.assert_close(normalized_adjacency(coo).to_dense(), EXPECTED)


def test_propagate_gradient_equals_dense_autograd():
    adj = normalized_adjacency(R)
    x = torch.randn(7, 3, requires_grad=True)
    weight = torch.randn(7, 3)
    (propagate(adj, propagate(adj, x)) * weight).sum().backward()
    sparse_grad, x.grad = x.grad.clone(), None
    (EXPECTED @ (EXPECTED @ x) * weight).sum().backward()
    torch.testing.assert_close(sparse_grad, x.grad)


def test_row_entries_and_batch_csr_equal_scipy_row_slicing():
    rng = np.random.default_rng(0)
    m = sp.random(9, 13, density=0.3, format="csr", random_state=1, dtype=np.float32)
    indptr, indices = torch.from_numpy(m.indptr.astype(np.int64)), torch.from_numpy(m.indices.astype(np.int64))
    rows = torch.from_numpy(rng.integers(0, 9, 12))
    dense = batch_csr(indptr, indices, torch.from_numpy(m.data), rows, 13).to_dense()
    np.testing.assert_allclose(dense.numpy(), m[rows.numpy()].toarray())
    take = torch.full_like(rows, 2)
    seg, pos, offset, lengths = row_entries(indptr, rows, take)
    for b, r in enumerate(rows.tolist()):
        expected = m.indices[m.indptr[r] : m.indptr[r + 1]][-2:]
        assert indices[pos[seg == b]].tolist() == expected.tolist()
        assert offset[seg == b].tolist() == list(range(len(expected))) and lengths[b] == len(expected)


@pytest.mark.parametrize("rows", [[], [1]])
def test_row_entries_of_empty_batches_and_rows(rows):
    indptr = torch.tensor([0, 2, 2, 3])
    seg, pos, offset, lengths = row_entries(indptr, torch.tensor(rows, dtype=torch.long))
    assert seg.numel() == 0 and pos.numel() == 0 and lengths.tolist() == [0] * len(rows)

"""Fused kernels against plain autograd: values and gradients."""

import pytest
import torch
import torch.nn.functional as F

from mmlexp import _numba
from mmlexp.encoders import cosine
from mmlexp.encoders.cosine import cosine_gather_scores

needs_numba = pytest.mark.skipif(not _numba.AVAILABLE, reason="the CPU kernels need numba")


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_cosine_gather_scores_matches_autograd(dtype, tol):
    g = torch.Generator().manual_seed(0)
    table = torch.randn(30, 8, generator=g, dtype=dtype).requires_grad_()
    users = torch.randn(5, 8, generator=g, dtype=dtype).requires_grad_()
    items = torch.randint(30, (5, 12), generator=g)
    items[0, :3] = 7  # repeated rows must accumulate
    upstream = torch.randn(5, 12, generator=g, dtype=dtype)

    ours = cosine_gather_scores(users, table, items)
    (ours * upstream).sum().backward()
    got = ours.detach(), users.grad.clone(), table.grad.clone()
    users.grad = table.grad = None

    ref = torch.einsum("bd,bcd->bc", users, F.normalize(table[items], dim=-1))
    (ref * upstream).sum().backward()
    for a, b in zip(got, (ref.detach(), users.grad, table.grad), strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_zero_rows_give_zero_scores_and_finite_gradients():
    table = torch.zeros(3, 4, requires_grad=True)
    users = torch.ones(1, 4, requires_grad=True)
    scores = cosine_gather_scores(users, table, torch.tensor([[0, 1]]))
    scores.sum().backward()
    assert torch.equal(scores, torch.zeros(1, 2))
    assert torch.isfinite(table.grad).all() and torch.isfinite(users.grad).all()


def test_gradcheck():
    table = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    users = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    items = torch.tensor([[0, 5, 5], [1, 2, 0]])
    assert torch.autograd.gradcheck(lambda u, t: cosine_gather_scores(u, t, items), (users, table))


def test_bf16_autocast_scores_close_and_gradients_fp32():
    g = torch.Generator().manual_seed(3)
    table = torch.randn(50, 16, generator=g).requires_grad_()
    users = F.normalize(torch.randn(4, 16, generator=g), dim=-1).requires_grad_()
    items = torch.randint(50, (4, 9), generator=g)
    exact = cosine_gather_scores(users, table, items)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = cosine_gather_scores(users, table, items)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, exact.detach(), rtol=0, atol=2e-2)  # bf16: 8 bits of mantissa
    low.sum().backward()
    assert table.grad.dtype == torch.float32 and users.grad.dtype == torch.float32
    ref_users, ref_table = torch.autograd.grad(exact.sum(), (users, table))
    torch.testing.assert_close(table.grad, ref_table, rtol=0.05, atol=0.05)
    torch.testing.assert_close(users.grad, ref_users, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scatter_rows_accumulates_like_index_add(dtype):
    from mmlexp.encoders.cosine import scatter_rows_

    g = torch.Generator().manual_seed(5)
    items = torch.randint(7, (4, 6), generator=g)
    items[1, :4] = 2  # repeated rows accumulate
    weights, vecs = torch.randn(4, 6, generator=g, dtype=dtype), torch.randn(4, 3, generator=g, dtype=dtype)
    start = torch.randn(7, 3, generator=g, dtype=dtype)
    expected = start.clone()
    for b in range(4):
        for c in range(6):
            expected[items[b, c]] += weights[b, c] * vecs[b]
    torch.testing.assert_close(scatter_rows_(start.clone(), items, weights, vecs), expected)


@needs_numba
def test_entries_by_row_lists_each_rows_entries_in_order():
    g = torch.Generator().manual_seed(6)
    items = torch.randint(40, (7, 9), generator=g)  # some of the 40 rows unread, others read many times
    items[2, :5] = 11
    rows, starts, order = cosine.entries_by_row(items.numpy(), 40)
    flat = items.reshape(-1).tolist()
    assert rows.tolist() == sorted(set(flat))
    assert starts[0] == 0 and starts[-1] == len(flat)
    for k, r in enumerate(rows.tolist()):  # the flat positions of row r, ascending: the (b, c) order
        assert order[starts[k] : starts[k + 1]].tolist() == [e for e, i in enumerate(flat) if i == r]


@needs_numba
def test_kernel_table_gradient_sums_each_rows_entries():
    """vals[k] = sum over row r's entries of g * u[b], plus table[r] times the sum of their coefficients."""
    g = torch.Generator().manual_seed(7)
    table, users = torch.randn(25, 16, generator=g), torch.randn(6, 16, generator=g)
    items = torch.randint(25, (6, 11), generator=g)
    grad, coef = torch.randn(6, 11, generator=g), torch.randn(6, 11, generator=g)
    rows, starts, order = cosine.entries_by_row(items.numpy(), 25)
    vals = cosine.cosine_rows_grad(table.numpy(), grad.numpy(), coef.numpy(), users.numpy(), rows, starts, order)
    for k, r in enumerate(rows.tolist()):
        acc, scale = torch.zeros(16), torch.zeros(())
        for b in range(6):
            for c in range(11):
                if items[b, c] == r:
                    acc += grad[b, c] * users[b]
                    scale += coef[b, c]
        torch.testing.assert_close(torch.from_numpy(vals[k]), acc + scale * table[r], rtol=1e-6, atol=1e-6)

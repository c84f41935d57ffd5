"""Fused kernels against plain autograd: values and gradients."""

import pytest
import torch
import torch.nn.functional as F

from mmlexp.ops import cosine_gather_scores


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
    for a, b in zip(got, (ref.detach(), users.grad, table.grad)):
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

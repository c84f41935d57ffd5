"""BPR against a loop over (row, negative) pairs of -log(1 / (1 + exp(-(s+ - s_j)))) (§7)."""

import pytest
import torch

from mmlexp.losses import BPRLoss


def bpr_loop(scores):
    rows, cols = scores.shape
    total = 0.0
    for b in range(rows):
        for j in range(1, cols):
            total = total - torch.log(1 / (1 + torch.exp(-(scores[b, 0] - scores[b, j]))))
    return total / (rows * (cols - 1))


def random_scores(rows, cols, seed, low=-1.12, high=1.12):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(rows, cols, generator=g, dtype=torch.float64) * (high - low) + low


def value_and_grad(fn, scores):
    x = scores.clone().requires_grad_()
    value = fn(x)
    (grad,) = torch.autograd.grad(value, x)
    return value, grad


TOL = {torch.float32: dict(rtol=2e-5, atol=1e-6), torch.float64: dict(rtol=1e-10, atol=1e-12)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_neg", [1, 7, 50])
def test_matches_loop_values_and_gradients(dtype, n_neg):
    scores = random_scores(8, 1 + n_neg, seed=n_neg).to(dtype)
    value, grad = value_and_grad(BPRLoss(), scores)
    ref_value, ref_grad = value_and_grad(bpr_loop, scores.double())
    assert value.dtype == dtype
    torch.testing.assert_close(value.double(), ref_value, **TOL[dtype])
    torch.testing.assert_close(grad.double(), ref_grad, **TOL[dtype])


def test_equal_scores_give_log_two():
    assert BPRLoss()(torch.full((3, 5), 0.4)).item() == pytest.approx(0.6931471805599453, rel=1e-6)


def test_finite_in_bfloat16():
    scores = random_scores(16, 101, seed=1).bfloat16()
    value, grad = value_and_grad(BPRLoss(), scores)
    assert value.dtype == torch.bfloat16 and torch.isfinite(value) and torch.isfinite(grad).all()
    assert value.item() == pytest.approx(bpr_loop(scores.double()).item(), rel=2e-2)

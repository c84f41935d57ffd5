"""MSE against mean_b [(s_b0 - 1)^2 / 2 + sum_j s_bj^2 / 2] as a loop (§7)."""

import pytest
import torch

from mmlexp.losses import MSELoss


def mse_loop(scores):
    rows, cols = scores.shape
    total = 0.0
    for b in range(rows):
        total = total + (scores[b, 0] - 1) ** 2 / 2
        for j in range(1, cols):
            total = total + scores[b, j] ** 2 / 2
    return total / rows


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
    value, grad = value_and_grad(MSELoss(), scores)
    ref_value, ref_grad = value_and_grad(mse_loop, scores.double())
    assert value.dtype == dtype
    torch.testing.assert_close(value.double(), ref_value, **TOL[dtype])
    torch.testing.assert_close(grad.double(), ref_grad, **TOL[dtype])


def test_sums_over_negatives():
    # one row, s+ = 1, N negatives at 0.5: N * 0.125 (a sum, grows with N)
    for n in (1, 10, 100):
        scores = torch.cat([torch.ones(1, 1), torch.full((1, n), 0.5)], dim=1)
        assert MSELoss()(scores).item() == pytest.approx(0.125 * n, rel=1e-6)


def test_finite_in_bfloat16():
    scores = random_scores(16, 101, seed=1).bfloat16()
    value, grad = value_and_grad(MSELoss(), scores)
    assert value.dtype == torch.bfloat16 and torch.isfinite(value) and torch.isfinite(grad).all()
    assert value.item() == pytest.approx(mse_loop(scores.double()).item(), rel=2e-2)

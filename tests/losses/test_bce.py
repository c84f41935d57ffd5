"""BCE against -[y log sigmoid(s) + (1 - y) log(1 - sigmoid(s))] summed over all entries (§7)."""

import math

import pytest
import torch

from mmlexp.losses import BinaryCrossEntropyLoss


def bce_loop(scores):
    total = 0.0
    for b in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            p = 1 / (1 + torch.exp(-scores[b, c]))
            total = total - (torch.log(p) if c == 0 else torch.log(1 - p))
    return total


def random_scores(rows, cols, seed, low=-1.12, high=1.12):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(rows, cols, generator=g, dtype=torch.float64) * (high - low) + low


def value_and_grad(fn, scores):
    x = scores.clone().requires_grad_()
    value = fn(x)
    (grad,) = torch.autograd.grad(value, x)
    return value, grad


TOL = {torch.float32: dict(rtol=2e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_neg", [1, 7, 50])
def test_matches_loop_values_and_gradients(dtype, n_neg):
    scores = random_scores(8, 1 + n_neg, seed=n_neg).to(dtype)
    value, grad = value_and_grad(BinaryCrossEntropyLoss(), scores)
    ref_value, ref_grad = value_and_grad(bce_loop, scores.double())
    assert value.dtype == dtype
    torch.testing.assert_close(value.double(), ref_value, **TOL[dtype])
    torch.testing.assert_close(grad.double(), ref_grad, **TOL[dtype])


@pytest.mark.parametrize("rows, n_neg", [(1, 1), (4, 10), (16, 100)])
def test_sum_reduction_scales_with_entries(rows, n_neg):
    # every entry at s = 0 costs log 2, whatever its label: the SUM is B * (1+N) * log 2
    assert BinaryCrossEntropyLoss()(torch.zeros(rows, 1 + n_neg)).item() == pytest.approx(
        rows * (1 + n_neg) * math.log(2), rel=1e-6)


def test_gradient_of_an_entry_does_not_shrink_with_batch():
    # sum reduction: d L / d s_bc = sigmoid(s_bc) - y_bc, no 1/B or 1/N factor
    _, grad = value_and_grad(BinaryCrossEntropyLoss(), torch.zeros(32, 201))
    assert torch.all(grad[:, 0] == -0.5) and torch.all(grad[:, 1:] == 0.5)


def test_finite_in_bfloat16():
    scores = random_scores(16, 101, seed=1).bfloat16()
    value, grad = value_and_grad(BinaryCrossEntropyLoss(), scores)
    assert value.dtype == torch.bfloat16 and torch.isfinite(value) and torch.isfinite(grad).all()
    assert value.item() == pytest.approx(bce_loop(scores.double()).item(), rel=2e-2)

"""Softmax cross-entropy (no temperature) against -log softmax written out with exp/log (§7)."""

import pytest
import torch

from mmlexp.losses import SoftmaxCrossEntropyLoss


def softmax_loop(scores):
    total = 0.0
    for b in range(scores.shape[0]):
        denominator = sum(torch.exp(scores[b, c]) for c in range(scores.shape[1]))
        total = total - torch.log(torch.exp(scores[b, 0]) / denominator)
    return total / scores.shape[0]


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
    value, grad = value_and_grad(SoftmaxCrossEntropyLoss(), scores)
    ref_value, ref_grad = value_and_grad(softmax_loop, scores.double())
    assert value.dtype == dtype
    torch.testing.assert_close(value.double(), ref_value, **TOL[dtype])
    torch.testing.assert_close(grad.double(), ref_grad, **TOL[dtype])


def test_one_negative_is_softplus_of_the_gap():
    scores = torch.tensor([[0.3, 0.8], [0.9, -0.2]], dtype=torch.float64)
    expected = (torch.log1p(torch.exp(torch.tensor(0.5))) + torch.log1p(torch.exp(torch.tensor(-1.1)))) / 2
    torch.testing.assert_close(SoftmaxCrossEntropyLoss()(scores), expected.double())


def test_finite_in_bfloat16():
    scores = random_scores(16, 101, seed=1).bfloat16()
    value, grad = value_and_grad(SoftmaxCrossEntropyLoss(), scores)
    assert value.dtype == torch.bfloat16 and torch.isfinite(value) and torch.isfinite(grad).all()
    assert value.item() == pytest.approx(softmax_loop(scores.double()).item(), rel=2e-2)

"""InfoNCE against -log(e^{s+/tau} / (e^{s+/tau} + sum_j e^{s_j/tau})) written out (§7)."""

import math

import pytest
import torch

from mmlexp.losses import InfoNCELoss, SoftmaxCrossEntropyLoss


def infonce_loop(scores, tau):
    total = 0.0
    for b in range(scores.shape[0]):
        pos = torch.exp(scores[b, 0] / tau)
        negs = sum(torch.exp(scores[b, j] / tau) for j in range(1, scores.shape[1]))
        total = total - torch.log(pos / (pos + negs))
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
@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_matches_loop_values_and_gradients(dtype, n_neg, tau):
    scores = random_scores(8, 1 + n_neg, seed=n_neg).to(dtype)
    value, grad = value_and_grad(InfoNCELoss(tau), scores)
    ref_value, ref_grad = value_and_grad(lambda s: infonce_loop(s, tau), scores.double())
    assert value.dtype == dtype
    torch.testing.assert_close(value.double(), ref_value, **TOL[dtype])
    torch.testing.assert_close(grad.double(), ref_grad, **TOL[dtype])


@pytest.mark.parametrize("n_neg", [1, 7, 50])
def test_temperature_one_is_softmax_cross_entropy(n_neg):
    scores = random_scores(8, 1 + n_neg, seed=2)
    v1, g1 = value_and_grad(InfoNCELoss(1.0), scores)
    v2, g2 = value_and_grad(SoftmaxCrossEntropyLoss(), scores)
    torch.testing.assert_close(v1, v2, rtol=0, atol=0)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)


@pytest.mark.parametrize("tau", [0.05, 0.01])
def test_no_overflow_at_small_temperature(tau):
    scores = torch.full((4, 101), 1.2)
    scores[:, 0] = -1.2
    value, grad = value_and_grad(InfoNCELoss(tau), scores)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    a = 1.2 / tau
    assert value.item() == pytest.approx(2 * a + math.log(100 + math.exp(-2 * a)), rel=1e-5)


def test_finite_in_bfloat16():
    scores = random_scores(16, 101, seed=1).bfloat16()
    value, grad = value_and_grad(InfoNCELoss(0.05), scores)
    assert value.dtype == torch.bfloat16 and torch.isfinite(value) and torch.isfinite(grad).all()
    assert value.item() == pytest.approx(InfoNCELoss(0.05)(scores.double()).item(), rel=3e-2)


@pytest.mark.parametrize("tau, message", [(0, "tau=0.0: must be a finite number > 0"),
                                          (-0.2, "tau=-0.2: must be a finite number > 0"),
                                          (float("nan"), "tau=nan: must be a finite number > 0")])
def test_bad_temperature_is_named(tau, message):
    with pytest.raises(ValueError) as err:
        InfoNCELoss(tau)
    assert str(err.value).startswith(message)

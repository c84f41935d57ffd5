"""InfoNCE against -log(e^{s+/tau} / (e^{s+/tau} + sum_j e^{s_j/tau})) written out (§7)."""

import math

import pytest
import torch

from mmlexp.losses import InfoNCELoss, SoftmaxCrossEntropyLoss
from tests.scaffold import assert_finite_in_bfloat16, assert_matches_formula, random_scores, refused, value_and_grad


def infonce_loop(scores, tau):
    total = 0.0
    for b in range(scores.shape[0]):
        pos = torch.exp(scores[b, 0] / tau)
        negs = sum(torch.exp(scores[b, j] / tau) for j in range(1, scores.shape[1]))
        total = total - torch.log(pos / (pos + negs))
    return total / scores.shape[0]


@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_matches_loop_values_and_gradients(formula_scores, tau):
    assert_matches_formula(InfoNCELoss(tau), lambda s: infonce_loop(s, tau), formula_scores)


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
    assert_finite_in_bfloat16(InfoNCELoss(0.05), reference=InfoNCELoss(0.05), rel=3e-2)


@pytest.mark.parametrize(
    "tau, message",
    [
        (0, "tau=0.0: must be a finite number > 0"),
        (-0.2, "tau=-0.2: must be a finite number > 0"),
        (float("nan"), "tau=nan: must be a finite number > 0"),
    ],
)
def test_bad_temperature_is_named(tau, message):
    with refused(message):
        InfoNCELoss(tau)

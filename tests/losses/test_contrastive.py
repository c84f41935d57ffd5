"""Contrastive loss against 0.5 d+^2 + (1/N) sum_j 0.5 max(0, m - d_j)^2, d = ||u - v|| (§7)."""

import math

import pytest
import torch

from mmlexp.losses import ContrastiveLoss
from tests.scaffold import assert_finite_in_bfloat16, assert_matches_formula, random_scores, refused, value_and_grad


def contrastive_loop(scores, margin):
    rows, cols = scores.shape
    total = 0.0
    for b in range(rows):
        d2_pos = 2 - 2 * scores[b, 0]
        total = total + 0.5 * (d2_pos if d2_pos > 0 else 0 * d2_pos)
        for j in range(1, cols):
            d = torch.sqrt(2 - 2 * scores[b, j]) if scores[b, j] < 1 else 0 * scores[b, j]
            gap = margin - d
            total = total + 0.5 * (gap**2 if gap > 0 else 0 * gap) / (cols - 1)
    return total / rows


@pytest.mark.parametrize("margin", [1.0, 0.45, 1.9])
def test_matches_loop_values_and_gradients(dtype, n_neg, margin):
    # scores below 0.99 so every d is >= 0.14 and the EPS clamp is never reached
    scores = random_scores(8, 1 + n_neg, seed=n_neg, high=0.99).to(dtype)
    scores[:, 0] = random_scores(8, 1, seed=100 + n_neg, high=1.12)[:, 0].to(dtype)  # positives may pass 1
    # fp64 rtol 1e-9 rather than TOL's 1e-10: the loop goes through sqrt(2 - 2s)
    tol = {torch.float64: dict(rtol=1e-9, atol=1e-12)}
    assert_matches_formula(ContrastiveLoss(margin), lambda s: contrastive_loop(s, margin), scores, tol=tol)


def test_from_unit_vectors():
    g = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(4, 16, generator=g, dtype=torch.float64), dim=-1)
    v = torch.nn.functional.normalize(torch.randn(4, 6, 16, generator=g, dtype=torch.float64), dim=-1)
    scores = torch.einsum("bd,bcd->bc", u, v)
    d = (u.unsqueeze(1) - v).norm(dim=-1)
    expected = (0.5 * d[:, 0] ** 2 + (0.5 * torch.clamp(1.2 - d[:, 1:], min=0) ** 2).mean(1)).mean()
    torch.testing.assert_close(ContrastiveLoss(1.2)(scores), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_gradient_stays_finite_at_zero_distance(dtype):
    # a negative identical to the user (s = 1, d = 0), one just below, one above (dropout): sqrt'(0) = inf
    scores = torch.tensor([[0.5, 1.0, 1.0 - 1e-7, 1.1, 0.3]], dtype=dtype)
    value, grad = value_and_grad(ContrastiveLoss(1.0), scores)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    assert grad.abs().max().item() <= 1.0 / math.sqrt(1e-6)
    # d ~ 0 costs m^2 / 2 per negative, up to m * sqrt(EPS); s = 0.3 (d = 1.18 > m) costs nothing:
    # 0.5 * (2 - 2 * 0.5) + (0.5 + 0.5 + 0.5 + 0) / 4
    assert value.item() == pytest.approx(0.875, abs=5e-3)


def test_hand_computed_with_the_clamp():
    # s+ = 0.5 -> 0.5 * (2 - 1) = 0.5 ; negs: s = 1 (d = 0) -> 0.5 ; s = -1 (d = 2) -> 0 ; mean 0.25
    value = ContrastiveLoss(1.0)(torch.tensor([[0.5, 1.0, -1.0]], dtype=torch.float64))
    assert value.item() == pytest.approx(0.75, abs=2e-3)


def test_finite_in_bfloat16():
    assert_finite_in_bfloat16(ContrastiveLoss(), reference=ContrastiveLoss(), rel=3e-2)


@pytest.mark.parametrize(
    "margin, message",
    [(-0.1, "margin=-0.1: must be a number in [0, 2]"), (2.5, "margin=2.5: must be a number in [0, 2] (a distance")],
)
def test_bad_margin_is_named(margin, message):
    with refused(message):
        ContrastiveLoss(margin)

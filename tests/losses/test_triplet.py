"""Triplet loss against max(0, d+^2 - d-^2 + m) with d^2 = ||u - v||^2 of unit vectors (§7)."""

import pytest
import torch

from mmlexp.losses import PairwiseHingeLoss, TripletLoss
from tests.scaffold import assert_finite_in_bfloat16, assert_matches_formula, random_scores, refused, value_and_grad


def triplet_loop(scores, margin):
    rows, cols = scores.shape
    total = 0.0
    for b in range(rows):
        d_pos = 2 - 2 * scores[b, 0]
        for j in range(1, cols):
            gap = d_pos - (2 - 2 * scores[b, j]) + margin
            total = total + (gap if gap > 0 else 0 * gap)
    return total / (rows * (cols - 1))


@pytest.mark.parametrize("margin", [0.2, 1.0, 3.5])
def test_matches_loop_values_and_gradients(formula_scores, margin):
    assert_matches_formula(TripletLoss(margin), lambda s: triplet_loop(s, margin), formula_scores)


@pytest.mark.parametrize("margin", [0.2, 1.0, 1.8])
def test_on_unit_vectors_is_twice_a_pairwise_hinge_with_half_the_margin(margin):
    scores = random_scores(8, 31, seed=3)
    v, g = value_and_grad(TripletLoss(margin), scores)
    form = 2 * torch.clamp(scores[:, 1:] - scores[:, :1] + margin / 2, min=0).mean()
    torch.testing.assert_close(v, form, rtol=1e-12, atol=1e-14)
    v_h, g_h = value_and_grad(PairwiseHingeLoss(margin / 2), scores)
    torch.testing.assert_close(v, 2 * v_h, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g, 2 * g_h, rtol=1e-12, atol=1e-14)


def test_distances_from_unit_vectors():
    # build real unit vectors and check d^2 = 2 - 2 cos
    g = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(4, 16, generator=g, dtype=torch.float64), dim=-1)
    v = torch.nn.functional.normalize(torch.randn(4, 6, 16, generator=g, dtype=torch.float64), dim=-1)
    scores = torch.einsum("bd,bcd->bc", u, v)
    d2 = (u.unsqueeze(1) - v).pow(2).sum(-1)
    expected = torch.clamp(d2[:, :1] - d2[:, 1:] + 0.5, min=0).mean()
    torch.testing.assert_close(TripletLoss(0.5)(scores), expected, rtol=1e-12, atol=1e-14)


def test_finite_in_bfloat16():
    assert_finite_in_bfloat16(TripletLoss())


@pytest.mark.parametrize(
    "margin, message",
    [
        (-0.1, "margin=-0.1: must be a number in [0, 4]"),
        (4.5, "margin=4.5: must be a number in [0, 4] (a squared distance"),
    ],
)
def test_bad_margin_is_named(margin, message):
    with refused(message):
        TripletLoss(margin)

"""Pairwise hinge against mean_{b,j} max(0, m + s_bj - s_b0) as a loop (§7)."""

import pytest
import torch

from mmlexp.losses import PairwiseHingeLoss
from tests.scaffold import assert_finite_in_bfloat16, assert_matches_formula, refused


def hinge_loop(scores, margin):
    rows, cols = scores.shape
    total = 0.0
    for b in range(rows):
        for j in range(1, cols):
            gap = margin + scores[b, j] - scores[b, 0]
            total = total + (gap if gap > 0 else 0 * gap)
    return total / (rows * (cols - 1))


@pytest.mark.parametrize("margin", [1.0, 0.9, 0.2, -0.3])
def test_matches_loop_values_and_gradients(formula_scores, margin):
    assert_matches_formula(PairwiseHingeLoss(margin), lambda s: hinge_loop(s, margin), formula_scores)


def test_hand_computed():
    # row 0: m=0.9, s+=0.5, negs 0.2, -0.6: 0.9+0.2-0.5=0.6, 0.9-0.6-0.5=-0.2->0 ; row 1: s+=1.1, negs 0.3, 0.1: 0.1, 0
    scores = torch.tensor([[0.5, 0.2, -0.6], [1.1, 0.3, 0.1]])
    assert PairwiseHingeLoss(0.9)(scores).item() == pytest.approx(0.7 / 4, rel=1e-6)


def test_default_margin_is_one_and_yaml_carries_reczoo_point_nine(make_cfg):
    assert PairwiseHingeLoss().margin == 1.0
    assert make_cfg("loss=hinge").loss.margin == 0.9


def test_finite_in_bfloat16():
    assert_finite_in_bfloat16(PairwiseHingeLoss())


@pytest.mark.parametrize(
    "margin, message",
    [
        (1.5, "margin=1.5: must be a number in [-1, 1] (cosine scores)"),
        (-2, "margin=-2.0: must be a number in [-1, 1]"),
        (float("nan"), "margin=nan: must be a number in [-1, 1]"),
    ],
)
def test_bad_margin_is_named(margin, message):
    with refused(message):
        PairwiseHingeLoss(margin)

"""BPR against a loop over (row, negative) pairs of -log(1 / (1 + exp(-(s+ - s_j)))) (§7)."""

import pytest
import torch

from mmlexp.losses import BPRLoss
from tests.scaffold import assert_finite_in_bfloat16, assert_matches_formula


def bpr_loop(scores):
    rows, cols = scores.shape
    total = 0.0
    for b in range(rows):
        for j in range(1, cols):
            total = total - torch.log(1 / (1 + torch.exp(-(scores[b, 0] - scores[b, j]))))
    return total / (rows * (cols - 1))


def test_matches_loop_values_and_gradients(formula_scores):
    assert_matches_formula(BPRLoss(), bpr_loop, formula_scores)


def test_equal_scores_give_log_two():
    assert BPRLoss()(torch.full((3, 5), 0.4)).item() == pytest.approx(0.6931471805599453, rel=1e-6)


def test_finite_in_bfloat16():
    assert_finite_in_bfloat16(BPRLoss(), reference=bpr_loop)

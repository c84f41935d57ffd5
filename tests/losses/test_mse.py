"""MSE against mean_b [(s_b0 - 1)^2 / 2 + sum_j s_bj^2 / 2] as a loop (§7)."""

import pytest
import torch

from mmlexp.losses import MSELoss
from tests.scaffold import assert_finite_in_bfloat16, assert_matches_formula


def mse_loop(scores):
    rows, cols = scores.shape
    total = 0.0
    for b in range(rows):
        total = total + (scores[b, 0] - 1) ** 2 / 2
        for j in range(1, cols):
            total = total + scores[b, j] ** 2 / 2
    return total / rows


def test_matches_loop_values_and_gradients(formula_scores):
    assert_matches_formula(MSELoss(), mse_loop, formula_scores)


def test_sums_over_negatives():
    # one row, s+ = 1, N negatives at 0.5: N * 0.125 (a sum, grows with N)
    for n in (1, 10, 100):
        scores = torch.cat([torch.ones(1, 1), torch.full((1, n), 0.5)], dim=1)
        assert MSELoss()(scores).item() == pytest.approx(0.125 * n, rel=1e-6)


def test_finite_in_bfloat16():
    assert_finite_in_bfloat16(MSELoss(), reference=mse_loop)

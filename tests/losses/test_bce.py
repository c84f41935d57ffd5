"""BCE against -[y log sigmoid(s) + (1 - y) log(1 - sigmoid(s))] summed over all entries (§7)."""

import math

import pytest
import torch

from mmlexp.losses import BinaryCrossEntropyLoss
from tests.scaffold import assert_finite_in_bfloat16, assert_matches_formula, value_and_grad


def bce_loop(scores):
    total = 0.0
    for b in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            p = 1 / (1 + torch.exp(-scores[b, c]))
            total = total - (torch.log(p) if c == 0 else torch.log(1 - p))
    return total


def test_matches_loop_values_and_gradients(formula_scores):
    # a sum over B * (1 + N) entries: float32 rounding needs a wider absolute tolerance
    tol = {torch.float32: dict(rtol=2e-5, atol=1e-5)}
    assert_matches_formula(BinaryCrossEntropyLoss(), bce_loop, formula_scores, tol=tol)


@pytest.mark.parametrize("rows, n_neg", [(1, 1), (4, 10), (16, 100)])
def test_sum_reduction_scales_with_entries(rows, n_neg):
    # every entry at s = 0 costs log 2, whatever its label: the SUM is B * (1+N) * log 2
    assert BinaryCrossEntropyLoss()(torch.zeros(rows, 1 + n_neg)).item() == pytest.approx(
        rows * (1 + n_neg) * math.log(2), rel=1e-6
    )


def test_gradient_of_an_entry_does_not_shrink_with_batch():
    # sum reduction: d L / d s_bc = sigmoid(s_bc) - y_bc, no 1/B or 1/N factor
    _, grad = value_and_grad(BinaryCrossEntropyLoss(), torch.zeros(32, 201))
    assert torch.all(grad[:, 0] == -0.5) and torch.all(grad[:, 1:] == 0.5)


def test_finite_in_bfloat16():
    assert_finite_in_bfloat16(BinaryCrossEntropyLoss(), reference=bce_loop)

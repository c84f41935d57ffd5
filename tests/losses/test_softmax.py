"""Softmax cross-entropy (no temperature) against -log softmax written out with exp/log (§7)."""

import torch

from mmlexp.losses import SoftmaxCrossEntropyLoss
from tests.scaffold import assert_finite_in_bfloat16, assert_matches_formula


def softmax_loop(scores):
    total = 0.0
    for b in range(scores.shape[0]):
        denominator = sum(torch.exp(scores[b, c]) for c in range(scores.shape[1]))
        total = total - torch.log(torch.exp(scores[b, 0]) / denominator)
    return total / scores.shape[0]


def test_matches_loop_values_and_gradients(formula_scores):
    assert_matches_formula(SoftmaxCrossEntropyLoss(), softmax_loop, formula_scores)


def test_one_negative_is_softplus_of_the_gap():
    scores = torch.tensor([[0.3, 0.8], [0.9, -0.2]], dtype=torch.float64)
    expected = (torch.log1p(torch.exp(torch.tensor(0.5))) + torch.log1p(torch.exp(torch.tensor(-1.1)))) / 2
    torch.testing.assert_close(SoftmaxCrossEntropyLoss()(scores), expected.double())


def test_finite_in_bfloat16():
    assert_finite_in_bfloat16(SoftmaxCrossEntropyLoss(), reference=softmax_loop)

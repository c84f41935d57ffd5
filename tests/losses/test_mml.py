"""MML and CCL against explicit loops over rows, negatives and margins (paper-reference §1-§2)."""

import pytest
import torch

from mmlexp import _numba
from mmlexp.losses import CosineContrastiveLoss, MultiMarginLoss
from tests.scaffold import assert_finite_in_bfloat16, refused


def mml_loop(scores, margins, weights, neg_weight, pos_weight=1.0):
    """Direct transcription of eq. 7 with Python loops (sum over margins, mean over negatives)."""
    total = 0.0
    rows, cols = scores.shape
    for b in range(rows):
        pos = max(0.0, 1.0 - float(scores[b, 0])) * pos_weight
        neg = 0.0
        for j in range(1, cols):
            for m, w in zip(margins, weights, strict=True):
                neg += w * max(0.0, float(scores[b, j]) - m)
        total += pos + neg_weight * neg / (cols - 1)
    return total / rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_neg", [1, 7, 100])
def test_mml_matches_loop(dtype, n_neg):
    g = torch.Generator().manual_seed(n_neg)
    scores = (torch.rand(9, 1 + n_neg, generator=g, dtype=torch.float64) * 2.2 - 1.1).to(dtype)
    margins, weights = [0.6, 0.7, 0.8, 0.9], [0.05, 0.15, 0.2, 0.6]
    loss = MultiMarginLoss(margins, weights, neg_weight=400.0)(scores)
    expected = mml_loop(scores.double(), margins, weights, 400.0)
    assert loss.dtype == dtype
    assert loss.item() == pytest.approx(expected, rel=1e-5 if dtype == torch.float32 else 1e-12)


def test_mml_hand_computed():
    # row 0: pos 0.5 -> 0.5 ; negs 0.95, 0.75 -> margins .7/.8/.9, weights .1/.15/.75:
    #   0.95: .1*.25 + .15*.15 + .75*.05 = 0.085 ; 0.75: .1*.05 = 0.005 ; mean 0.045, *700 = 31.5
    # row 1: pos 1.0 -> 0 ; negs 0.1, -0.3 -> 0.  L = (0.5 + 31.5 + 0) / 2 = 16.0
    scores = torch.tensor([[0.5, 0.95, 0.75], [1.0, 0.1, -0.3]])
    assert MultiMarginLoss()(scores).item() == pytest.approx(16.0, rel=1e-6)


def test_mml_gradient_is_piecewise_slope():
    # d l / d s_neg = w_neg / (N B) * sum_{k: m_k < s} w_k ; d l / d s_pos = -1/B when s_pos < 1
    scores = torch.tensor([[0.2, 0.85, 0.65, 0.95]], requires_grad=True)
    MultiMarginLoss()(scores).backward()
    expected = torch.tensor([[-1.0, 700 / 3 * 0.25, 0.0, 700 / 3 * 1.0]])
    torch.testing.assert_close(scores.grad, expected)


def test_positive_hinge_is_clamped_above_one():
    # dropout can push s+ above 1: max(0, 1 - s) gives 0, not a negative loss
    scores = torch.tensor([[1.1, -1.0]])
    assert MultiMarginLoss()(scores).item() == 0.0
    assert CosineContrastiveLoss()(scores).item() == 0.0


def test_one_margin_weight_one_equals_ccl():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(16, 51, generator=g) * 2 - 1
    mml = MultiMarginLoss([0.4], [1.0], neg_weight=150.0)(scores)
    ccl = CosineContrastiveLoss(margin=0.4, neg_weight=150.0)(scores)
    torch.testing.assert_close(mml, ccl)


def test_ccl_without_weight_sums_negatives():
    scores = torch.tensor([[0.8, 0.95, 0.92, 0.1]])
    # (1 - 0.8) + (0.05 + 0.02 + 0)
    assert CosineContrastiveLoss(margin=0.9, neg_weight=None)(scores).item() == pytest.approx(0.27, rel=1e-6)
    # with w = 150: 0.2 + 150 * 0.07 / 3
    assert CosineContrastiveLoss(margin=0.9, neg_weight=150)(scores).item() == pytest.approx(0.2 + 3.5, rel=1e-6)


def test_finite_in_bfloat16():
    assert_finite_in_bfloat16(MultiMarginLoss())


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(margins=[0.9, 0.8], weights=[0.5, 0.5]), "margins=[0.9, 0.8]: margins must be strictly increasing"),
        (dict(margins=[0.7, 1.5], weights=[0.5, 0.5]), "margins=[0.7, 1.5]: every margin must lie in [-1, 1]"),
        (dict(margins=[0.7, 0.8], weights=[0.5, -0.1]), "weights=-0.1: must be a finite number >= 0"),
        (dict(margins=[0.7, 0.8], weights=[0.5, float("nan")]), "weights=nan"),
        (dict(margins=[0.7, 0.8], weights=[1.0]), "need one weight per margin"),
        (dict(neg_weight=-3), "neg_weight=-3.0"),
    ],
)
def test_bad_hyper_parameters_are_named(kwargs, fragment):
    with refused(fragment, anywhere=True):
        MultiMarginLoss(**kwargs)


@pytest.mark.skipif(not _numba.AVAILABLE, reason="numba is not installed: only the PyTorch expression runs")
@pytest.mark.parametrize(
    "loss_fn",
    [
        MultiMarginLoss(),
        MultiMarginLoss([0.5], [1.0], neg_weight=3.0),
        CosineContrastiveLoss(),
        CosineContrastiveLoss(neg_weight=None),
    ],
    ids=["mml", "mml-one-margin", "ccl", "ccl-sum"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hand_written_pass_equals_the_torch_expression(loss_fn, dtype, monkeypatch):
    """The CPU kernel (loss and gradient in one pass) against the PyTorch expression it replaces, with scores
    exactly on margins and on 1 (relu's zero slope at a kink) and a NaN (it must reach the loss)."""
    g = torch.Generator().manual_seed(5)
    scores = (torch.rand(12, 41, generator=g, dtype=torch.float64) * 2.2 - 1.1).to(dtype)
    scores[0, :4] = torch.tensor([1.0, 0.7, 0.8, 0.9], dtype=dtype)
    upstream = 1.7
    results = []
    for kernels in (True, False):
        monkeypatch.setattr(_numba, "AVAILABLE", kernels)
        s = scores.clone().requires_grad_()
        loss = loss_fn(s)
        (loss * upstream).backward()
        results.append((loss.detach(), s.grad))
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(results[0][0], results[1][0], rtol=tol, atol=tol)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=tol, atol=tol)
    monkeypatch.setattr(_numba, "AVAILABLE", True)
    scores[3, 5] = float("nan")
    assert torch.isnan(loss_fn(scores))

"""Pairwise hinge against mean_{b,j} max(0, m + s_bj - s_b0) as a loop (§7)."""

import pytest
import torch

from mmlexp.losses import PairwiseHingeLoss


def hinge_loop(scores, margin):
    rows, cols = scores.shape
    total = 0.0
    for b in range(rows):
        for j in range(1, cols):
            gap = margin + scores[b, j] - scores[b, 0]
            total = total + (gap if gap > 0 else 0 * gap)
    return total / (rows * (cols - 1))


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
@pytest.mark.parametrize("margin", [1.0, 0.9, 0.2, -0.3])
def test_matches_loop_values_and_gradients(dtype, n_neg, margin):
    scores = random_scores(8, 1 + n_neg, seed=n_neg).to(dtype)
    value, grad = value_and_grad(PairwiseHingeLoss(margin), scores)
    ref_value, ref_grad = value_and_grad(lambda s: hinge_loop(s, margin), scores.double())
    assert value.dtype == dtype
    torch.testing.assert_close(value.double(), ref_value, **TOL[dtype])
    torch.testing.assert_close(grad.double(), ref_grad, **TOL[dtype])


def test_hand_computed():
    # row 0: m=0.9, s+=0.5, negs 0.2, -0.6: 0.9+0.2-0.5=0.6, 0.9-0.6-0.5=-0.2->0 ; row 1: s+=1.1, negs 0.3, 0.1: 0.1, 0
    scores = torch.tensor([[0.5, 0.2, -0.6], [1.1, 0.3, 0.1]])
    assert PairwiseHingeLoss(0.9)(scores).item() == pytest.approx(0.7 / 4, rel=1e-6)


def test_default_margin_is_one_and_yaml_carries_reczoo_point_nine(make_cfg):
    assert PairwiseHingeLoss().margin == 1.0
    assert make_cfg("loss=hinge").loss.margin == 0.9


def test_finite_in_bfloat16():
    scores = random_scores(16, 101, seed=1).bfloat16()
    value, grad = value_and_grad(PairwiseHingeLoss(), scores)
    assert value.dtype == torch.bfloat16 and torch.isfinite(value) and torch.isfinite(grad).all()


@pytest.mark.parametrize("margin, message", [(1.5, "margin=1.5: must be a number in [-1, 1] (cosine scores)"),
                                             (-2, "margin=-2.0: must be a number in [-1, 1]"),
                                             (float("nan"), "margin=nan: must be a number in [-1, 1]")])
def test_bad_margin_is_named(margin, message):
    with pytest.raises(ValueError) as err:
        PairwiseHingeLoss(margin)
    assert str(err.value).startswith(message)

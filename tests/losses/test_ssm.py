"""SSM against -log softmax written out with exp/log, and against in-batch cross-entropy (§6)."""

import math

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from mmlexp.losses import SampledSoftmaxLoss
from tests.scaffold import assert_finite_in_bfloat16, assert_matches_formula, random_scores, refused, value_and_grad


def ssm_loop(scores, tau, reduction="sum"):
    total = 0.0
    for b in range(scores.shape[0]):
        denominator = sum(torch.exp(scores[b, c] / tau) for c in range(scores.shape[1]))
        total = total - torch.log(torch.exp(scores[b, 0] / tau) / denominator)
    return total if reduction == "sum" else total / scores.shape[0]


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_matches_loop_values_and_gradients(formula_scores, reduction):
    tol = {torch.float32: dict(rtol=2e-5, atol=1e-5)}  # reduction=sum: values of tens, so a wider fp32 atol
    assert_matches_formula(
        SampledSoftmaxLoss(0.12, reduction), lambda s: ssm_loop(s, 0.12, reduction), formula_scores, tol=tol
    )


def test_default_reduction_is_the_reference_sum():
    scores = random_scores(16, 11, seed=0)
    total = SampledSoftmaxLoss(0.14)(scores)
    torch.testing.assert_close(total, 16 * SampledSoftmaxLoss(0.14, "mean")(scores), rtol=1e-12, atol=0)


@pytest.mark.parametrize("batch", [2, 9, 32])
def test_in_batch_negatives_equal_cross_entropy_on_the_diagonal(batch):
    g = torch.Generator().manual_seed(batch)
    c = (torch.rand(batch, batch, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    tau = 0.12
    eye = torch.eye(batch, dtype=torch.bool)
    s = torch.cat([c.diagonal().unsqueeze(1), c[~eye].view(batch, batch - 1)], dim=1)  # [B, 1 + (B-1)]
    ours = SampledSoftmaxLoss(tau)(s)
    (g_ours,) = torch.autograd.grad(ours, c)
    reference = F.cross_entropy(c / tau, torch.arange(batch), reduction="sum")
    (g_ref,) = torch.autograd.grad(reference, c)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=0)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("tau", [0.05, 0.01])
def test_no_overflow_at_small_temperature(tau):
    scores = torch.full((8, 101), 1.2)
    scores[:, 0] = torch.tensor([1.2, -1.2] * 4)
    value, grad = value_and_grad(SampledSoftmaxLoss(tau), scores)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    # rows with s+ = -1.2: -log(e^-a / (e^-a + 100 e^a)) = log(1 + 100 e^{2a}), a = 1.2 / tau
    a = 1.2 / tau
    expected = 4 * math.log(101) + 4 * (2 * a + math.log(100 + math.exp(-2 * a)))
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_finite_in_bfloat16():
    assert_finite_in_bfloat16(SampledSoftmaxLoss(0.05), reference=SampledSoftmaxLoss(0.05), rel=3e-2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(tau=0), "tau=0.0: must be a finite number > 0"),
        (dict(tau=-1), "tau=-1.0: must be a finite number > 0"),
        (dict(reduction="none"), "reduction='none': must be one of sum, mean"),
    ],
)
def test_bad_hyper_parameters_are_named(kwargs, message):
    with refused(message):
        SampledSoftmaxLoss(**kwargs)


@pytest.mark.parametrize("dataset, tau", [("gowalla", 0.12), ("yelp2018", 0.14)])
def test_dataset_picks_the_paper_temperature(make_cfg, dataset, tau):
    cfg = make_cfg("loss=ssm", f"dataset={dataset}")
    assert cfg.loss.tau == tau and cfg.loss.reduction == "sum"
    assert instantiate(cfg.loss, _execution_whitelist_=["mmlexp.*"]).tau == tau

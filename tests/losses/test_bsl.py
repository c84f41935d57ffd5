"""BSL against an explicit loop over rows, groups and negatives (paper-reference §5)."""

import math

import pytest
import torch
from hydra.utils import instantiate

from mmlexp.losses import BilateralSoftmaxLoss
from tests.scaffold import assert_finite_in_bfloat16, assert_matches_formula, random_scores, refused, value_and_grad


def bsl_loop(scores, tau1, tau2, mode, users=None):
    """Direct transcription of the official BSL forward with plain exp/log, one row at a time."""
    rows, cols = scores.shape
    n = cols - 1
    total = 0.0
    for b in range(rows):
        if mode == "multi":
            group = [c for c in range(rows) if users is None and c == b or users is not None and users[c] == users[b]]
            pos = sum(torch.exp(scores[c, 0] / tau1) for c in group) / len(group)
            neg = (sum(torch.exp(scores[b, j] / tau1) for j in range(1, cols)) / n) ** tau2
        elif mode == "single":
            pos = torch.exp(scores[b, 0] / tau1)
            neg = sum(torch.exp(scores[b, j] / tau1) for j in range(1, cols)) / n
        else:
            pos = torch.exp(scores[b, 0] / tau1)
            neg = sum(torch.exp(scores[b, j] / tau1) for j in range(1, cols)) ** tau2
        total = total - torch.log(pos / neg)
    return total / rows


REPEATED = torch.tensor([3, 1, 3, 0, 1, 3, 7, 2])  # groups {0,2,5}, {1,4}, {3}, {6}, {7}


@pytest.mark.parametrize("mode", ["multi", "single", "reweight"])
def test_matches_loop_values_and_gradients(formula_scores, mode):
    tau1, tau2 = 0.11, 1.10
    assert_matches_formula(
        BilateralSoftmaxLoss(tau1, tau2, mode), lambda s, u: bsl_loop(s, tau1, tau2, mode, u), formula_scores, REPEATED
    )


def test_multi_hand_loop_over_groups_couples_rows_of_a_user():
    # the positive of row 0 enters the loss of rows 2 and 5 too (same user 3), not of the others
    scores = random_scores(8, 6, seed=1)
    _, grad = value_and_grad(BilateralSoftmaxLoss(0.08, 1.22, "multi"), scores, REPEATED)
    _, grad_single = value_and_grad(BilateralSoftmaxLoss(0.08, 1.22, "multi"), scores, torch.arange(8))
    assert not torch.allclose(grad[:, 0], grad_single[:, 0])
    # rows alone in their group (users 0, 7, 2) see the same positive gradient in both
    for b in (3, 6, 7):
        torch.testing.assert_close(grad[b], grad_single[b])


@pytest.mark.parametrize("batch, n_users", [(256, 7), (1024, 300)])
def test_multi_matches_the_reference_user_mask_on_large_batches(batch, n_users):
    # the official code's form: mask = (u == u^T), P = (mask @ exp(s+/tau1)) / mask.sum(1)
    g = torch.Generator().manual_seed(batch)
    scores = random_scores(batch, 21, seed=batch)
    users = torch.randint(n_users, (batch,), generator=g)
    mask = (users.view(-1, 1) == users.view(1, -1)).double()
    tau1, tau2 = 0.08, 1.22
    pos = (mask * torch.exp(scores[:, 0] / tau1).unsqueeze(0)).sum(1) / mask.sum(1)
    neg = torch.exp(scores[:, 1:] / tau1).mean(1) ** tau2
    expected = -torch.log(pos / neg).mean()
    torch.testing.assert_close(BilateralSoftmaxLoss(tau1, tau2)(scores, users), expected, rtol=1e-12, atol=0)
    value32 = BilateralSoftmaxLoss(tau1, tau2)(scores.float(), users)
    assert value32.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("n_neg", [1, 7, 50])
def test_multi_without_users_is_one_group_per_row(n_neg):
    scores = random_scores(8, 1 + n_neg, seed=3)
    loss = BilateralSoftmaxLoss(0.08, 1.22, "multi")
    torch.testing.assert_close(loss(scores), bsl_loop(scores, 0.08, 1.22, "multi", None), rtol=1e-12, atol=0)
    torch.testing.assert_close(loss(scores), loss(scores, torch.arange(8)), rtol=1e-12, atol=0)


@pytest.mark.parametrize("n_neg", [1, 7, 50])
def test_multi_with_distinct_users_is_single_with_tau2_on_the_negatives(n_neg):
    # Official code: single has no tau2, so multi == single exactly when tau2 = 1; in general multi
    # with distinct users is single with tau2 on the log-mean of the negatives.
    scores = random_scores(8, 1 + n_neg, seed=4)
    users = torch.tensor([5, 0, 9, 2, 7, 1, 3, 8])
    torch.testing.assert_close(
        BilateralSoftmaxLoss(0.1, 1.0, "multi")(scores, users),
        BilateralSoftmaxLoss(0.1, 1.0, "single")(scores, users),
        rtol=1e-12,
        atol=0,
    )
    tau1, tau2 = 0.1, 1.3
    expected = (
        sum(-scores[b, 0] / tau1 + tau2 * torch.log(torch.exp(scores[b, 1:] / tau1).mean()) for b in range(8)) / 8
    )
    torch.testing.assert_close(BilateralSoftmaxLoss(tau1, tau2, "multi")(scores, users), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("n_neg", [1, 7, 50])
def test_single_and_reweight_differ_by_tau2_log_n_at_tau2_one(n_neg):
    # reweight - single = (tau2 - 1) * log sum_j e_bj + log N: the constant tau2 * log N when tau2 = 1,
    # so both give the same gradient there.
    for seed in range(3):
        scores = random_scores(8, 1 + n_neg, seed=seed)
        single, g_single = value_and_grad(BilateralSoftmaxLoss(0.08, 1.0, "single"), scores)
        reweight, g_reweight = value_and_grad(BilateralSoftmaxLoss(0.08, 1.0, "reweight"), scores)
        assert (reweight - single).item() == pytest.approx(math.log(n_neg), abs=1e-12)
        torch.testing.assert_close(g_single, g_reweight, rtol=1e-12, atol=1e-15)


def test_single_ignores_tau2():
    scores = random_scores(8, 11, seed=5)
    torch.testing.assert_close(
        BilateralSoftmaxLoss(0.08, 1.22, "single")(scores),
        BilateralSoftmaxLoss(0.08, 1.0, "single")(scores),
        rtol=0,
        atol=0,
    )


@pytest.mark.parametrize("tau1", [0.05, 0.01])
@pytest.mark.parametrize("mode", ["multi", "single", "reweight"])
def test_no_overflow_at_small_temperature(tau1, mode):
    # |s| = 1.2: exp(1.2 / 0.01) = exp(120) overflows float32; log-sum-exp does not
    scores = torch.full((8, 101), -1.2)
    scores[::2] = 1.2
    scores[:, 0] = torch.tensor([1.2, -1.2] * 4)
    value, grad = value_and_grad(BilateralSoftmaxLoss(tau1, 1.22, mode), scores, REPEATED)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    # the float64 loop still fits (exp(120) ~ 1e52); rows 1 and 4 form a group whose positives both
    # sit 240 below the batch max: a per-group shift keeps them finite where a global one would not
    torch.testing.assert_close(
        value.double(), bsl_loop(scores.double(), tau1, 1.22, mode, REPEATED), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("mode", ["multi", "single", "reweight"])
def test_finite_in_bfloat16(mode):
    loss = BilateralSoftmaxLoss(0.05, 1.22, mode)
    assert_finite_in_bfloat16(loss, torch.arange(16) % 5, reference=loss, rel=3e-2, abs=3e-2, seed=6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(tau1=0), "tau1=0.0: must be a finite number > 0"),
        (dict(tau1=-0.1), "tau1=-0.1: must be a finite number > 0"),
        (dict(tau1=float("inf")), "tau1=inf: must be a finite number > 0"),
        (dict(tau1="abc"), "tau1='abc': must be a finite number > 0"),
        (dict(tau2=-0.5), "tau2=-0.5: must be a finite number >= 0"),
        (dict(mode="dual"), "mode='dual': must be one of multi, single, reweight"),
    ],
)
def test_bad_hyper_parameters_are_named(kwargs, message):
    with refused(message):
        BilateralSoftmaxLoss(**kwargs)


def test_users_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match=r"users: shape \(3,\) must be \[B\]"):
        BilateralSoftmaxLoss()(torch.zeros(4, 3), torch.arange(3))


@pytest.mark.parametrize(
    "dataset, tau1, tau2, l2",
    [("gowalla", 0.08, 1.22, 1e-9), ("yelp2018", 0.11, 1.10, 1e-3)],
)
def test_dataset_picks_the_paper_setting(make_cfg, dataset, tau1, tau2, l2):
    cfg = make_cfg("loss=bsl", f"dataset={dataset}")
    assert (cfg.loss.tau1, cfg.loss.tau2, cfg.loss.mode) == (tau1, tau2, "multi")
    assert cfg.trainer.batch_size == 1024 and cfg.trainer.l2 == l2
    loss = instantiate(cfg.loss, _execution_whitelist_=["mmlexp.*"])
    assert isinstance(loss, BilateralSoftmaxLoss) and loss.tau1 == tau1

"""The training loop: the step equals the reference's autograd formulation; selection, stopping, seeds."""

import numpy as np
import pytest
import torch

from mmlexp import _numba
from mmlexp.encoders import MatrixFactorization
from mmlexp.losses import MultiMarginLoss
from mmlexp.optim import TableAdam, make_optimizer
from mmlexp.report.selection import stop_epoch
from mmlexp.train import TrainSettings, fit, start_gradients_, train_step
from tests.reference import FixedSampler, reference_step


def test_step_equals_reference_loss_with_l2_in_the_graph():
    """A generic optimiser's step (L2 written into the gradient before clipping) == autograd on
    loss + (l2/2)||E||^2."""
    torch.manual_seed(0)
    a = MatrixFactorization(6, 9, dim=4, dropout=0.0, init_std=0.5)
    b = MatrixFactorization(6, 9, dim=4, dropout=0.0, init_std=0.5)
    b.load_state_dict(a.state_dict())
    users, items = torch.tensor([0, 1, 5]), torch.tensor([2, 3, 8])
    negatives = torch.tensor([[0, 1], [4, 4], [7, 2]])
    loss_fn, l2, clip = MultiMarginLoss(neg_weight=3.0), 0.3, 0.05  # clip small enough to act
    settings = TrainSettings(l2=l2, clip_grad_norm=clip)
    opt_a = torch.optim.SGD(a.parameters(), lr=1.0)
    train_step(a, loss_fn, FixedSampler(negatives), opt_a, users, items, settings)

    reference_step(b, loss_fn, torch.optim.SGD(b.parameters(), lr=1.0), users, items, negatives, l2, clip)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)


def test_start_gradients_sets_the_l2_gradient_and_reuses_buffers():
    model = MatrixFactorization(3, 4, dim=2, init_std=1.0)
    model.extra = torch.nn.Parameter(torch.ones(2))  # not an embedding table: starts at zero
    start_gradients_(model, 0.5)
    torch.testing.assert_close(model.user_table.grad, 0.5 * model.user_table.detach())
    assert torch.equal(model.extra.grad, torch.zeros(2))
    buffer = model.item_table.grad
    start_gradients_(model, 0.0)
    assert model.item_table.grad is buffer and torch.equal(buffer, torch.zeros(4, 2))


@pytest.mark.parametrize("kernels", [True, False])  # numba (sparse rows, implicit L2) / torch fused Adam
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("clip", [0.05, 1e6])  # acting and idle
def test_table_adam_steps_equal_reference_adam_on_loss_plus_l2(clip, dtype, kernels, monkeypatch):
    """Several steps (repeated users and items: rows accumulate) with TableAdam == plain Adam on autograd of
    loss + (l2/2)||E||^2 with clip_grad_norm_, on both of its paths (fp64 too)."""
    monkeypatch.setattr(_numba, "AVAILABLE", kernels and _numba.AVAILABLE)
    torch.manual_seed(1)
    a = MatrixFactorization(6, 9, dim=4, dropout=0.0, init_std=0.5).to(dtype)
    b = MatrixFactorization(6, 9, dim=4, dropout=0.0, init_std=0.5).to(dtype)
    b.load_state_dict(a.state_dict())
    loss_fn, l2 = MultiMarginLoss(neg_weight=3.0), 0.3
    opt_a = make_optimizer(a, 0.05)
    assert isinstance(opt_a, TableAdam) and a.sparse_grad == _numba.AVAILABLE
    opt_b = torch.optim.Adam(b.parameters(), lr=0.05, foreach=False)
    settings = TrainSettings(l2=l2, clip_grad_norm=clip)
    for step in range(4):
        users, items = torch.tensor([0, 1, 1, 5]), torch.tensor([2, 3, 8, step])
        negatives = torch.randint(9, (4, 3))
        train_step(a, loss_fn, FixedSampler(negatives), opt_a, users, items, settings)
        reference_step(b, loss_fn, opt_b, users, items, negatives, l2, clip)
        opt_a.materialize()  # rows the step deferred (mmlexp.optim.deferred_rows), brought up to date
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
        if kernels and _numba.AVAILABLE:
            assert a.item_table.grad.is_sparse and a.user_table.grad.is_sparse


def tiny_fit(evaluate, **overrides):
    torch.manual_seed(0)
    model = MatrixFactorization(4, 10, dim=8)
    gen = torch.Generator().manual_seed(0)
    users, items = torch.arange(4).repeat(5), torch.arange(20) % 10
    settings = TrainSettings(batch_size=8, progress=False, **overrides)
    from mmlexp.samplers import UniformSampler

    sampler = UniformSampler(3, 10, generator=gen)
    return fit(model, MultiMarginLoss(), sampler, make_optimizer(model, 1e-2), users, items, evaluate, settings, gen)


def scripted(values):
    it = iter(values)
    return lambda: {"recall@20": next(it)}


def test_best_epoch_is_kept_and_early_stopping_counts_evaluations():
    result = tiny_fit(scripted([0.1, 0.3, 0.2, 0.25, 0.29, 0.9]), epochs=6, patience=3)
    assert result.best_epoch == 2 and result.best_metrics == {"recall@20": 0.3}
    assert result.stopped_early and len(result.history) == 5


@pytest.mark.parametrize("patience", [1, 2, 3])
def test_the_reports_replay_of_early_stopping_is_the_trainers_rule(patience):
    """``report.selection.stop_epoch`` replays early stopping on a logged curve (the report's replays, the
    estimate of an early-stopping run): on any curve, ties included, it stops where ``fit`` stops."""
    rng = np.random.default_rng(patience)
    for _ in range(12):
        scores = [float(v) for v in rng.choice([0.1, 0.2, 0.3], size=8)]  # few values: many ties
        result = tiny_fit(scripted(scores), epochs=8, patience=patience)
        stop = stop_epoch(scores, patience)
        assert len(result.history) == (stop or 8) and result.stopped_early == (stop is not None), scores


def test_no_early_stop_without_patience_and_eval_every():
    result = tiny_fit(scripted([0.1, 0.2, 0.05]), epochs=6, eval_every=2)
    assert [("recall@20" in r) for r in result.history] == [False, True, False, True, False, True]
    assert result.best_epoch == 4 and not result.stopped_early


def test_max_steps_stops_inside_an_epoch_and_still_evaluates():
    result = tiny_fit(scripted([0.5, 0.6]), epochs=50, max_steps=4)  # 3 batches per epoch
    assert result.steps == 4 and len(result.history) == 2 and result.best_epoch == 2


def test_same_seed_same_weights():
    a = tiny_fit(scripted([0.1, 0.2]), epochs=2)
    b = tiny_fit(scripted([0.1, 0.2]), epochs=2)
    for k in a.best_state:
        assert torch.equal(a.best_state[k], b.best_state[k])


@pytest.mark.parametrize("steps", [1, 3])
def test_training_changes_the_tables(steps):
    result = tiny_fit(scripted([0.1, 0.2]), epochs=2, max_steps=steps)
    assert result.steps == steps

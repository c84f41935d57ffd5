"""The training loop: the step equals the reference's autograd formulation; selection, stopping, seeds."""

import pytest
import torch

from mmlexp.encoders import MatrixFactorization
from mmlexp.losses import MultiMarginLoss
from mmlexp.train import TrainSettings, add_l2_gradient_, fit, make_optimizer, train_step


class FixedSampler:
    def __init__(self, negatives):
        self.negatives = negatives

    def sample(self, users, items, model=None):
        return self.negatives


def test_step_equals_reference_loss_with_l2_in_the_graph():
    """Our step (L2 added to the gradient before clipping) == autograd on loss + (l2/2)||E||^2."""
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

    scores = b(users, items, negatives)
    total = loss_fn(scores) + l2 / 2 * sum(t.pow(2).sum() for t in b.embedding_tables())
    total.backward()
    torch.nn.utils.clip_grad_norm_(b.parameters(), clip)
    with torch.no_grad():
        for p in b.parameters():
            p -= p.grad
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)


def test_l2_gradient_on_tables_without_grad():
    table = torch.nn.Parameter(torch.ones(2, 2))
    add_l2_gradient_([table], 0.5)
    torch.testing.assert_close(table.grad, torch.full((2, 2), 0.5))


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

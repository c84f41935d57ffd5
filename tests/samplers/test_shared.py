"""Shared sampler: one [1, N] uniform set per batch; the encoder scores it like the expanded [B, N]."""

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from mmlexp.encoders import MatrixFactorization
from mmlexp.losses import MultiMarginLoss
from mmlexp.samplers import SharedSampler
from mmlexp.train import TrainSettings, make_optimizer, train_step


def test_shape_dtype_and_range():
    s = SharedSampler(13, n_items=8, generator=torch.Generator().manual_seed(0))
    neg = s.sample(torch.tensor([0, 1, 1]), torch.tensor([0, 5, 5]))
    assert neg.shape == (1, 13) and neg.dtype == torch.int64
    assert neg.min() >= 0 and neg.max() < 8


def test_uniform_distribution_chi_square():
    s = SharedSampler(40_000, n_items=10, generator=torch.Generator().manual_seed(1))
    counts = np.bincount(s.sample(torch.zeros(256, dtype=torch.long)).flatten().numpy(), minlength=10)
    # 40,000 draws over 10 items: a uniform sampler passes at the 0.1% level
    assert chisquare(counts).pvalue > 1e-3


def test_each_batch_draws_a_fresh_set_and_seeds_reproduce():
    s = SharedSampler(20, n_items=1000, generator=torch.Generator().manual_seed(7))
    a, b = s.sample(torch.arange(4)), s.sample(torch.arange(4))
    assert not torch.equal(a, b)
    again = SharedSampler(20, n_items=1000, generator=torch.Generator().manual_seed(7))
    assert torch.equal(again.sample(torch.arange(4)), a) and torch.equal(again.sample(torch.arange(4)), b)


def test_shared_scores_equal_the_expanded_per_row_scores():
    torch.manual_seed(0)
    model = MatrixFactorization(50, 30, init_std=1.0).eval()
    users, items = torch.arange(6), torch.arange(6) + 3
    neg = SharedSampler(9, n_items=30, generator=torch.Generator().manual_seed(0)).sample(users, items)
    torch.testing.assert_close(model(users, items, neg), model(users, items, neg.expand(6, -1)))


@pytest.mark.parametrize("n", [0, -4, 2.5])
def test_bad_num_negatives(n):
    with pytest.raises(ValueError, match=f"num_negatives={n}: must be an integer >= 1"):
        SharedSampler(n, n_items=8)


class Recorder:
    def __init__(self, inner):
        self.inner, self.negatives = inner, None

    def sample(self, users, items, model=None):
        self.negatives = self.inner.sample(users, items, model)
        return self.negatives


def test_train_step_runs_and_updates_exactly_the_touched_rows():
    torch.manual_seed(0)
    model = MatrixFactorization(50, 30)
    s = Recorder(SharedSampler(7, n_items=30, generator=torch.Generator().manual_seed(0)))
    users, items = torch.randint(50, (8,)), torch.randint(30, (8,))
    before_u, before_i = model.user_table.detach().clone(), model.item_table.detach().clone()
    loss_fn = MultiMarginLoss(margins=[-1.0], weights=[1.0], neg_weight=1.0)  # every negative active
    loss = train_step(model, loss_fn, s, make_optimizer(model, 1e-2), users, items,
                      TrainSettings(l2=0.0, progress=False))
    assert torch.isfinite(loss) and s.negatives.shape == (1, 7)
    changed_items = set(torch.nonzero((model.item_table != before_i).any(1)).flatten().tolist())
    assert changed_items == set(items.tolist()) | set(s.negatives.flatten().tolist())
    changed_users = set(torch.nonzero((model.user_table != before_u).any(1)).flatten().tolist())
    assert changed_users == set(users.tolist())

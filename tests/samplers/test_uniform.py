"""Uniform sampler: shape, range, empirical distribution, exclusion, reproducibility."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.stats import chisquare

from mmlexp.encoders import MatrixFactorization
from mmlexp.losses import MultiMarginLoss
from mmlexp.samplers import UniformSampler
from mmlexp.train import TrainSettings, make_optimizer, train_step


def tiny_train():
    # user 0 likes items {0, 1, 2}; user 1 likes {5}; 8 items
    rows, cols = [0, 0, 0, 1], [0, 1, 2, 5]
    return sp.csr_matrix((np.ones(4, np.float32), (rows, cols)), shape=(2, 8))


def test_shape_dtype_and_range():
    s = UniformSampler(13, n_items=8, generator=torch.Generator().manual_seed(0))
    neg = s.sample(torch.tensor([0, 1, 1]), torch.tensor([0, 5, 5]))
    assert neg.shape == (3, 13) and neg.dtype == torch.int64
    assert neg.min() >= 0 and neg.max() < 8


def test_uniform_distribution_chi_square():
    s = UniformSampler(1000, n_items=8, generator=torch.Generator().manual_seed(1))
    counts = np.bincount(s.sample(torch.zeros(40, dtype=torch.long)).flatten().numpy(), minlength=8)
    # 40,000 draws over 8 items: a uniform sampler passes at the 0.1% level
    assert chisquare(counts).pvalue > 1e-3


def test_positives_are_kept_by_default():
    s = UniformSampler(2000, n_items=8, train=tiny_train(), generator=torch.Generator().manual_seed(2))
    neg = s.sample(torch.tensor([0]))
    assert set(neg.flatten().tolist()) == set(range(8))


def test_exclusion_excludes_and_stays_uniform_on_the_rest():
    s = UniformSampler(3000, n_items=8, train=tiny_train(), exclude_positives=True,
                       generator=torch.Generator().manual_seed(3))
    neg = s.sample(torch.tensor([0, 1]))
    assert not set(neg[0].tolist()) & {0, 1, 2}
    assert 5 not in set(neg[1].tolist())
    counts = np.bincount(neg[0].numpy(), minlength=8)[3:]
    assert chisquare(counts).pvalue > 1e-3


def test_same_seed_same_draws():
    a = UniformSampler(5, n_items=100, generator=torch.Generator().manual_seed(7)).sample(torch.zeros(4, dtype=torch.long))
    b = UniformSampler(5, n_items=100, generator=torch.Generator().manual_seed(7)).sample(torch.zeros(4, dtype=torch.long))
    assert torch.equal(a, b)


@pytest.mark.parametrize("n", [0, -4, 2.5])
def test_bad_num_negatives(n):
    with pytest.raises(ValueError, match=f"num_negatives={n}: must be an integer >= 1"):
        UniformSampler(n, n_items=8)


def test_exclusion_needs_something_left():
    full = sp.csr_matrix(np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="every item as a positive"):
        UniformSampler(2, n_items=3, train=full, exclude_positives=True)


class Recorder:
    def __init__(self, inner):
        self.inner, self.negatives = inner, None

    def sample(self, users, items, model=None):
        self.negatives = self.inner.sample(users, items, model)
        return self.negatives


def test_train_step_runs_and_updates_exactly_the_touched_rows():
    torch.manual_seed(0)
    model = MatrixFactorization(50, 30)
    s = Recorder(UniformSampler(7, n_items=30, generator=torch.Generator().manual_seed(0)))
    users, items = torch.randint(50, (8,)), torch.randint(30, (8,))
    before_u, before_i = model.user_table.detach().clone(), model.item_table.detach().clone()
    loss_fn = MultiMarginLoss(margins=[-1.0], weights=[1.0], neg_weight=1.0)  # every negative active
    loss = train_step(model, loss_fn, s, make_optimizer(model, 1e-2), users, items,
                      TrainSettings(l2=0.0, progress=False))
    assert torch.isfinite(loss) and s.negatives.shape == (8, 7)
    changed_items = set(torch.nonzero((model.item_table != before_i).any(1)).flatten().tolist())
    assert changed_items == set(items.tolist()) | set(s.negatives.flatten().tolist())
    changed_users = set(torch.nonzero((model.user_table != before_u).any(1)).flatten().tolist())
    assert changed_users == set(users.tolist())

"""Popularity sampler: P(item) ~ pop**beta (chi-square), zero-popularity items, alias table, shapes, errors."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.stats import chisquare

from mmlexp.encoders import MatrixFactorization
from mmlexp.losses import MultiMarginLoss
from mmlexp.samplers import PopularitySampler
from mmlexp.samplers.popularity import alias_table
from mmlexp.train import TrainSettings, make_optimizer, train_step

# item i has POP[i] training users; item 0 was never interacted with
POP = np.array([0, 1, 2, 3, 5, 8, 13, 1, 4, 6, 2, 9])


def train_with_popularity(pop=POP):
    rows = np.concatenate([np.arange(p) for p in pop])
    cols = np.repeat(np.arange(len(pop)), pop)
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(int(pop.max()), len(pop)))


def sampler(n=13, seed=0, **kw):
    return PopularitySampler(n, n_items=len(POP), train=train_with_popularity(),
                             generator=torch.Generator().manual_seed(seed), **kw)


def test_shape_dtype_and_range():
    neg = sampler().sample(torch.tensor([0, 1, 1]), torch.tensor([0, 5, 5]))
    assert neg.shape == (3, 13) and neg.dtype == torch.int64
    assert neg.min() >= 0 and neg.max() < len(POP)


def test_shared_gives_one_row():
    neg = sampler(shared=True).sample(torch.arange(5), torch.arange(5))
    assert neg.shape == (1, 13) and neg.dtype == torch.int64


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("shared", [False, True])
def test_distribution_is_popularity_to_the_beta_chi_square(beta, shared):
    s = sampler(1000 if not shared else 40_000, seed=int(beta * 10) + shared, beta=beta, shared=shared)
    draws = s.sample(torch.zeros(40, dtype=torch.long)).flatten().numpy()
    assert draws.size == 40_000
    counts = np.bincount(draws, minlength=len(POP))
    weights = POP.astype(float) ** beta          # 0 ** 0 = 1: beta = 0 is uniform over every item
    np.testing.assert_allclose(s.probs, weights / weights.sum())
    support = weights > 0
    assert counts[~support].sum() == 0           # beta > 0: item 0 (no training user) is never drawn
    expected = weights[support] / weights[support].sum() * counts.sum()
    # 40,000 draws over 11-12 items: the intended distribution passes at the 0.1% level
    assert chisquare(counts[support], expected).pvalue > 1e-3


def test_chi_square_detects_the_wrong_beta():
    """The test above can fail: draws with beta=1 are far from the beta=0.5 distribution."""
    counts = np.bincount(sampler(1000, beta=1.0).sample(torch.zeros(40, dtype=torch.long)).flatten().numpy(),
                         minlength=len(POP))[1:]
    wrong = POP[1:] ** 0.5
    assert chisquare(counts, wrong / wrong.sum() * counts.sum()).pvalue < 1e-3


def test_alias_table_encodes_the_probabilities_exactly():
    rng = np.random.default_rng(0)
    p = rng.zipf(1.3, 2000).astype(float)
    p /= p.sum()
    accept, alias = alias_table(p)
    m = p.size
    implied = accept / m
    np.add.at(implied, alias, (1 - accept) / m)
    np.testing.assert_allclose(implied, p, rtol=1e-9, atol=1e-15)


def test_same_seed_same_draws():
    a = sampler(seed=7).sample(torch.zeros(4, dtype=torch.long))
    b = sampler(seed=7).sample(torch.zeros(4, dtype=torch.long))
    c = sampler(seed=8).sample(torch.zeros(4, dtype=torch.long))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("beta", [-0.5, -1, float("nan"), float("inf")])
def test_bad_beta(beta):
    with pytest.raises(ValueError, match=rf"^beta={beta}: must be a finite number >= 0"):
        sampler(beta=beta)


def test_needs_the_training_matrix_of_the_right_width():
    with pytest.raises(ValueError, match=r"^train=None: the popularity sampler needs the training matrix"):
        PopularitySampler(3, n_items=12)
    with pytest.raises(ValueError, match=r"^n_items=20: the training matrix has 12 item columns"):
        PopularitySampler(3, n_items=20, train=train_with_popularity())


def test_nothing_to_sample_without_any_popular_item():
    empty = sp.csr_matrix((3, 5), dtype=np.float32)
    with pytest.raises(ValueError, match="every item has zero training popularity"):
        PopularitySampler(3, n_items=5, train=empty)
    assert PopularitySampler(3, n_items=5, train=empty, beta=0).sample(torch.arange(2)).shape == (2, 3)


@pytest.mark.parametrize("n", [0, -4, 2.5])
def test_bad_num_negatives(n):
    with pytest.raises(ValueError, match=f"num_negatives={n}: must be an integer >= 1"):
        sampler(n)


class Recorder:
    def __init__(self, inner):
        self.inner, self.negatives = inner, None

    def sample(self, users, items, model=None):
        self.negatives = self.inner.sample(users, items, model)
        return self.negatives


@pytest.mark.parametrize("shared", [False, True])
def test_train_step_runs_and_updates_exactly_the_touched_rows(shared):
    torch.manual_seed(0)
    model = MatrixFactorization(50, 30)
    pop = np.random.default_rng(0).integers(0, 6, size=30)
    s = Recorder(PopularitySampler(7, n_items=30, train=train_with_popularity(pop), shared=shared,
                                   generator=torch.Generator().manual_seed(0)))
    users, items = torch.randint(50, (8,)), torch.randint(30, (8,))
    before_u, before_i = model.user_table.detach().clone(), model.item_table.detach().clone()
    # margin -1: every negative is active, so every sampled row must receive a gradient
    loss_fn = MultiMarginLoss(margins=[-1.0], weights=[1.0], neg_weight=1.0)
    loss = train_step(model, loss_fn, s, make_optimizer(model, 1e-2), users, items,
                      TrainSettings(l2=0.0, progress=False))
    assert torch.isfinite(loss)
    changed_items = set(torch.nonzero((model.item_table != before_i).any(1)).flatten().tolist())
    assert changed_items == set(items.tolist()) | set(s.negatives.flatten().tolist())
    changed_users = set(torch.nonzero((model.user_table != before_u).any(1)).flatten().tolist())
    assert changed_users == set(users.tolist())
    assert not set(s.negatives.flatten().tolist()) & set(np.flatnonzero(pop == 0).tolist())

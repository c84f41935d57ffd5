"""Popularity sampler: P(item) ~ pop**beta (chi-square), zero-popularity items, alias table, shapes, errors."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mmlexp.samplers import PopularitySampler
from mmlexp.samplers.popularity import alias_table
from tests.scaffold import assert_chi_square_fits, assert_chi_square_rejects, counts, train_step_touches_exactly

# item i has POP[i] training users; item 0 was never interacted with
POP = np.array([0, 1, 2, 3, 5, 8, 13, 1, 4, 6, 2, 9])


def train_with_popularity(pop=POP):
    rows = np.concatenate([np.arange(p) for p in pop])
    cols = np.repeat(np.arange(len(pop)), pop)
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(int(pop.max()), len(pop)))


def sampler(n=13, seed=0, **kw):
    return PopularitySampler(
        n, n_items=len(POP), train=train_with_popularity(), generator=torch.Generator().manual_seed(seed), **kw
    )


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
    drawn = counts(draws, len(POP))
    weights = POP.astype(float) ** beta  # 0 ** 0 = 1: beta = 0 is uniform over every item
    np.testing.assert_allclose(s.probs, weights / weights.sum())
    support = weights > 0
    assert drawn[~support].sum() == 0  # beta > 0: item 0 (no training user) is never drawn
    expected = weights[support] / weights[support].sum() * drawn.sum()
    # 40,000 draws over 11-12 items: the intended distribution passes at the 0.1% level
    assert_chi_square_fits(drawn[support], expected)


def test_chi_square_detects_the_wrong_beta():
    """The test above can fail: draws with beta=1 are far from the beta=0.5 distribution."""
    drawn = counts(sampler(1000, beta=1.0).sample(torch.zeros(40, dtype=torch.long)), len(POP))[1:]
    wrong = POP[1:] ** 0.5
    assert_chi_square_rejects(drawn, wrong / wrong.sum() * drawn.sum())


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


@pytest.mark.parametrize("shared", [False, True])
def test_train_step_runs_and_updates_exactly_the_touched_rows(shared):
    pop = np.random.default_rng(0).integers(0, 6, size=30)
    s = PopularitySampler(
        7, n_items=30, train=train_with_popularity(pop), shared=shared, generator=torch.Generator().manual_seed(0)
    )
    step = train_step_touches_exactly(s)
    assert not set(step.negatives.flatten().tolist()) & set(np.flatnonzero(pop == 0).tolist())

"""Uniform sampler: shape, range, empirical distribution, exclusion, reproducibility."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mmlexp.samplers import UniformSampler
from tests.scaffold import assert_chi_square_fits, counts, train_step_touches_exactly


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
    # 40,000 draws over 8 items: a uniform sampler passes at the 0.1% level
    assert_chi_square_fits(counts(s.sample(torch.zeros(40, dtype=torch.long)), 8))


def test_positives_are_kept_by_default():
    s = UniformSampler(2000, n_items=8, train=tiny_train(), generator=torch.Generator().manual_seed(2))
    neg = s.sample(torch.tensor([0]))
    assert set(neg.flatten().tolist()) == set(range(8))


def test_exclusion_excludes_and_stays_uniform_on_the_rest():
    s = UniformSampler(
        3000, n_items=8, train=tiny_train(), exclude_positives=True, generator=torch.Generator().manual_seed(3)
    )
    neg = s.sample(torch.tensor([0, 1]))
    assert not set(neg[0].tolist()) & {0, 1, 2}
    assert 5 not in set(neg[1].tolist())
    assert_chi_square_fits(counts(neg[0], 8)[3:])


def test_same_seed_same_draws():
    users = torch.zeros(4, dtype=torch.long)
    a = UniformSampler(5, n_items=100, generator=torch.Generator().manual_seed(7)).sample(users)
    b = UniformSampler(5, n_items=100, generator=torch.Generator().manual_seed(7)).sample(users)
    assert torch.equal(a, b)


@pytest.mark.parametrize("n", [0, -4, 2.5])
def test_bad_num_negatives(n):
    with pytest.raises(ValueError, match=f"num_negatives={n}: must be an integer >= 1"):
        UniformSampler(n, n_items=8)


def test_exclusion_needs_something_left():
    full = sp.csr_matrix(np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="every item as a positive"):
        UniformSampler(2, n_items=3, train=full, exclude_positives=True)


def test_train_step_runs_and_updates_exactly_the_touched_rows():
    step = train_step_touches_exactly(UniformSampler(7, n_items=30, generator=torch.Generator().manual_seed(0)))
    assert step.negatives.shape == (8, 7)

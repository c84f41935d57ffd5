"""Shared sampler: one [1, N] uniform set per batch; the encoder scores it like the expanded [B, N]."""

import pytest
import torch

from mmlexp.encoders import MatrixFactorization
from mmlexp.samplers import SharedSampler
from tests.scaffold import assert_chi_square_fits, counts, train_step_touches_exactly


def test_shape_dtype_and_range():
    s = SharedSampler(13, n_items=8, generator=torch.Generator().manual_seed(0))
    neg = s.sample(torch.tensor([0, 1, 1]), torch.tensor([0, 5, 5]))
    assert neg.shape == (1, 13) and neg.dtype == torch.int64
    assert neg.min() >= 0 and neg.max() < 8


def test_uniform_distribution_chi_square():
    s = SharedSampler(40_000, n_items=10, generator=torch.Generator().manual_seed(1))
    # 40,000 draws over 10 items: a uniform sampler passes at the 0.1% level
    assert_chi_square_fits(counts(s.sample(torch.zeros(256, dtype=torch.long)), 10))


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


def test_train_step_runs_and_updates_exactly_the_touched_rows():
    step = train_step_touches_exactly(SharedSampler(7, n_items=30, generator=torch.Generator().manual_seed(0)))
    assert step.negatives.shape == (1, 7)

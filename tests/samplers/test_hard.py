"""Hard-negative miner: the kept items are the top-N of a uniform pool scored without gradient."""

import pytest
import torch
import torch.nn.functional as F

from mmlexp.encoders import MatrixFactorization
from mmlexp.samplers import HardNegativeSampler
from tests.scaffold import assert_chi_square_fits, assert_chi_square_rejects, counts, train_step_touches_exactly


class IdScore:
    """Fake model: the score of an item is its id; records the pools it was asked to score."""

    def __init__(self):
        self.pools = []

    def score(self, users, items):
        assert not torch.is_grad_enabled()
        assert items.shape[0] == users.shape[0]
        self.pools.append(items.clone())
        return items.float()


def sampler(n=10, pool_size=40, n_items=20, seed=0, **kw):
    return HardNegativeSampler(
        n, n_items=n_items, pool_size=pool_size, generator=torch.Generator().manual_seed(seed), **kw
    )


def test_shape_dtype_range_and_one_scoring_call():
    model = IdScore()
    neg = sampler().sample(torch.arange(6), torch.zeros(6, dtype=torch.long), model)
    assert neg.shape == (6, 10) and neg.dtype == torch.int64
    assert neg.min() >= 0 and neg.max() < 20
    assert len(model.pools) == 1 and model.pools[0].shape == (6, 40)


def test_kept_items_are_exactly_the_top_n_of_the_pool():
    model = IdScore()
    neg = sampler(n=10, pool_size=40, n_items=1000).sample(torch.arange(32), torch.zeros(32, dtype=torch.long), model)
    pool = model.pools[0]
    for b in range(32):  # direct per-row sort: the 10 largest ids of the row's pool (as a multiset)
        assert sorted(neg[b].tolist()) == sorted(pool[b].tolist())[-10:]


def test_pool_is_uniform_chi_square():
    model = IdScore()
    sampler(n=1, pool_size=1000, n_items=10, seed=1).sample(torch.arange(40), None, model)
    # 40,000 pool draws over 10 items: a uniform draw passes at the 0.1% level
    assert_chi_square_fits(counts(model.pools[0], 10))


def test_pool_as_large_as_n_is_plain_uniform_sampling():
    neg = sampler(n=1000, pool_size=1000, n_items=10, seed=2).sample(torch.arange(40), None, IdScore())
    assert_chi_square_fits(counts(neg, 10))


def test_mining_shifts_the_distribution_to_high_scores():
    neg = sampler(n=10, pool_size=40, n_items=20).sample(torch.arange(500), None, IdScore())
    drawn = counts(neg, 20)
    assert drawn[:5].sum() < 0.01 * drawn.sum()
    assert_chi_square_rejects(drawn)


def test_mask_positive_never_keeps_the_row_positive():
    pos = torch.full((64,), 19)  # the best-scored item of the fake model
    neg = sampler(mask_positive=True).sample(torch.arange(64), pos, IdScore())
    assert not (neg == 19).any()
    assert (sampler().sample(torch.arange(64), pos, IdScore()) == 19).any()  # kept without masking


def test_same_seed_same_draws():
    a = sampler(seed=7).sample(torch.arange(4), None, IdScore())
    b = sampler(seed=7).sample(torch.arange(4), None, IdScore())
    c = sampler(seed=8).sample(torch.arange(4), None, IdScore())
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_default_pool_is_four_times_n():
    assert HardNegativeSampler(25, n_items=100).pool_size == 100


def test_pool_smaller_than_n_is_refused():
    with pytest.raises(ValueError, match=r"^pool_size=5: must be an integer >= num_negatives \(10\)"):
        sampler(n=10, pool_size=5)


def test_model_is_required():
    with pytest.raises(ValueError, match="needs the model"):
        sampler().sample(torch.arange(3), torch.arange(3))


@pytest.mark.parametrize("n", [0, -4, 2.5])
def test_bad_num_negatives(n):
    with pytest.raises(ValueError, match=f"num_negatives={n}: must be an integer >= 1"):
        HardNegativeSampler(n, n_items=8)


def test_train_step_runs_mines_with_the_model_and_updates_exactly_the_touched_rows():
    torch.manual_seed(0)
    model = MatrixFactorization(50, 30, init_std=1.0)
    pools, score = [], model.score
    model.score = lambda u, i: (pools.append(i.clone()), score(u, i))[1]  # record the pool it mines from
    s = HardNegativeSampler(7, n_items=30, pool_size=20, generator=torch.Generator().manual_seed(0))
    step = train_step_touches_exactly(s, model=model)
    assert step.negatives.shape == (8, 7) and len(pools) == 1
    # the kept negatives are the 7 best of the pool under the pre-step model (eval-mode cosines)
    users = F.normalize(step.user_table[step.users], dim=-1)
    cos = lambda idx: torch.einsum("bd,bcd->bc", users, F.normalize(step.item_table[idx], dim=-1))  # noqa: E731
    kept, pool = cos(step.negatives).sort(dim=1).values, cos(pools[0]).sort(dim=1).values[:, -7:]
    torch.testing.assert_close(kept, pool)

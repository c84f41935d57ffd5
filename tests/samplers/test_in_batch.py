"""In-batch sampler: row b gets the other rows' positives in order; duplicate masking; errors."""

import numpy as np
import pytest
import torch

from mmlexp.samplers import InBatchSampler
from tests.scaffold import assert_chi_square_fits, counts, train_step_touches_exactly


def expected_negatives(pos):
    pos = pos.tolist()
    return torch.tensor([[p for j, p in enumerate(pos) if j != b] for b in range(len(pos))])


@pytest.mark.parametrize("batch", [2, 3, 7, 64])
def test_row_b_gets_the_other_positives_in_order(batch):
    pos = torch.randperm(100, generator=torch.Generator().manual_seed(batch))[:batch]
    neg = InBatchSampler(n_items=100).sample(torch.arange(batch), pos)
    assert neg.shape == (batch, batch - 1) and neg.dtype == torch.int64
    assert torch.equal(neg, expected_negatives(pos))


def test_num_negatives_is_ignored_and_n_follows_the_batch():
    s = InBatchSampler(17, n_items=10)
    assert s.sample(torch.arange(5), torch.arange(5)).shape == (5, 4)
    assert s.sample(torch.arange(3), torch.arange(3)).shape == (3, 2)  # a smaller last batch


def test_duplicates_are_kept_by_default():
    pos = torch.tensor([3, 1, 3, 3, 0])
    neg = InBatchSampler(n_items=5).sample(torch.arange(5), pos)
    assert torch.equal(neg, expected_negatives(pos))
    assert (neg == pos.unsqueeze(1)).sum() == 6  # rows 0, 2, 3 each see item 3 twice


def test_masking_replaces_exactly_the_duplicates():
    pos = torch.tensor([3, 1, 3, 3, 0, 1, 7])
    s = InBatchSampler(n_items=8, mask_duplicates=True, generator=torch.Generator().manual_seed(0))
    neg = s.sample(torch.arange(7), pos)
    plain = expected_negatives(pos)
    dup = plain == pos.unsqueeze(1)
    assert dup.any()
    assert torch.equal(neg[~dup], plain[~dup])  # other columns untouched
    assert not (neg == pos.unsqueeze(1)).any()  # never the row's own positive
    assert neg.min() >= 0 and neg.max() < 8


def test_masked_replacements_are_uniform_over_the_other_items():
    # every row has positive 3, so all 200 x 199 columns are replaced: uniform over the 11 items != 3
    s = InBatchSampler(n_items=12, mask_duplicates=True, generator=torch.Generator().manual_seed(1))
    drawn = counts(s.sample(torch.arange(200), torch.full((200,), 3)), 12)
    assert drawn[3] == 0
    # 39,800 draws over 11 items: a uniform draw passes at the 0.1% level
    assert_chi_square_fits(np.delete(drawn, 3))


def test_same_seed_same_masking():
    pos = torch.tensor([2, 2, 2, 5, 2])

    def draw(seed):
        sampler = InBatchSampler(n_items=50, mask_duplicates=True, generator=torch.Generator().manual_seed(seed))
        return sampler.sample(torch.arange(5), pos)

    assert torch.equal(draw(4), draw(4)) and not torch.equal(draw(4), draw(5))


def test_batch_of_one_is_refused():
    with pytest.raises(ValueError, match=r"^in_batch needs batch_size >= 2, got 1"):
        InBatchSampler(n_items=10).sample(torch.tensor([0]), torch.tensor([4]))


def test_bad_options():
    with pytest.raises(ValueError, match=r"^n_items=1: mask_duplicates=true needs n_items >= 2"):
        InBatchSampler(n_items=1, mask_duplicates=True)
    with pytest.raises(ValueError, match=r"^mask_duplicates=yes: must be true or false"):
        InBatchSampler(n_items=5, mask_duplicates="yes")
    with pytest.raises(ValueError, match=r"^num_negatives=0: must be an integer >= 1"):
        InBatchSampler(0, n_items=5)


@pytest.mark.parametrize("mask", [False, True])
def test_train_step_runs_and_updates_exactly_the_touched_rows(mask):
    s = InBatchSampler(100, n_items=30, mask_duplicates=mask, generator=torch.Generator().manual_seed(0))
    step = train_step_touches_exactly(s, items=torch.tensor([0, 1, 1, 2, 3, 5, 8, 13]))
    assert step.negatives.shape == (8, 7)

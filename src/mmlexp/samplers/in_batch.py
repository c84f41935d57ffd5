"""In-batch negative sampler (SSM default, neg_dist=0; paper-reference §6).

The negatives of row b are the positives of every OTHER row of the batch, in batch order:

    negatives[b] = [pos_items[b'] for b' in 0..B-1 if b' != b]        ->  LongTensor[B, B-1]

so N = B - 1 and ``num_negatives`` is accepted (for a uniform constructor) but IGNORED; the config
therefore leaves it out.  The last batch of an epoch may be smaller: N follows the batch.  As in SSM,
duplicates are NOT masked by default: if another row has the same item as row b's positive (popular
items, or the same user twice), that column is a copy of the positive.

Masking rule (``mask_duplicates=True``): every column of row b whose item equals row b's positive is
replaced by an item drawn uniformly from the ``n_items - 1`` items different from that positive (an
independent draw per replaced entry; the draw may coincide with another in-batch positive).  Other
positives of the same user are not looked up (that would need the training matrix).

Sampling weights: with in-batch negatives an item appears as a negative in proportion to how often it
is a training positive, i.e. in proportion to its popularity (``popularity`` sampler with beta=1).
A batch of one row has no other positives: ``sample`` raises ValueError.
"""

import scipy.sparse as sp
import torch

from mmlexp.samplers.base import NegativeSampler
from mmlexp.samplers.uniform import check_int


def others_index(batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[B, B-1]``: row b lists 0..B-1 without b, in order."""
    cols = torch.arange(batch - 1, device=device).unsqueeze(0)
    rows = torch.arange(batch, device=device).unsqueeze(1)
    return cols + (cols >= rows).long()


class InBatchSampler(NegativeSampler):
    scores_model = False
    supports_graph_capture = True

    def item_draws(self, batch: int) -> int:
        """B positives; the negatives are the batch's own positives (no further rows)."""
        return batch

    def __init__(
        self,
        num_negatives: int | None = None,
        n_items: int | None = None,
        train: sp.csr_matrix | None = None,
        mask_duplicates: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ):
        if num_negatives is not None:  # accepted and ignored: N = batch size - 1
            check_int("num_negatives", num_negatives, 1)
        if not isinstance(mask_duplicates, bool):
            raise ValueError(f"mask_duplicates={mask_duplicates}: must be true or false")
        self.mask_duplicates = mask_duplicates
        self.n_items = None if n_items is None else check_int("n_items", n_items, 1)
        if mask_duplicates and (self.n_items is None or self.n_items < 2):
            raise ValueError(
                f"n_items={n_items}: mask_duplicates=true needs n_items >= 2 "
                "(a replacement item different from the positive)"
            )
        self.generator, self.device = generator, torch.device(device)
        # every batch size seen is kept (two a run): a CUDA graph of the step reads the full batch's index
        self._index_cache: dict[tuple[int, torch.device], torch.Tensor] = {}

    def _others(self, batch: int, device: torch.device) -> torch.Tensor:
        if (batch, device) not in self._index_cache:
            self._index_cache[(batch, device)] = others_index(batch, device)
        return self._index_cache[(batch, device)]

    def sample(self, users: torch.Tensor, pos_items: torch.Tensor, model=None) -> torch.Tensor:
        batch = pos_items.shape[0]
        if batch < 2:
            raise ValueError(
                f"in_batch needs batch_size >= 2, got {batch} "
                "(a batch of one row has no other positives to use as negatives)"
            )
        neg = pos_items[self._others(batch, pos_items.device)]
        if self.mask_duplicates:
            assert self.n_items is not None  # checked in __init__
            # uniform over the n_items - 1 items != the row's positive, drawn for every entry (no host sync)
            own = pos_items.unsqueeze(1)
            draw = torch.randint(self.n_items - 1, neg.shape, generator=self.generator, device=self.device)
            draw = draw.to(neg.device)
            draw += (draw >= own).long()
            neg = torch.where(neg == own, draw, neg)
        return neg

"""Negative samplers.

A sampler is built with ``num_negatives, n_items, train, generator, device`` (plus its own options)
and has ``sample(users[B], pos_items[B], model=None) -> LongTensor[B, N]`` (or ``[1, N]``: one set
shared by every row).  ``model.score(users, items[B, P])`` gives no-grad eval scores for miners.

uniform      N i.i.d. uniform items per row (option exclude_positives)          [B, N]
popularity   N i.i.d. items per row with P(i) ~ pop(i)**beta (option shared)    [B, N] or [1, N]
in_batch     the other rows' positives (N = B-1; option mask_duplicates)         [B, B-1]
shared       one set of N uniform items for the whole batch                      [1, N]
hard         the N best-scored items of a uniform pool per row (pool_size)      [B, N]

Each declares what the trainer needs to know (``scores_model``, ``supports_graph_capture``, ``item_draws``);
``base.NegativeSampler`` holds the safe defaults a sampler of one's own gets.
"""

from mmlexp.samplers.base import NegativeSampler
from mmlexp.samplers.hard import HardNegativeSampler
from mmlexp.samplers.in_batch import InBatchSampler
from mmlexp.samplers.popularity import PopularitySampler
from mmlexp.samplers.shared import SharedSampler
from mmlexp.samplers.uniform import UniformSampler

__all__ = [
    "NegativeSampler",
    "HardNegativeSampler",
    "InBatchSampler",
    "PopularitySampler",
    "SharedSampler",
    "UniformSampler",
]

"""Uniform negative sampler (RecBox h5_generator; paper-reference §3).

N items per row, i.i.d. uniform over the whole catalogue, with replacement.  By default the user's
positives are NOT excluded (the references' default).  ``exclude_positives=True`` draws uniformly
from the items the user has not interacted with in training (rejection sampling, vectorised: only
the colliding entries are redrawn).
"""

import numpy as np
import scipy.sparse as sp
import torch

from mmlexp.samplers.base import NegativeSampler


def check_int(name: str, value, minimum: int, allowed: str | None = None) -> int:
    """``value`` as an int >= ``minimum``, else ``ValueError('<name>=<value>: must be ...')``."""
    ok = not isinstance(value, bool)
    try:
        ok = ok and int(value) == value and value >= minimum
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name}={value}: must be {allowed or f'an integer >= {minimum}'}")
    return int(value)


class UniformSampler(NegativeSampler):
    scores_model = False

    @property
    def supports_graph_capture(self) -> bool:  # type: ignore[override]
        """Draws on the device with fixed shapes, except when it redraws positives away on the host."""
        return not self.exclude_positives

    graph_capture_note = "with sampler.exclude_positives=true redraws on the host until no positive is left"

    def __init__(
        self,
        num_negatives: int,
        n_items: int,
        train: sp.csr_matrix | None = None,
        exclude_positives: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ):
        self.num_negatives = check_int("num_negatives", num_negatives, 1)
        self.n_items = check_int("n_items", n_items, 1)
        self.generator, self.device = generator, torch.device(device)
        self.exclude_positives = bool(exclude_positives)
        self._train_keys: torch.Tensor | None = None
        if self.exclude_positives:
            if train is None:
                raise ValueError("exclude_positives=True needs the training matrix (train=...)")
            counts = np.diff(train.indptr)
            if counts.size and counts.max() >= self.n_items:
                user = int(counts.argmax())
                raise ValueError(f"exclude_positives=True: user {user} has every item as a positive; nothing to sample")
            # Sorted keys user * n_items + item of every training pair (CSR is row-major, sorted).
            rows = np.repeat(np.arange(train.shape[0], dtype=np.int64), counts)
            keys = rows * self.n_items + train.indices.astype(np.int64)
            self._train_keys = torch.from_numpy(np.sort(keys)).to(self.device)

    def _randint(self, shape) -> torch.Tensor:
        return torch.randint(self.n_items, shape, generator=self.generator, device=self.device)

    def _is_positive(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        train_keys = self._train_keys
        assert train_keys is not None, "only called with exclude_positives=True"
        keys = users.unsqueeze(-1) * self.n_items + items
        pos = torch.searchsorted(train_keys, keys).clamp_(max=train_keys.numel() - 1)
        return train_keys[pos] == keys

    def sample(self, users: torch.Tensor, pos_items: torch.Tensor | None = None, model=None) -> torch.Tensor:
        neg = self._randint((users.shape[0], self.num_negatives))
        if self.exclude_positives:
            hit = self._is_positive(users, neg)
            while hit.any():
                neg[hit] = self._randint((int(hit.sum()),))
                hit = self._is_positive(users, neg)
        return neg

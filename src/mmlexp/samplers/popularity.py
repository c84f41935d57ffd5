"""Popularity negative sampler (SSM neg_dist=1/2 with ``item_popularity ** beta``; paper-reference §6).

    P(item i) = pop(i) ** beta / sum_j pop(j) ** beta,      pop(i) = number of training users of item i

drawn i.i.d. WITH replacement (as SSM's ``randint_choice(n_items, size, p=pop**beta)``), and positives
are not excluded.  ``beta=1`` (the default, SSM's ``conf/SSM.properties``) is proportional to
popularity, ``beta=0`` is exactly uniform over the WHOLE catalogue (``0 ** 0 = 1``: items never seen
in training are drawn too), ``0 < beta < 1`` flattens the distribution.  For ``beta > 0`` an item
with zero training popularity has probability 0 and is never drawn.  ``beta < 0`` is refused.

``shared=False`` (default): N negatives per row, ``[B, N]`` (SSM neg_dist=2).
``shared=True``: one set of N negatives for the whole batch, ``[1, N]`` (SSM neg_dist=1; see
``mmlexp.samplers.shared`` for what sharing does to the estimator).

Sampling uses Walker/Vose's alias table, built once on the items of non-zero probability: a draw is
one ``randint`` + one ``rand`` + two gathers, O(1) per draw and fully vectorised on the device.  At
B=256, N=800 over 40,981 items on one CPU thread it took ~2.4 ms against ~3.5 ms for
``torch.multinomial(p, B*N, replacement=True)`` and ~3.8 ms for ``searchsorted`` on a float64 CDF.
Items outside the support are never in the table, so they can never be drawn (no rounding leak).
"""

import math

import numpy as np
import scipy.sparse as sp
import torch

from mmlexp.samplers.base import NegativeSampler
from mmlexp.samplers.uniform import check_int


def item_popularity(train: sp.spmatrix, n_items: int) -> np.ndarray:
    """Number of stored (user, item) training entries per item (users who interacted with it)."""
    train = sp.csr_matrix(train)
    if train.shape[1] != n_items:
        raise ValueError(f"n_items={n_items}: the training matrix has {train.shape[1]} item columns")
    return np.bincount(train.indices, minlength=n_items).astype(np.float64)


def alias_table(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vose's alias table of a probability vector with every entry > 0.

    Returns ``(accept, alias)``: draw ``k`` uniform in ``[0, m)`` and ``u`` uniform in ``[0, 1)``;
    the sample is ``k`` if ``u < accept[k]`` else ``alias[k]``.
    """
    m = probs.size
    scaled = (probs * (m / probs.sum())).tolist()
    accept, alias = [1.0] * m, list(range(m))
    small = [i for i, q in enumerate(scaled) if q < 1.0]
    large = [i for i, q in enumerate(scaled) if q >= 1.0]
    while small and large:
        s, big = small.pop(), large[-1]
        accept[s], alias[s] = scaled[s], big
        scaled[big] -= 1.0 - scaled[s]
        if scaled[big] < 1.0:
            small.append(large.pop())
    # Whatever is left (only through rounding) keeps accept = 1: it is its own alias.
    return np.asarray(accept), np.asarray(alias, dtype=np.int64)


class PopularitySampler(NegativeSampler):
    scores_model = False
    supports_graph_capture = True

    def item_draws(self, batch: int) -> int:
        """B positives and N negatives per row, or N for the batch (``shared``)."""
        return batch + self.num_negatives if self.shared else batch * (1 + self.num_negatives)

    def __init__(
        self,
        num_negatives: int,
        n_items: int,
        train: sp.csr_matrix | None = None,
        beta: float = 1.0,
        shared: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ):
        self.num_negatives = check_int("num_negatives", num_negatives, 1)
        self.n_items = check_int("n_items", n_items, 1)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
            raise ValueError(
                f"beta={beta}: must be a finite number >= 0 (0: uniform, 1: proportional to popularity, as SSM)"
            )
        if not isinstance(shared, bool):
            raise ValueError(f"shared={shared}: must be true or false")
        self.beta, self.shared = float(beta), shared
        self.generator, self.device = generator, torch.device(device)
        if train is None:
            raise ValueError("train=None: the popularity sampler needs the training matrix (item popularity)")
        pop = item_popularity(train, self.n_items)
        weights = pop**self.beta  # 0 ** 0 == 1: beta = 0 is uniform over every item
        support = np.flatnonzero(weights > 0)
        if support.size == 0:
            raise ValueError(f"beta={beta}: every item has zero training popularity; nothing to sample")
        #: exact sampling probability of every item (float64, sums to 1)
        self.probs = weights / weights.sum()
        self._uniform = support.size == self.n_items and np.all(weights == weights[0])
        accept, alias = alias_table(self.probs[support])
        self._support = torch.from_numpy(support).to(self.device)
        self._accept = torch.from_numpy(accept).to(self.device, torch.float32)
        self._alias = torch.from_numpy(support[alias]).to(self.device)  # alias already mapped to item ids

    def draw(self, shape) -> torch.Tensor:
        """Item ids of the given shape, i.i.d. with probabilities ``self.probs``."""
        if self._uniform:
            return torch.randint(self.n_items, shape, generator=self.generator, device=self.device)
        k = torch.randint(self._support.numel(), shape, generator=self.generator, device=self.device)
        u = torch.rand(shape, generator=self.generator, device=self.device)
        return torch.where(u < self._accept[k], self._support[k], self._alias[k])

    def sample(self, users: torch.Tensor, pos_items: torch.Tensor | None = None, model=None) -> torch.Tensor:
        return self.draw((1 if self.shared else users.shape[0], self.num_negatives))

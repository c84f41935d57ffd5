"""Bilateral Softmax Loss (BSL; Wu et al., ICDE'24; official repo junkangwu/BSL utils/losses.py).

With tau1 the temperature and tau2 the negative-side exponent (paper-reference §5):

    multi:    l_b = -log P_b + tau2 * log( (1/N) sum_j exp(s_bj / tau1) ),
              P_b = mean of exp(s_b'0 / tau1) over the rows b' of the batch with u_b' == u_b
    single:   l_b = -s_b0 / tau1 + log( (1/N) sum_j exp(s_bj / tau1) )        (tau2 unused)
    reweight: l_b = -s_b0 / tau1 + tau2 * log( sum_j exp(s_bj / tau1) )
    L = mean_b l_b

Computed in log-sum-exp form, so no exponential can overflow: log P_b = log-mean-exp over the
user's rows, grouped by a sort + scatter (O(B log B), no [B, B] mask, no host sync); the negative
term is tau2 * (logsumexp_j(s_bj / tau1) - log N).  ``users`` groups the rows in mode multi; without
it every row is its own group (multi then is single with tau2 on the negative term).  tau2 = 1 gives
plain softmax (SL).
"""

import math

import torch
from torch import nn

from mmlexp.losses._checks import check_choice, check_temperature, check_weight

MODES = ("multi", "single", "reweight")


class BilateralSoftmaxLoss(nn.Module):
    def __init__(self, tau1: float = 0.08, tau2: float = 1.22, mode: str = "multi"):
        super().__init__()
        self.tau1 = check_temperature("tau1", tau1)
        self.tau2 = check_weight("tau2", tau2)
        self.mode = check_choice("mode", mode, MODES)

    def forward(self, scores: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        logits = scores / self.tau1
        pos, neg = logits[:, 0], logits[:, 1:]
        n_neg = neg.shape[1]
        neg_lse = torch.logsumexp(neg, dim=1)
        if self.mode == "reweight":
            return (self.tau2 * neg_lse - pos).mean()
        neg_term = neg_lse - math.log(n_neg)
        if self.mode == "single":
            return (neg_term - pos).mean()
        if users is not None:
            if users.shape != pos.shape:
                raise ValueError(f"users: shape {tuple(users.shape)} must be [B] = {tuple(pos.shape)} (one id per row)")
            pos = _group_log_mean_exp(pos, users)
        return (self.tau2 * neg_term - pos).mean()

    def extra_repr(self) -> str:
        return f"tau1={self.tau1}, tau2={self.tau2}, mode={self.mode!r}"


def _group_log_mean_exp(x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``log mean_{c: groups[c] == groups[b]} exp(x[c])`` for every b, in O(B log B) and without a host sync.

    Each row gets the index of its group's first entry in the sorted ids (so indices lie in [0, B)), the
    per-group max is subtracted before ``exp`` (detached: it cancels exactly), sums and counts are
    scattered with ``index_add``.
    """
    ordered = groups.sort().values
    index = torch.searchsorted(ordered, groups)
    shift = x.detach().new_full(x.shape, float("-inf")).scatter_reduce_(0, index, x.detach(), "amax")[index]
    sums = torch.zeros_like(x).index_add(0, index, (x - shift).exp())
    counts = torch.zeros_like(x).index_add_(0, index, torch.ones_like(x))
    return (sums.index_select(0, index) / counts.index_select(0, index)).log() + shift

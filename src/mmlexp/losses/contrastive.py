"""Contrastive loss (Chopra, Hadsell & LeCun 2005) on unit vectors (paper-reference §7, generic form).

    l_b = 0.5 * d(u_b, i_b+)^2 + (1/N) sum_j 0.5 * max(0, m - d(u_b, j))^2,   d = sqrt(max(2 - 2 s, 0))
    L   = mean_b l_b

The mean over the negatives is our choice (the reference form is per pair).  m is a Euclidean
distance between unit vectors: m in [0, 2] (default 1, Hadsell et al.).  The positive term is
0.5 * max(2 - 2 s, 0) = max(0, 1 - s) with no square root.  For the negatives the square root is taken
of max(2 - 2 s, EPS): d/ds sqrt(2 - 2 s) = -1/d is unbounded as s -> 1, and clamping at EPS = 1e-6
keeps the gradient finite (|dl/ds| <= m / sqrt(EPS)); the value moves by at most m * sqrt(EPS).
Computed as 0.5 * max(0, m - d)^2 = max(0, m / sqrt(2) - r)^2 with r = d / sqrt(2) = sqrt(max(1 - s, EPS / 2)).
"""

import math

import torch
from torch import nn

from mmlexp.losses._checks import check_range

EPS = 1e-6


class ContrastiveLoss(nn.Module):
    def __init__(self, margin: float = 1.0):
        super().__init__()
        self.margin = check_range("margin", margin, 0.0, 2.0, "a distance between unit vectors")

    def forward(self, scores: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        pos, neg = scores[:, 0], scores[:, 1:]
        pos_term = torch.relu(1 - pos)  # = 0.5 * max(2 - 2 s, 0)
        half_dist = torch.rsub(neg, 1).clamp_min(EPS / 2).sqrt()  # d / sqrt(2)
        neg_term = torch.relu(self.margin / math.sqrt(2) - half_dist).square().mean(dim=1)
        return (pos_term + neg_term).mean()

    def extra_repr(self) -> str:
        return f"margin={self.margin}"

"""Multi-Margin Loss (MML; Ozsoy 2024, eq. 7, as in the author's MultiCosineContrastiveLoss).

    l_b = w_pos * max(0, 1 - s_b0) + w_neg * (1/N) * sum_j sum_k w_k * max(0, s_bj - m_k)
    L   = mean_b l_b

Sum over margins, mean over the N negatives, ``w_neg`` outside the mean.  With one margin and
weight 1 it is exactly CCL.  The penalty of a negative is convex piecewise linear in its score; on the
CPU the loss and its gradient come from one hand-written pass (``losses._hinge``).
"""

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from mmlexp.losses._checks import check_margins, check_weight
from mmlexp.losses._hinge import hinge_family_loss


class MultiMarginLoss(nn.Module):
    def __init__(
        self,
        margins: Sequence[float] = (0.7, 0.8, 0.9),
        weights: Sequence[float] = (0.10, 0.15, 0.75),
        neg_weight: float = 700.0,
        pos_weight: float = 1.0,
    ):
        super().__init__()
        margins = check_margins("margins", margins)
        weights = [check_weight("weights", w) for w in weights]
        if len(weights) != len(margins):
            raise ValueError(f"weights={weights}: need one weight per margin ({len(margins)} margins: {margins})")
        self.margins, self.weights = margins, weights
        self.neg_weight = check_weight("neg_weight", neg_weight)
        self.pos_weight = check_weight("pos_weight", pos_weight)

    def forward(self, scores: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        fused = hinge_family_loss(scores, self.margins, self.weights, self.pos_weight, self.neg_weight)
        if fused is not None:
            return fused
        pos, neg = scores[:, 0], scores[:, 1:]
        # a tensor, not sum()'s start 0: there is at least one margin (checked in __init__)
        terms = (w * torch.relu(neg - m) for m, w in zip(self.margins, self.weights, strict=True))
        penalty = cast(torch.Tensor, sum(terms))
        per_row = self.pos_weight * torch.relu(1 - pos) + self.neg_weight * penalty.mean(dim=1)
        return per_row.mean()

    def extra_repr(self) -> str:
        return (
            f"margins={self.margins}, weights={self.weights}, neg_weight={self.neg_weight}, "
            f"pos_weight={self.pos_weight}"
        )

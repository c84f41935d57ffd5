"""Mean squared error towards 1 / 0 (RecBox MSELoss; paper-reference §7).

l_b = (s_b0 - 1)^2 / 2 + sum_j s_bj^2 / 2      (SUM over the negatives)
L   = mean_b l_b
"""

import torch
from torch import nn


class MSELoss(nn.Module):
    def forward(self, scores: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        pos, neg = scores[:, 0], scores[:, 1:]
        return 0.5 * ((pos - 1).square() + neg.square().sum(dim=1)).mean()

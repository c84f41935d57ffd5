"""BPR (RecBox PairwiseLogisticLoss; paper-reference §7).

L = mean_{b,j} -log sigmoid(s_b0 - s_bj)
"""

import torch
import torch.nn.functional as F
from torch import nn


class BPRLoss(nn.Module):
    def forward(self, scores: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        return -F.logsigmoid(scores[:, :1] - scores[:, 1:]).mean()

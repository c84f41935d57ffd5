"""Softmax cross-entropy (RecBox SoftmaxCrossEntropyLoss; paper-reference §7), no temperature.

l_b = -log softmax(S_b)[0] = logsumexp_c(s_bc) - s_b0
L   = mean_b l_b
"""

import torch
import torch.nn.functional as F
from torch import nn


class SoftmaxCrossEntropyLoss(nn.Module):
    def forward(self, scores: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
        return F.cross_entropy(scores, target)

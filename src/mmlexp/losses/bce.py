"""Binary cross-entropy on the scores as logits (RecBox SigmoidCrossEntropyLoss; paper-reference §7).

    L = SUM_{b, c} BCE-with-logits(s_bc, y_bc),   y_b0 = 1, y_bj = 0

A SUM over all B*(1+N) entries (the reference's reduction="sum"), not a mean: the value scales with
the batch size and the number of negatives.
"""

import torch
import torch.nn.functional as F
from torch import nn


class BinaryCrossEntropyLoss(nn.Module):
    def forward(self, scores: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        target = torch.zeros_like(scores)
        target[:, 0] = 1
        return F.binary_cross_entropy_with_logits(scores, target, reduction="sum")

"""Pairwise hinge (RecBox PairwiseMarginLoss; paper-reference §7).

    L = mean_{b,j} max(0, m + s_bj - s_b0)

Default m = 1 (the class default); the RecZoo configs the MML paper ran carry m = 0.9 (conf/loss/hinge.yaml).
"""

import torch
from torch import nn

from mmlexp.losses._checks import check_range


class PairwiseHingeLoss(nn.Module):
    def __init__(self, margin: float = 1.0):
        super().__init__()
        self.margin = check_range("margin", margin, -1.0, 1.0, "cosine scores")

    def forward(self, scores: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        return torch.relu(scores[:, 1:] - scores[:, :1] + self.margin).mean()

    def extra_repr(self) -> str:
        return f"margin={self.margin}"

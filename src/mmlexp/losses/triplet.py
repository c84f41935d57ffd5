"""Triplet loss (FaceNet, Schroff et al. 2015) on unit vectors (paper-reference §7, generic form).

    L = mean_{b,j} max(0, d(u_b, i_b+)^2 - d(u_b, j)^2 + m),    d^2 = ||u - v||^2 = 2 - 2 s

i.e. 2 * max(0, s_bj - s_b0 + m/2): a pairwise hinge with margin m/2, doubled.  The margin is on
SQUARED distances between unit vectors, so it lies in [0, 4] (default 0.2, FaceNet's alpha).
"""

import torch
from torch import nn

from mmlexp.losses._checks import check_range


class TripletLoss(nn.Module):
    def __init__(self, margin: float = 0.2):
        super().__init__()
        self.margin = check_range("margin", margin, 0.0, 4.0, "a squared distance between unit vectors")

    def forward(self, scores: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        # d+^2 - d-^2 + m = 2 (s_j - s_0 + m/2): the hinge form, without building the distances
        return 2 * torch.relu(scores[:, 1:] - scores[:, :1] + self.margin / 2).mean()

    def extra_repr(self) -> str:
        return f"margin={self.margin}"

"""Cosine Contrastive Loss (CCL; Mao et al., SimpleX, CIKM'21; RecBox cosine_contrastive_loss).

    l_b = max(0, 1 - s_b0) + w * (1/N) * sum_j max(0, s_bj - m)     (w > 0)
    l_b = max(0, 1 - s_b0) +             sum_j max(0, s_bj - m)     (w = 0 or None: plain sum)
    L   = mean_b l_b

MML with one margin of weight 1; on the CPU the same hand-written pass (``losses._hinge``).
"""

import torch
from torch import nn

from mmlexp.losses._checks import check_margins, check_weight
from mmlexp.losses._hinge import hinge_family_loss


class CosineContrastiveLoss(nn.Module):
    def __init__(self, margin: float = 0.9, neg_weight: float | None = 150.0):
        super().__init__()
        self.margin = check_margins("margin", [margin])[0]
        self.neg_weight = check_weight("neg_weight", neg_weight or 0.0)

    def forward(self, scores: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        # w = 0: a plain sum over the N negatives, i.e. weight N on their mean
        fused = hinge_family_loss(scores, [self.margin], [1.0], 1.0, self.neg_weight or scores.shape[1] - 1)
        if fused is not None:
            return fused
        pos, neg = scores[:, 0], scores[:, 1:]
        hinge = torch.relu(neg - self.margin)
        neg_term = self.neg_weight * hinge.mean(dim=1) if self.neg_weight else hinge.sum(dim=1)
        return (torch.relu(1 - pos) + neg_term).mean()

    def extra_repr(self) -> str:
        return f"margin={self.margin}, neg_weight={self.neg_weight}"

"""Sampled Softmax loss (SSM; Wu et al., TOIS'24; official wujcan/SSM-TensorFlow SSM.py).

    l_b = -log softmax(S_b / tau)[0] = logsumexp_c(s_bc / tau) - s_b0 / tau   (positive in the denominator)
    L   = SUM_b l_b   (reduction="sum", the reference's reduce_sum; "mean" divides by B)

paper-reference §6.  In-batch negatives are the [B, B] matrix C with column 0 = C[b, b] and the other
columns = C[b, b' != b]; any sampled negatives work the same way.  Note the default SUM: the loss (and
its gradient) scale with the batch size, unlike every other loss here.
"""

import torch
import torch.nn.functional as F
from torch import nn

from mmlexp.losses._checks import check_choice, check_temperature


class SampledSoftmaxLoss(nn.Module):
    def __init__(self, tau: float = 0.12, reduction: str = "sum"):
        super().__init__()
        self.tau = check_temperature("tau", tau)
        self.reduction = check_choice("reduction", reduction, ("sum", "mean"))

    def forward(self, scores: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
        return F.cross_entropy(scores / self.tau, target, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, reduction={self.reduction!r}"

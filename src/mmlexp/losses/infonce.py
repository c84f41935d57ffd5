"""InfoNCE with temperature (standard literature form; paper-reference §7, MED confidence).

    l_b = -log( exp(s_b0/tau) / (exp(s_b0/tau) + sum_j exp(s_bj/tau)) ) = logsumexp_c(s_bc/tau) - s_b0/tau
    L   = mean_b l_b

Equals softmax cross-entropy at tau = 1, and SSM (§6) up to its SUM reduction.  The default tau = 0.1
is a common choice, not a value from the references.
"""

import torch
import torch.nn.functional as F
from torch import nn

from mmlexp.losses._checks import check_temperature


class InfoNCELoss(nn.Module):
    def __init__(self, tau: float = 0.1):
        super().__init__()
        self.tau = check_temperature("tau", tau)

    def forward(self, scores: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
        return F.cross_entropy(scores / self.tau, target)

    def extra_repr(self) -> str:
        return f"tau={self.tau}"

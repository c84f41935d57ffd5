"""The hinge family's loss (MML, CCL) with its gradient from one pass, written by hand.

    L = mean_b [ w_pos * max(0, 1 - s_b0) + w_neg * mean_c sum_k w_k * max(0, s_bc - m_k) ]

Its gradient is piecewise constant: -w_pos/B on a positive below 1, w_neg/(N B) * sum_{k: m_k < s} w_k on a
negative.  On the CPU (fp32/fp64, numba) forward computes both (``cpu_kernels.hinge_family_loss``) and
backward is one multiply; elsewhere ``hinge_family_loss`` returns ``None`` and the loss uses its PyTorch
expression (the reference the tests hold the kernel to).
"""

import numpy as np
import torch

from mmlexp import cpu_kernels


class _HingeFamilyLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, margins, weights, pos_weight, neg_weight):
        scores = scores.detach().contiguous()
        grad = torch.empty_like(scores)
        value = cpu_kernels.hinge_family_loss(scores.numpy(), margins, weights, pos_weight, neg_weight, grad.numpy())
        ctx.save_for_backward(grad)
        return torch.tensor(value, dtype=scores.dtype)

    @staticmethod
    def backward(ctx, upstream):
        (grad,) = ctx.saved_tensors
        return grad * upstream, None, None, None, None


def hinge_family_loss(scores: torch.Tensor, margins, weights, pos_weight: float, neg_weight: float):
    """L above as a 0-d tensor with its hand-written backward, or None where the kernel does not apply."""
    if not (cpu_kernels.applies_to(scores) and scores.dim() == 2 and scores.shape[1] > 1):
        return None
    dtype = np.float32 if scores.dtype == torch.float32 else np.float64  # margins compared as the expression does
    return _HingeFamilyLoss.apply(
        scores, np.asarray(margins, dtype), np.asarray(weights, dtype), float(pos_weight), float(neg_weight)
    )

"""The hinge family's loss (MML, CCL) with its gradient from one pass, written by hand.

    L = mean_b [ w_pos * max(0, 1 - s_b0) + w_neg * mean_c sum_k w_k * max(0, s_bc - m_k) ]

Its gradient is piecewise constant: -w_pos/B on a positive below 1, w_neg/(N B) * sum_{k: m_k < s} w_k on a
negative.  On the CPU (fp32/fp64, numba) forward computes both (``hinge_family_kernel``) and
backward is one multiply; elsewhere ``hinge_family_loss`` returns ``None`` and the loss uses its PyTorch
expression (the reference the tests hold the kernel to).
"""

import numpy as np
import torch

from mmlexp._numba import applies_to, fast_serial_jit


@fast_serial_jit
def hinge_family_kernel(scores, margins, weights, pos_weight, neg_weight, grad):  # pragma: no cover - compiled
    """The MML/CCL loss and its gradient in one pass over ``scores`` [B, 1+N] (column 0 the positive):

        L = (1/B) sum_b [ pos_weight * max(0, 1 - s_b0) + neg_weight * (1/N) sum_c sum_k w_k max(0, s_bc - m_k) ]

    ``grad`` receives dL/ds (relu's convention: slope 0 at a kink).  A NaN score makes L NaN."""
    batch, cols = scores.shape
    n_neg = cols - 1
    total = 0.0
    for b in range(batch):
        s0 = scores[b, 0]
        row = 0.0
        grad[b, 0] = 0.0
        if s0 < 1:
            row += pos_weight * (1 - s0)
            grad[b, 0] = -pos_weight / batch
        elif s0 != s0:
            row += s0
        penalty = 0.0
        for c in range(1, cols):
            s = scores[b, c]
            slope = 0.0
            for k in range(margins.shape[0]):
                if s > margins[k]:
                    penalty += weights[k] * (s - margins[k])
                    slope += weights[k]
            if s != s:
                penalty += s
            grad[b, c] = neg_weight * slope / (n_neg * batch)
        total += row + neg_weight * penalty / n_neg
    return total / batch


class _HingeFamilyLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, margins, weights, pos_weight, neg_weight):
        scores = scores.detach().contiguous()
        grad = torch.empty_like(scores)
        value = hinge_family_kernel(scores.numpy(), margins, weights, pos_weight, neg_weight, grad.numpy())
        ctx.save_for_backward(grad)
        return torch.tensor(value, dtype=scores.dtype)

    @staticmethod
    def backward(ctx, upstream):
        (grad,) = ctx.saved_tensors
        return grad * upstream, None, None, None, None


def hinge_family_loss(scores: torch.Tensor, margins, weights, pos_weight: float, neg_weight: float):
    """L above as a 0-d tensor with its hand-written backward, or None where the kernel does not apply."""
    if not (applies_to(scores) and scores.dim() == 2 and scores.shape[1] > 1):
        return None
    dtype = np.float32 if scores.dtype == torch.float32 else np.float64  # margins compared as the expression does
    return _HingeFamilyLoss.apply(
        scores, np.asarray(margins, dtype), np.asarray(weights, dtype), float(pos_weight), float(neg_weight)
    )

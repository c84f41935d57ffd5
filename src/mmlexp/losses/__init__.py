"""Losses over a score matrix ``scores[B, 1+N]`` (column 0 the positive, 1..N the negatives).

Every loss is an ``nn.Module`` whose ``forward(scores, users=None)`` returns a scalar.
"""

from mmlexp.losses.bce import BinaryCrossEntropyLoss
from mmlexp.losses.bpr import BPRLoss
from mmlexp.losses.bsl import BilateralSoftmaxLoss
from mmlexp.losses.ccl import CosineContrastiveLoss
from mmlexp.losses.contrastive import ContrastiveLoss
from mmlexp.losses.hinge import PairwiseHingeLoss
from mmlexp.losses.infonce import InfoNCELoss
from mmlexp.losses.mml import MultiMarginLoss
from mmlexp.losses.mse import MSELoss
from mmlexp.losses.softmax import SoftmaxCrossEntropyLoss
from mmlexp.losses.ssm import SampledSoftmaxLoss
from mmlexp.losses.triplet import TripletLoss

__all__ = [
    "BPRLoss",
    "BilateralSoftmaxLoss",
    "BinaryCrossEntropyLoss",
    "ContrastiveLoss",
    "CosineContrastiveLoss",
    "InfoNCELoss",
    "MSELoss",
    "MultiMarginLoss",
    "PairwiseHingeLoss",
    "SampledSoftmaxLoss",
    "SoftmaxCrossEntropyLoss",
    "TripletLoss",
]

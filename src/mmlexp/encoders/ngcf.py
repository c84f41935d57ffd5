"""NGCF (Wang et al., SIGIR'19), one of the SSM paper's encoders (paper-reference §6).

Layer l -> l+1, the paper's matrix form (eq. 7) with A_hat = D^-1/2 A D^-1/2 (graph.normalized_adjacency):

    E^{l+1} = LeakyReLU( (A_hat + I) E^l W1_l  +  ((A_hat E^l) ⊙ E^l) W2_l ),   then message dropout
    E       = [E^0 | E^1 | ... | E^L]            (concatenated layer outputs, dimension d * (L+1))
    u = dropout(normalize(E[user]))  ,  v = normalize(E[U + item])  ,  s = <u, v>   (cosine, default)

Sum messages ``(A_hat + I) E W1`` and element-wise (affinity) messages ``(A_hat E ⊙ E) W2``; W1_l, W2_l
are d x d, Xavier-normal, no bias (paper eq. 7); LeakyReLU slope ``negative_slope`` (0.2 as the
official code).  Message dropout (``message_dropout``) drops entries of every layer output in
training, before the next layer uses it (official code).  One sparse product ``A_hat E^l`` per layer
(torch sparse CSR); no Python loop over nodes or edges.

Differences from the official TF code, kept out on purpose (paper form): the code adds biases, applies
LeakyReLU to the two messages separately, L2-normalises each layer output before concatenation,
uses node dropout (off by default there) and by default the D^-1 (A + I) adjacency.
``dropout`` (MF-style, on the normalised user vector) defaults to 0.  L2 covers the layer-0 tables.
"""

import torch
import torch.nn.functional as F
from torch import nn

from mmlexp.encoders._scoring import check_dropout, check_train
from mmlexp.encoders.base import PropagatedEncoder
from mmlexp.encoders.graph import normalized_adjacency, propagate
from mmlexp.encoders.lightgcn import check_layers


class NGCF(PropagatedEncoder):
    graph_capture_note = "propagates with sparse-matrix products, not checked under capture"
    adjacency: torch.Tensor  # buffer (register_buffer): the normalised adjacency

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int = 64,
        n_layers: int = 3,
        message_dropout: float = 0.1,
        negative_slope: float = 0.2,
        dropout: float = 0.0,
        init_std: float = 1e-4,
        similarity: str = "cosine",
        train=None,
    ):
        super().__init__(n_users, n_items, dim, init_std, similarity, dropout)
        self.n_layers = check_layers(n_layers)
        self.message_dropout = check_dropout("message_dropout", message_dropout)
        if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)) or negative_slope < 0:
            raise ValueError(f"negative_slope={negative_slope}: must be a number >= 0")
        self.negative_slope = float(negative_slope)
        train = check_train(train, n_users, n_items, "NGCF's normalised adjacency")
        self.w1 = nn.ParameterList(
            [nn.Parameter(nn.init.xavier_normal_(torch.empty(self.dim, self.dim))) for _ in range(self.n_layers)]
        )
        self.w2 = nn.ParameterList(
            [nn.Parameter(nn.init.xavier_normal_(torch.empty(self.dim, self.dim))) for _ in range(self.n_layers)]
        )
        self.register_buffer("adjacency", normalized_adjacency(train), persistent=False)

    def propagated(self, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenated layer outputs: users ``[U, d(L+1)]``, items ``[I, d(L+1)]``."""
        x = torch.cat([self.user_table, self.item_table])
        layers = [x]
        for w1, w2 in zip(self.w1, self.w2, strict=True):
            side = propagate(self.adjacency, x)  # A_hat E
            x = F.leaky_relu((side + x) @ w1 + (side * x) @ w2, self.negative_slope)
            x = F.dropout(x, self.message_dropout, training=training)
            layers.append(x)
        out = torch.cat(layers, dim=1) if len(layers) > 1 else x
        users, items = out.split([self.n_users, self.n_items])
        return users, items

"""LightGCN (He et al., SIGIR'20), the SSM paper's encoder (paper-reference §6).

    E0 = [P; Q]                                   (user table P, item table Q: the only parameters)
    E  = mean(E0, A_hat E0, A_hat^2 E0, ..., A_hat^L E0),  A_hat = D^-1/2 A D^-1/2 (graph.normalized_adjacency)
    u  = dropout(normalize(E[user]))  ,  v = normalize(E[U + item])  ,  s = <u, v>     (cosine, default)

A_hat is built ONCE from ``train`` (torch sparse CSR buffer, moved with ``.to(device)``, not saved in
the state dict).  Propagation runs over the whole graph once per training step (``forward``, with
autograd) and once per ``all_embeddings()`` / ``score()`` call (no grad).  ``n_layers=0`` is MF
exactly (same tables, same scores, same gradients).  L2 covers the layer-0 tables P and Q.

``dropout`` acts like MF's (on the normalised user vector, training only); the LightGCN/SSM
references use none, hence default 0.  ``init_std``: Normal(0, init_std) as MF (the SSM code uses
Xavier; with cosine scores only the scale relative to L2 and the Adam step differs).
SSM setting (paper-reference §6): ``n_layers=1``.
"""

import torch

from mmlexp.encoders._scoring import check_train
from mmlexp.encoders.base import PropagatedEncoder
from mmlexp.encoders.graph import normalized_adjacency, propagate


def check_layers(n_layers) -> int:
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 0:
        raise ValueError(f"n_layers={n_layers}: must be an integer >= 0 (0 = plain MF)")
    return n_layers


class LightGCN(PropagatedEncoder):
    graph_capture_note = "propagates with sparse-matrix products, not checked under capture"
    adjacency: torch.Tensor  # buffer (register_buffer): the normalised adjacency

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int = 64,
        n_layers: int = 3,
        dropout: float = 0.0,
        init_std: float = 1e-4,
        similarity: str = "cosine",
        train=None,
    ):
        super().__init__(n_users, n_items, dim, init_std, similarity, dropout)
        self.n_layers = check_layers(n_layers)
        train = check_train(train, n_users, n_items, "LightGCN's normalised adjacency")
        self.register_buffer("adjacency", normalized_adjacency(train), persistent=False)

    def propagated(self, training: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer-mean user ``[U, d]`` and item ``[I, d]`` embeddings (autograd follows when enabled; no
        dropout inside the propagation, so ``training`` changes nothing)."""
        if self.n_layers == 0:
            return self.user_table, self.item_table
        x = torch.cat([self.user_table, self.item_table])
        total = x
        for _ in range(self.n_layers):
            x = propagate(self.adjacency, x)
            total = total + x
        users, items = (total / (self.n_layers + 1)).split([self.n_users, self.n_items])
        return users, items  # split, not two slices: its backward is one cat, no zero-filled full-size grads

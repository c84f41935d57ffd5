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
from torch import nn

from mmlexp.encoders._scoring import (
    check_dim,
    check_dropout,
    check_init_std,
    check_similarity,
    check_train,
    eval_scores,
    finish,
    pair_scores,
)
from mmlexp.encoders.graph import normalized_adjacency, propagate


def check_layers(n_layers) -> int:
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 0:
        raise ValueError(f"n_layers={n_layers}: must be an integer >= 0 (0 = plain MF)")
    return n_layers


class LightGCN(nn.Module):
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
        super().__init__()
        dim, self.n_layers = check_dim(dim), check_layers(n_layers)
        self.similarity = check_similarity(similarity)
        init_std = check_init_std(init_std)
        train = check_train(train, n_users, n_items, "LightGCN's normalised adjacency")
        self.n_users, self.n_items = n_users, n_items
        self.user_table = nn.Parameter(torch.randn(n_users, dim) * init_std)
        self.item_table = nn.Parameter(torch.randn(n_items, dim) * init_std)
        self.dropout = nn.Dropout(check_dropout("dropout", dropout))
        self.register_buffer("adjacency", normalized_adjacency(train), persistent=False)

    def embedding_tables(self) -> list[nn.Parameter]:
        return [self.user_table, self.item_table]

    def propagated(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer-mean user ``[U, d]`` and item ``[I, d]`` embeddings (autograd follows when enabled)."""
        if self.n_layers == 0:
            return self.user_table, self.item_table
        x = torch.cat([self.user_table, self.item_table])
        total = x
        for _ in range(self.n_layers):
            x = propagate(self.adjacency, x)
            total = total + x
        users, items = (total / (self.n_layers + 1)).split([self.n_users, self.n_items])
        return users, items  # split, not two slices: its backward is one cat, no zero-filled full-size grads

    def forward(self, users: torch.Tensor, pos_items: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """Score matrix ``[B, 1+N]`` (column 0 the positive; ``negatives`` ``[B, N]`` or shared ``[1, N]``)."""
        user_emb, item_emb = self.propagated()
        u = self.dropout(finish(user_emb[users], self.similarity))
        return pair_scores(u, item_emb, pos_items, negatives, self.similarity)

    @torch.no_grad()
    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Eval-mode scores ``[B, C]`` (one no-grad propagation over the whole graph)."""
        user_emb, item_emb = self.propagated()
        return eval_scores(finish(user_emb[users], self.similarity), item_emb, items, self.similarity)

    @torch.no_grad()
    def all_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        user_emb, item_emb = self.propagated()
        return finish(user_emb, self.similarity), finish(item_emb, self.similarity)

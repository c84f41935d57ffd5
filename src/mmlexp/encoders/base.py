"""What every encoder shares: the checked common arguments and the user / item tables.

    P = Normal(0, init_std) [n_users, d],  Q = Normal(0, init_std) [n_items, d]   (P drawn first, then Q)

``EmbeddingEncoder`` holds P (``user_table``), Q (``item_table``), the similarity and, where the encoder
has one, the MF-style ``dropout`` on the finished user vector; ``embedding_tables`` (what L2 covers) is
[P, Q] unless an encoder adds tables.  ``PropagatedEncoder`` is the graph encoders' scoring: a whole-graph
``propagated(training)`` gives every user and item vector, rows are taken from it (LightGCN, NGCF).
Parameter names and the order of the random draws are the encoders' own from before this module
(checkpoints and seeded runs are unchanged).

Capabilities the trainer reads, declared per encoder (the defaults are the safe ones, which an encoder of
one's own gets): ``supports_graph_capture`` (False: the training step stays eager unless the encoder was
checked under CUDA graph capture, ``mmlexp.graphed_step``) with ``graph_capture_note`` saying why not, and
``rows_read(users, pos_items, negatives)`` (absent: TableAdam keeps every row current, no deferred rows,
``mmlexp.optim.deferred``; present where the forward reads the given rows of each table and nothing else).
"""

import torch
from torch import nn

from mmlexp.encoders._scoring import (
    check_dim,
    check_dropout,
    check_init_std,
    check_similarity,
    eval_scores,
    finish,
    pair_scores,
)


class EmbeddingEncoder(nn.Module):
    supports_graph_capture: bool = False
    graph_capture_note: str = "is not known to be capturable"

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int,
        init_std: float,
        similarity: str,
        dropout: float | None = None,
    ):
        """``dropout=None``: no ``self.dropout`` module (an encoder with its own dropout scheme)."""
        super().__init__()
        dim = check_dim(dim)
        self.similarity = check_similarity(similarity)
        init_std = check_init_std(init_std)
        self.n_users, self.n_items = n_users, n_items
        self.user_table = nn.Parameter(torch.randn(n_users, dim) * init_std)
        self.item_table = nn.Parameter(torch.randn(n_items, dim) * init_std)
        if dropout is not None:
            self.dropout = nn.Dropout(check_dropout("dropout", dropout))

    @property
    def dim(self) -> int:
        """The tables' embedding width."""
        return self.user_table.shape[1]

    def embedding_tables(self) -> list[nn.Parameter]:
        """The tables the L2 term covers (whole tables, every step: paper-reference §3)."""
        return [self.user_table, self.item_table]


class PropagatedEncoder(EmbeddingEncoder):
    """Scores read from whole-graph vectors: ``propagated(training) -> (users [U, d'], items [I, d'])``."""

    def propagated(self, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, users: torch.Tensor, pos_items: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """Score matrix ``[B, 1+N]`` (column 0 the positive; ``negatives`` ``[B, N]`` or shared ``[1, N]``)."""
        user_emb, item_emb = self.propagated(self.training)
        u = self.dropout(finish(user_emb[users], self.similarity))
        return pair_scores(u, item_emb, pos_items, negatives, self.similarity)

    @torch.no_grad()
    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Eval-mode scores ``[B, C]`` (one no-grad propagation, no dropout whatever the module's mode)."""
        user_emb, item_emb = self.propagated(False)
        return eval_scores(finish(user_emb[users], self.similarity), item_emb, items, self.similarity)

    @torch.no_grad()
    def all_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        user_emb, item_emb = self.propagated(False)
        return finish(user_emb, self.similarity), finish(item_emb, self.similarity)

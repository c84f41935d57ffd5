"""What every encoder shares: the checked common arguments and the user / item tables.

    P = Normal(0, init_std) [n_users, d],  Q = Normal(0, init_std) [n_items, d]   (P drawn first, then Q)

``EmbeddingEncoder`` holds P (``user_table``), Q (``item_table``), the similarity and, where the encoder
has one, the MF-style ``dropout`` on the finished user vector; ``embedding_tables`` (what L2 covers) is
[P, Q] unless an encoder adds tables.  ``PropagatedEncoder`` is the graph encoders' scoring: a whole-graph
``propagated(training)`` gives every user and item vector, rows are taken from it (LightGCN, NGCF).
Parameter names and the order of the random draws are the encoders' own from before this module
(checkpoints and seeded runs are unchanged).

Options of the SSM paper's setting (paper-reference §6; each default is mmlexp's behaviour, bits unchanged):
``init="xavier_uniform"`` draws P then Q from U(-a, a), a = sqrt(6 / (rows + d)) (the official SSM code;
``init_std`` is then unused); ``batch_l2=w`` adds the gradient of (w/2) sum_b (||P[u_b]||^2 + ||Q[i_b]||^2)
over the batch's (user, positive) rows of the layer-0 tables, each occurrence counted (``batch_l2_tables``;
the loss value logged leaves this term out); ``eval_similarity="dot"`` ranks by plain dot products of the
unnormalised vectors (official SSM ``flag_l2_norm=[1, 0]``: cosine in the loss only).

Capabilities the trainer reads, declared per encoder (the defaults are the safe ones, which an encoder of
one's own gets): ``supports_graph_capture`` (False: the training step stays eager unless the encoder was
checked under CUDA graph capture, ``mmlexp.graphed_step``) with ``graph_capture_note`` saying why not, and
``rows_read(users, pos_items, negatives)`` (absent: TableAdam keeps every row current, no deferred rows,
``mmlexp.optim.deferred_rows``; present where the forward reads the given rows of each table and nothing else).
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

INITS = ("normal", "xavier_uniform")


def check_init(init) -> str:
    if init not in INITS:
        raise ValueError(f"init={init!r}: must be one of {', '.join(INITS)}")
    return init


def check_batch_l2(batch_l2) -> float:
    if isinstance(batch_l2, bool) or not isinstance(batch_l2, (int, float)) or not batch_l2 >= 0:
        raise ValueError(f"batch_l2={batch_l2}: must be a number >= 0 (0 = off)")
    return float(batch_l2)


def new_table(rows: int, dim: int, init: str, init_std: float) -> torch.Tensor:
    """A ``[rows, dim]`` table: Normal(0, init_std) (mmlexp's draw, unchanged) or Xavier-uniform."""
    if init == "xavier_uniform":
        return nn.init.xavier_uniform_(torch.empty(rows, dim))
    return torch.randn(rows, dim) * init_std


class _BatchL2(torch.autograd.Function):
    """Identity on ``table``; the backward adds ``weight * table[r]`` at row r for each r in ``rows``."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, rows: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.save_for_backward(table, rows)
        ctx.weight = weight
        return table.view_as(table)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        table, rows = ctx.saved_tensors
        grad = grad.to_dense() if grad.is_sparse else grad
        return grad.index_add(0, rows, table.detach().index_select(0, rows), alpha=ctx.weight), None, None


def batch_l2_tables(
    user_table: torch.Tensor, item_table: torch.Tensor, users: torch.Tensor, pos_items: torch.Tensor, weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tables as they are, with the gradient of (weight/2) sum_b (||P[u_b]||^2 + ||Q[i_b]||^2) added in the
    backward (official SSM: ``reg * l2_loss(u_pre, pos_i_pre)`` on the layer-0 rows of the batch)."""
    return _BatchL2.apply(user_table, users, weight), _BatchL2.apply(item_table, pos_items, weight)


def in_batch_score_matrix(u: torch.Tensor, v: torch.Tensor, pos_items: torch.Tensor, negatives: torch.Tensor,
                          others_index) -> torch.Tensor:  # fmt: skip
    """``[B, B]`` scores of ``u`` against the batch's positive vectors ``v``, as ``[B, 1+(B-1)]``: the diagonal
    first, then row b's off-diagonal entries in column order (``in_batch_scores``).  The negatives must be
    ``sampler=in_batch``'s (the other rows' positives): checked on their shape, their first row and each row's sum."""
    batch = pos_items.shape[0]
    if (
        negatives.shape != (batch, batch - 1)
        or not torch.equal(negatives[0], pos_items[1:])
        or not torch.equal(negatives.sum(1), pos_items.sum() - pos_items)
    ):
        raise ValueError(
            "in_batch_scores=true: the negatives must be the other rows' positives (sampler=in_batch without "
            "mask_duplicates); use in_batch_scores=false with other samplers"
        )
    full = u @ v.T
    return torch.cat([full.diagonal().unsqueeze(1), full.gather(1, others_index(batch, pos_items.device))], dim=1)


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
        init: str = "normal",
        batch_l2: float = 0.0,
        eval_similarity: str | None = None,
    ):
        """``dropout=None``: no ``self.dropout`` module (an encoder with its own dropout scheme)."""
        super().__init__()
        dim = check_dim(dim)
        self.similarity = check_similarity(similarity)
        self.eval_similarity = self.similarity if eval_similarity is None else check_similarity(eval_similarity)
        init_std = check_init_std(init_std)
        self.init, self.batch_l2 = check_init(init), check_batch_l2(batch_l2)
        self.n_users, self.n_items = n_users, n_items
        self.user_table = nn.Parameter(new_table(n_users, dim, self.init, init_std))
        self.item_table = nn.Parameter(new_table(n_items, dim, self.init, init_std))
        if dropout is not None:
            self.dropout = nn.Dropout(check_dropout("dropout", dropout))

    @property
    def dim(self) -> int:
        """The tables' embedding width."""
        return self.user_table.shape[1]

    def embedding_tables(self) -> list[nn.Parameter]:
        """The tables the L2 term covers (whole tables, every step: paper-reference §3)."""
        return [self.user_table, self.item_table]

    def others_index(self, batch: int, device: torch.device) -> torch.Tensor:
        """``[B, B-1]``: row b lists 0..B-1 without b (as ``samplers.in_batch.others_index``), kept per batch size."""
        cache: dict = self.__dict__.setdefault("_others_cache", {})
        if (batch, device) not in cache:
            cols = torch.arange(batch - 1, device=device).unsqueeze(0)
            cache[(batch, device)] = cols + (cols >= torch.arange(batch, device=device).unsqueeze(1)).long()
        return cache[(batch, device)]


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
        sim = self.eval_similarity
        return eval_scores(finish(user_emb[users], sim), item_emb, items, sim)

    @torch.no_grad()
    def all_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        user_emb, item_emb = self.propagated(False)
        return finish(user_emb, self.eval_similarity), finish(item_emb, self.eval_similarity)

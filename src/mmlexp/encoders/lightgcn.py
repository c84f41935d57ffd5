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

Options for the official SSM code (defaults = mmlexp's behaviour; ``+experiment=ssm_paper`` sets them):
``init`` / ``batch_l2`` / ``eval_similarity`` (``encoders.base``: Xavier-uniform tables, L2 on the batch's
layer-0 rows, ranking by raw dot products) and ``in_batch_scores=true``: with ``sampler=in_batch`` the score
matrix is read from one ``[B, B]`` product u @ v^T of the batch's user and positive vectors (columns reordered
to positive first, then the other rows' positives in batch order), instead of gathering B x B item rows.  The
same numbers up to float summation order (not the same bits: off by default); other negatives raise.
``propagate_rows=true``: the forward computes the rows of E it scores only (the batch's users, positives and
negatives): x0[rows] plus ``A_hat[rows] @ x_{k-1}`` per layer (``graph.rows_product``; layers below the last still
whole-graph), and the backward one product of the same rows; the whole-graph propagation is 1.6M nonzeros
each way on Gowalla, the rows of a 2048-row batch about a fifth of it.  Same numbers, other float summation
order in the backward (off by default).
"""

import torch

from mmlexp.encoders._scoring import check_train, finish, pair_scores
from mmlexp.encoders.base import PropagatedEncoder, batch_l2_tables, in_batch_score_matrix
from mmlexp.encoders.graph import normalized_adjacency, propagate, rows_product, scipy_view


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
        init: str = "normal",
        batch_l2: float = 0.0,
        eval_similarity: str | None = None,
        in_batch_scores: bool = False,
        propagate_rows: bool = False,
        train=None,
    ):
        super().__init__(n_users, n_items, dim, init_std, similarity, dropout, init, batch_l2, eval_similarity)
        self.n_layers = check_layers(n_layers)
        for name, flag in (("in_batch_scores", in_batch_scores), ("propagate_rows", propagate_rows)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name}={flag}: must be true or false")
        self.in_batch_scores, self.propagate_rows = in_batch_scores, propagate_rows
        self._scipy: tuple[int, object] | None = None  # (data_ptr, scipy view of the adjacency) for rows_product
        train = check_train(train, n_users, n_items, "LightGCN's normalised adjacency")
        self.register_buffer("adjacency", normalized_adjacency(train), persistent=False)

    def propagated(self, training: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer-mean user ``[U, d]`` and item ``[I, d]`` embeddings (autograd follows when enabled; no
        dropout inside the propagation, so ``training`` changes nothing)."""
        return self.mean_of_layers(self.user_table, self.item_table)

    def mean_of_layers(self, user_table: torch.Tensor, item_table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mean(E0, A_hat E0, ..., A_hat^L E0) split into users and items: one sparse product per layer."""
        if self.n_layers == 0:
            return user_table, item_table
        x = torch.cat([user_table, item_table])
        total = x
        for _ in range(self.n_layers):
            x = propagate(self.adjacency, x)
            total = total + x
        users, items = (total / (self.n_layers + 1)).split([self.n_users, self.n_items])
        return users, items  # split, not two slices: its backward is one cat, no zero-filled full-size grads

    def rows_of_layers(
        self, user_table: torch.Tensor, item_table: torch.Tensor, users: torch.Tensor, items: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``mean_of_layers`` at the rows ``users`` and ``items`` only (``propagate_rows``)."""
        x = torch.cat([user_table, item_table])
        rows = torch.cat([users, items + self.n_users])
        if self._scipy is None or self._scipy[0] != self.adjacency.values().data_ptr():
            on_cpu = self.adjacency.device.type == "cpu"
            self._scipy = (self.adjacency.values().data_ptr(), scipy_view(self.adjacency) if on_cpu else None)
        total, layer = x[rows], x
        for k in range(1, self.n_layers + 1):
            total = total + rows_product(self.adjacency, rows, layer, self._scipy[1])
            if k < self.n_layers:
                layer = propagate(self.adjacency, layer)
        return (total / (self.n_layers + 1)).split([users.numel(), items.numel()])

    def forward(self, users: torch.Tensor, pos_items: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """Score matrix ``[B, 1+N]`` (column 0 the positive); ``batch_l2``, ``in_batch_scores`` and
        ``propagate_rows`` as documented."""
        user_table, item_table = self.user_table, self.item_table  # type: torch.Tensor, torch.Tensor
        if self.batch_l2:
            user_table, item_table = batch_l2_tables(user_table, item_table, users, pos_items, self.batch_l2)
        if self.propagate_rows:  # item_emb holds the rows of pos_items (then of the negatives): local indices
            scored = pos_items if self.in_batch_scores else torch.cat([pos_items, negatives.reshape(-1)])
            user_emb, item_emb = self.rows_of_layers(user_table, item_table, users, scored)
            users = torch.arange(users.numel(), device=users.device)
            pos_at = users if not self.in_batch_scores else pos_items
            neg_at = (pos_items.numel() + torch.arange(negatives.numel(), device=users.device)).view_as(negatives)
        else:
            user_emb, item_emb = self.mean_of_layers(user_table, item_table)
            pos_at, neg_at = pos_items, negatives
        u = self.dropout(finish(user_emb[users], self.similarity))
        if self.in_batch_scores:
            v = item_emb if self.propagate_rows else item_emb[pos_items]
            return in_batch_score_matrix(u, finish(v, self.similarity), pos_items, negatives, self.others_index)
        return pair_scores(u, item_emb, pos_at, neg_at, self.similarity)

"""Matrix factorisation with cosine scores (RecZoo MF; paper-reference §4).

    u = dropout(normalize(P[user]))     (dropout only in training, after normalisation)
    v = normalize(Q[item])
    s(u, i) = <u, v>

Tables are initialised from Normal(0, init_std); L2 applies to the full tables (``embedding_tables``).
``similarity="dot"`` scores by plain dot products (nothing normalised; dropout on the raw user vector).
``train`` (the training matrix every encoder is handed by the runner) is accepted and not used.
``sparse_grad`` (as ``nn.Embedding(sparse=True)``): both tables get sparse gradients of the batch's rows;
``mmlexp.optim.make_optimizer`` turns it on where its optimiser reads them without densifying.
``init`` / ``batch_l2`` / ``eval_similarity``: the SSM paper's options (``encoders.base``; defaults change nothing).
With ``batch_l2 > 0`` the forward takes the plain gather path (dense table gradients); ``in_batch_scores=true``
(``sampler=in_batch`` only) reads the ``[B, B]`` scores from one product (``encoders.base.in_batch_score_matrix``;
same numbers, other float bits: off by default).
"""

import torch
import torch.nn.functional as F

from mmlexp.encoders._scoring import eval_scores, finish, pair_scores
from mmlexp.encoders.base import EmbeddingEncoder, batch_l2_tables, in_batch_score_matrix


class MatrixFactorization(EmbeddingEncoder):
    supports_graph_capture = True  # fixed shapes, gathers and dense ops only: checked in tests/test_cuda.py

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int = 64,
        dropout: float = 0.1,
        init_std: float = 1e-4,
        similarity: str = "cosine",
        init: str = "normal",
        batch_l2: float = 0.0,
        eval_similarity: str | None = None,
        in_batch_scores: bool = False,
        train=None,
    ):
        super().__init__(n_users, n_items, dim, init_std, similarity, dropout, init, batch_l2, eval_similarity)
        if not isinstance(in_batch_scores, bool):
            raise ValueError(f"in_batch_scores={in_batch_scores}: must be true or false")
        self.in_batch_scores = in_batch_scores
        if in_batch_scores:  # its check of the negatives reads a result on the host
            self.supports_graph_capture = False
            self.graph_capture_note = "in_batch_scores checks its negatives on the host (not capturable)"
        self.sparse_grad = False

    def rows_read(self, users: torch.Tensor, pos_items: torch.Tensor, negatives: torch.Tensor) -> dict:
        """The table rows ``forward(users, pos_items, negatives)`` reads (TableAdam defers the others)."""
        return {self.user_table: users, self.item_table: torch.cat([pos_items.reshape(-1), negatives.reshape(-1)])}

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        # Sparse (B rows) also when a dense gradient is there to take it (the trainer's start_gradients_).
        rows = F.embedding(users, self.user_table, sparse=self.sparse_grad or self.user_table.grad is not None)
        return self.dropout(finish(rows, self.similarity))

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return finish(self.item_table[items], self.similarity)

    def forward(self, users: torch.Tensor, pos_items: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """Score matrix ``[B, 1+N]``: column 0 ``pos_items[B]``, then ``negatives`` ``[B, N]`` (or ``[1, N]``
        shared by every row).  One user vector per row (one dropout mask for the whole row)."""
        if self.batch_l2 or self.in_batch_scores:
            user_table, item_table = self.user_table, self.item_table  # type: torch.Tensor, torch.Tensor
            if self.batch_l2:
                user_table, item_table = batch_l2_tables(user_table, item_table, users, pos_items, self.batch_l2)
            u = self.dropout(finish(user_table[users], self.similarity))
            if self.in_batch_scores:
                v = finish(item_table[pos_items], self.similarity)
                return in_batch_score_matrix(u, v, pos_items, negatives, self.others_index)
            return pair_scores(u, item_table, pos_items, negatives, self.similarity)
        return pair_scores(
            self.user_vectors(users), self.item_table, pos_items, negatives, self.similarity, self.sparse_grad
        )

    @torch.no_grad()
    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Eval-mode scores ``[B, C]`` of ``users[B]`` against ``items[B, C]`` (no dropout, no graph).
        Large candidate sets (B*C > n_items, e.g. a hard-negative pool) score the whole catalogue once."""
        sim = self.eval_similarity
        return eval_scores(finish(self.user_table[users], sim), self.item_table, items, sim)

    @torch.no_grad()
    def all_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval-mode (dropout off) user and item vectors for full ranking by dot product."""
        return finish(self.user_table, self.eval_similarity), finish(self.item_table, self.eval_similarity)

"""SVD++ (Koren, KDD'08) as an embedding encoder, one of the SSM paper's backbones (paper-reference §6).

    p_u = P[u] + |N(u)|^-1/2 * sum_{j in N(u)} Y[j]        N(u): the user's training items
    u = dropout(normalize(p_u))  ,  v = normalize(Q[item])  ,  s = <u, v>       (cosine, default)

Y is a separate implicit-item table (the classic SVD++ form; Q scores the items, Y only describes
users).  Normalisation |N(u)|^-1/2 is Koren's: it keeps the implicit part's norm roughly independent
of the history length when the y_j are uncorrelated (a sum of n random vectors grows like sqrt(n)),
so heavy and light users stay on one scale; a mean (1/|N(u)|) would shrink long histories, a plain
sum would let them dominate.  (The SSM paper's "SVD++-like" 1-layer LightGCN uses
1/sqrt(|N(u)||N(i)|) weights on the item table instead: that is ``encoder=lightgcn n_layers=1``.)

Classic SVD++ keeps the predicted item inside N(u) (no leave-target-out).  The implicit sum of a batch
is one sparse product: the batch rows of the row-normalised user-item matrix (built from the CSR
arrays, vectorised) as a torch sparse CSR ``[B, I]`` times Y.  L2 covers P, Q and Y.
``dropout`` (MF-style, on the normalised user vector) defaults to 0.
"""

import numpy as np
import torch
from torch import nn

from mmlexp.encoders._scoring import check_train, eval_scores, finish, pair_scores
from mmlexp.encoders.base import EmbeddingEncoder
from mmlexp.encoders.graph import batch_csr


class SVDPlusPlus(EmbeddingEncoder):
    graph_capture_note = "reads each user's history: shapes depend on the batch (graph.row_entries)"
    indptr: torch.Tensor  # buffers (register_buffer): the train CSR and its |N(u)|^-1/2 weights
    indices: torch.Tensor
    weights: torch.Tensor

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int = 64,
        dropout: float = 0.0,
        init_std: float = 1e-4,
        similarity: str = "cosine",
        train=None,
    ):
        super().__init__(n_users, n_items, dim, init_std, similarity, dropout)
        train = check_train(train, n_users, n_items, "SVD++'s implicit-feedback sum")
        self.implicit_table = nn.Parameter(torch.randn(n_items, self.dim) * init_std)
        counts = np.diff(train.indptr)
        scale = np.maximum(counts, 1).astype(np.float64) ** -0.5  # |N(u)|^-1/2 per user
        weights = np.repeat(scale, counts).astype(np.float32)  # one value per stored entry
        self.register_buffer("indptr", torch.from_numpy(train.indptr.astype(np.int64)), persistent=False)
        self.register_buffer("indices", torch.from_numpy(train.indices.astype(np.int64)), persistent=False)
        self.register_buffer("weights", torch.from_numpy(weights), persistent=False)

    def embedding_tables(self) -> list[nn.Parameter]:
        return super().embedding_tables() + [self.implicit_table]

    def raw_user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """p_u ``[B, d]`` before normalisation: own embedding + normalised implicit sum (one sparse product)."""
        rows = batch_csr(self.indptr, self.indices, self.weights, users, self.n_items)
        return self.user_table[users] + rows @ self.implicit_table

    def forward(self, users: torch.Tensor, pos_items: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """Score matrix ``[B, 1+N]`` (column 0 the positive; ``negatives`` ``[B, N]`` or shared ``[1, N]``)."""
        u = self.dropout(finish(self.raw_user_vectors(users), self.similarity))
        return pair_scores(u, self.item_table, pos_items, negatives, self.similarity)

    @torch.no_grad()
    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        u = finish(self.raw_user_vectors(users), self.similarity)
        return eval_scores(u, self.item_table, items, self.similarity)

    @torch.no_grad()
    def all_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        users = torch.arange(self.n_users, device=self.indptr.device)
        return (finish(self.raw_user_vectors(users), self.similarity), finish(self.item_table, self.similarity))

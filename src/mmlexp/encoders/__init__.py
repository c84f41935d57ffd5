"""Encoders map user and item ids to embeddings; scores are cosine (default) or dot products.

Every encoder: ``__init__(n_users, n_items, ..., similarity="cosine", train=None)``,
``forward(users[B], pos_items[B], negatives[B, N] or [1, N]) -> [B, 1+N]`` (training rows),
``score(users[B], items[B, C]) -> [B, C]`` (no-grad, eval mode), ``all_embeddings()`` (eval-mode user
and item vectors, full-ranking score = dot product) and ``embedding_tables()`` (what L2 covers).
The checked common arguments and the user / item tables live in ``base.EmbeddingEncoder``; the scoring
path (cosine or dot) in ``_scoring``.

mf         MatrixFactorization   user/item tables (train not used)
simplex    SimpleX               user embedding + aggregated history (needs train)
svdpp      SVDPlusPlus           user embedding + |N(u)|^-1/2 sum of implicit item vectors (needs train)
lightgcn   LightGCN              layer mean of A_hat^l E0 (needs train)
ngcf       NGCF                  concatenated NGCF layer outputs (needs train)
"""

from mmlexp.encoders.graph import normalized_adjacency
from mmlexp.encoders.lightgcn import LightGCN
from mmlexp.encoders.mf import MatrixFactorization
from mmlexp.encoders.ngcf import NGCF
from mmlexp.encoders.simplex import SimpleX
from mmlexp.encoders.svdpp import SVDPlusPlus

__all__ = ["MatrixFactorization", "SimpleX", "SVDPlusPlus", "LightGCN", "NGCF", "normalized_adjacency"]

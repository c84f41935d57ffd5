"""Encoders map user and item ids to embeddings; the trainer scores them by cosine."""

from mmlexp.encoders.mf import MatrixFactorization

__all__ = ["MatrixFactorization"]

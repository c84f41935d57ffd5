"""Full-ranking top-K evaluation (paper-reference §8, LightGCN protocol), one module per concern.

- :mod:`~mmlexp.evaluation.ranking`: the top-K ranking kernels (dense ``topk``, exact ``blocked``
  selection, ``bf16`` screen with exact re-scoring), :func:`rank_top_k`;
- :mod:`~mmlexp.evaluation.metrics`: Recall/NDCG/Precision/HitRate@K, :func:`evaluate_embeddings`;
- :mod:`~mmlexp.evaluation.longtail`: item popularity groups and the long-tail metrics, :class:`LongTail`.

Everything public is imported from here (``from mmlexp.evaluation import evaluate_embeddings``).
"""

from mmlexp.evaluation.longtail import LONGTAIL_SPLITS, LongTail, popularity_groups
from mmlexp.evaluation.metrics import METRICS, SELECTIONS, evaluate_embeddings, metric_key_for_mlflow
from mmlexp.evaluation.ranking import METHODS, rank_top_k

__all__ = [
    "METRICS",
    "METHODS",
    "LONGTAIL_SPLITS",
    "SELECTIONS",
    "LongTail",
    "popularity_groups",
    "evaluate_embeddings",
    "rank_top_k",
    "metric_key_for_mlflow",
]

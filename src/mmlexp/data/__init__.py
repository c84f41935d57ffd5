"""Interaction datasets: train and test CSR matrices, by name.

* ``dataset``: ``InteractionData``, ``DataError``, the canonical CSR and the parsed-data cache.
* ``lightgcn``: the LightGCN text format (``sample``, ``gowalla``, ``yelp2018``, ``custom``).
* ``interactions``: any CSV/TSV/Parquet/RecBole ``.inter`` log, filtered and split here (``dataset=interactions``).
* ``splits``: per-user holdouts (that test split, and the ``eval.selection=valid`` slice).
* ``load``: ``load_dataset(name, ...)``.
"""

from mmlexp.data.dataset import DataError, InteractionData
from mmlexp.data.lightgcn import KNOWN_DATASETS, parse_lightgcn
from mmlexp.data.load import DATASET_NAMES, load_dataset
from mmlexp.data.splits import holdout

__all__ = [
    "DataError",
    "InteractionData",
    "KNOWN_DATASETS",
    "DATASET_NAMES",
    "parse_lightgcn",
    "load_dataset",
    "holdout",
]

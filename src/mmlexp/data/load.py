"""``load_dataset(name, ...)``: a dataset by name, from the reader that knows it."""

from __future__ import annotations

from pathlib import Path

from mmlexp.data.dataset import DataError, InteractionData
from mmlexp.data.interactions import load_interactions
from mmlexp.data.lightgcn import KNOWN_DATASETS, load_custom, load_known, load_sample

DATASET_NAMES = ("sample", *KNOWN_DATASETS, "custom", "interactions")


def load_dataset(
    name: str,
    *,
    path: str | Path | None = None,
    data_dir=None,
    cache_dir=None,
    base_url: str | None = None,
    download: bool = True,
    options=None,
) -> InteractionData:
    """Load a dataset by name: ``sample``, ``gowalla``, ``yelp2018``, ``custom`` or ``interactions`` (need ``path``).

    ``options``: the ``interactions`` loader's settings (columns, filters, split: conf/dataset/interactions.yaml).

    ``data_dir`` defaults to $MMLEXP_DATA_DIR, else the user data dir; ``cache_dir`` to
    $MMLEXP_CACHE_DIR, else the user cache dir; ``base_url`` to $MMLEXP_DATA_URL, else
    the LightGCN repository.
    """
    if name not in DATASET_NAMES:
        raise DataError(f"unknown dataset {name!r}; allowed: {', '.join(DATASET_NAMES)}")
    if path is not None and name not in ("custom", "interactions"):
        raise DataError(
            f"dataset.path={str(path)!r} is only read by dataset=custom or dataset=interactions (got dataset={name}); "
            "allowed: dataset.path=null here, or one of those datasets"
        )
    if name == "interactions":
        if path is None:
            raise DataError("name='interactions' needs path= a CSV, TSV, Parquet or RecBole .inter file")
        return load_interactions(path, options, cache_dir)
    if name in KNOWN_DATASETS:
        return load_known(name, data_dir, cache_dir, base_url, download)
    if name == "sample":
        return load_sample()
    return load_custom(path)

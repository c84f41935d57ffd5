"""Per-user Recall@K and NDCG@K: the values that :func:`~mmlexp.evaluation.evaluate_embeddings` averages.

For every user ``u`` with at least one test item (test set ``T_u``; train items masked, top-K list ``R_u``,
the same ranking as the aggregate metrics, :mod:`mmlexp.evaluation.metrics`):

- ``recall@K(u) = |R_u ∩ T_u| / |T_u|``
- ``ndcg@K(u)   = sum_{r<=K} 1[R_u[r] in T_u] / log2(r+1)  /  sum_{r<=min(K,|T_u|)} 1 / log2(r+1)``

so that ``mean_u recall@K(u)`` is the logged ``recall@K`` (likewise NDCG).

After training, a run writes these values for its selected epoch's weights on the TEST split to
``<run dir>/per_user.csv.gz`` and logs that file as an MLflow artifact (:func:`save_run_per_user`): a gzip'd
CSV with columns ``user, recall@K, ndcg@K`` (each K of ``eval.ks``), one row per evaluated user, sorted by
user id, gzip header without time or name (same values, same bytes). Runs from before this file existed:
``python -m mmlexp.report.per_user_backfill`` rebuilds it from ``best.pt``.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from mmlexp.evaluation._checks import _as_csr, _check_embeddings, _check_ks
from mmlexp.evaluation.metrics import _hits, _without
from mmlexp.evaluation.ranking import _rank

PER_USER_FILE = "per_user.csv.gz"
PER_USER_METRICS = ("recall", "ndcg")

log = logging.getLogger("mmlexp")


def per_user_metrics(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    train: sp.spmatrix,
    test: sp.spmatrix,
    ks=(20,),
    *,
    chunk_size: int | None = None,
) -> pd.DataFrame:
    """Recall@K and NDCG@K of every user with a test item (module docstring): columns ``user``, then
    ``recall@K, ndcg@K`` for each K of ``ks``; one row per user, sorted by user id. Arguments as in
    ``evaluate_embeddings`` (same checks, same masking, same top-K ranking)."""
    n_users, n_items = _check_embeddings(user_emb, item_emb)
    ks = _check_ks(ks, n_items)
    train = _as_csr(train, "train", (n_users, n_items))
    test = _as_csr(test, "test", (n_users, n_items))
    n_test = np.diff(test.indptr)
    users = np.flatnonzero(n_test)
    if users.size == 0:
        raise ValueError("test has no interactions: there is no user to evaluate")
    top = _rank(user_emb, item_emb, _without(train, test), max(ks), users, chunk_size, "auto", False)
    values = _per_user(_hits(top, test[users]), torch.from_numpy(n_test[users]).double(), ks)
    return pd.DataFrame({"user": users.astype(np.int64), **values})


def _per_user(hits: torch.Tensor, n_test: torch.Tensor, ks: list[int]) -> dict[str, np.ndarray]:
    """``{"recall@K": [n], "ndcg@K": [n]}`` float64 from the [n, K_max] hit matrix (operations of
    ``metrics._metrics``, so the means are its numbers)."""
    k_max = hits.shape[1]
    disc = 1.0 / torch.log2(torch.arange(2, k_max + 2, dtype=torch.float64))
    n_hit = hits.cumsum(dim=1)
    dcg = (hits * disc).cumsum(dim=1)
    idcg = disc.cumsum(dim=0)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        ideal = idcg[(n_test.clamp(max=k) - 1).long()]
        out[f"recall@{k}"] = (n_hit[:, k - 1] / n_test).numpy()
        out[f"ndcg@{k}"] = (dcg[:, k - 1] / ideal).numpy()
    return out


def write_per_user(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """``frame`` as gzip'd CSV at ``path`` (floats as Python writes them: exact round trip), the gzip header
    without time or file name, so the same values give the same bytes; returns the path."""
    path = Path(path)
    data = frame.to_csv(index=False, lineterminator="\n").encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(data)
    os.replace(tmp, path)
    return path


def mismatches(frame: pd.DataFrame, metrics: Mapping[str, float], tolerance: float) -> list[str]:
    """The per-user columns whose mean differs from ``metrics`` (the run's aggregate ``recall@K`` ...) by more
    than ``tolerance``, as readable lines; columns without an aggregate are skipped."""
    out = []
    for col in frame.columns[1:]:
        if col in metrics and not math.isclose(
            float(frame[col].mean()), float(metrics[col]), rel_tol=0, abs_tol=tolerance
        ):
            out.append(f"mean {col} over users {frame[col].mean():.6f}, the run's {col} {float(metrics[col]):.6f}")
    return out


def saved_ks(ks) -> list[int]:
    """The K of the saved file: 20 (the paper's claims), else the first of ``ks``; one K keeps committed files small."""
    return [20] if 20 in ks else list(ks)[:1]


def save_run_per_user(model, result, data, ks, chunk_size, out_dir: Path, tracker) -> Path | None:
    """After ``fit``: ``result.best_state`` loaded into ``model`` (training is over), its per-user test metrics
    at K = 20 (the K of the paper's claims; the first of ``ks`` when 20 is not among them)
    (``data.train`` masked, ``data.test``) -> ``out_dir/per_user.csv.gz``, logged as the run's artifact.
    An error is a warning and a ``per_user.error`` tag, not a failed run (the backfill command redoes it)."""
    if not result.best_state:
        return None
    try:
        model.load_state_dict(result.best_state)
        model.eval()
        user_emb, item_emb = model.all_embeddings()
        frame = per_user_metrics(user_emb, item_emb, data.train, data.test, saved_ks(ks), chunk_size=chunk_size)
        path = write_per_user(frame, Path(out_dir) / PER_USER_FILE)
        tracker.log_artifact(path)
    except Exception as err:  # evidence after the fact: the trained run stays FINISHED
        why = f"{type(err).__name__}: {str(err).strip()[:300]}"
        log.warning(f"per-user metrics not saved ({why}); python -m mmlexp.report.per_user_backfill redoes it")
        tracker.set_tags({"per_user.error": why})
        return None
    for line in mismatches(frame, result.best_metrics, 1e-9):
        log.warning(f"per-user metrics: {line}")
    return path


__all__ = ["PER_USER_FILE", "saved_ks", "per_user_metrics", "write_per_user", "mismatches", "save_run_per_user"]

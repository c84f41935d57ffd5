"""Memory a run needs, estimated from the config and the dataset sizes before anything is built (issue 31).

``estimate`` sums what stays resident (the embedding tables with their gradients and Adam moments, the
training pairs, a graph encoder's adjacency) and adds the larger of the two transient peaks: one training step
(the ``[B, 1 + N]`` item indices and scores with their gradients and the backward's temporaries,
the gathered ``[B, 1 + N, d]`` rows where the step gathers them, a graph encoder's propagated layers) and the
full-ranking evaluation (a block of users x all items scores per worker, the propagated tables).
``check_memory`` compares the total with the memory available on the run's device (``psutil``'s available
system memory, or ``torch.cuda.mem_get_info``) and refuses with a ``ConfigError`` naming the keys that size the
largest part.  It is an estimate, not a byte count: tests/test_memory_check.py holds it within 2x of the peak
measured on the CPU (and, where a GPU is lent, of the CUDA allocator's).  ``trainer.memory_check=false`` skips it.
"""

from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig

from mmlexp.config import ConfigError
from mmlexp.evaluation.ranking import workspace_bytes

FLOAT, INDEX = 4, 8  # bytes of a float32 score or weight, of an int64 index
TABLE_COPIES = 4  # weights, gradient, Adam's two moments
# Per (row, column) of a step's [B, 1 + N] score matrix (measured on the CPU path, tests/test_memory_check.py):
SCORE_COPIES = 5  # scores, the cosine norms, the upstream gradient, the backward's two coefficients
INDEX_COPIES = 3  # the negatives, the [positive, negatives] items gathered, the backward's order of entries
GATHER_COPIES = 2  # the gathered rows and their gradient (autograd gather paths)
GRAPH_COPIES = {"lightgcn": 2, "ngcf": 4}  # propagated layers kept for backward (+ NGCF's transforms)
GIB = 2**30


@dataclass
class Estimate:
    """Bytes by part, and the config keys that size each part."""

    resident: dict[str, int] = field(default_factory=dict)
    step: dict[str, int] = field(default_factory=dict)
    evaluation: dict[str, int] = field(default_factory=dict)
    keys: dict[str, list[str]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """The peak: what stays resident plus the larger of a training step and the evaluation."""
        return sum(self.resident.values()) + max(sum(self.step.values()), sum(self.evaluation.values()))

    def largest(self) -> str:
        """The part (``tables``, ``step``, ``evaluation``, ...) that weighs most."""
        parts = dict(self.resident) | {"step": sum(self.step.values()), "evaluation": sum(self.evaluation.values())}
        return max(parts, key=lambda k: parts[k])


def _kind(node: DictConfig) -> str:
    """``mmlexp.samplers.uniform.UniformSampler`` -> ``uniform`` (option, module and file share one name)."""
    parts = str(node.get("_target_", "")).split(".")
    return parts[-2] if len(parts) >= 2 else ""


def negatives_key(cfg: DictConfig) -> str:
    """The key a user sets for N: the top-level ``num_negatives`` unless the sampler overrides it."""
    if cfg.get("num_negatives") is not None and cfg.get("num_negatives") == cfg.sampler.get("num_negatives"):
        return "num_negatives"
    return "sampler.num_negatives"


def _table_rows(cfg: DictConfig, n_users: int, n_items: int) -> int:
    """Rows of the trained embedding tables: users and items, plus SVD++'s implicit and SimpleX's history table."""
    kind = _kind(cfg.encoder)
    extra = n_items if kind == "svdpp" or (kind == "simplex" and not cfg.encoder.get("share_history_table")) else 0
    return n_users + n_items + extra


def _step_bytes(cfg: DictConfig, n_items: int, device: torch.device) -> dict[str, int]:
    """One training step's transient tensors, by the sampler's shape of negatives."""
    batch, dim = int(cfg.trainer.batch_size), int(cfg.encoder.get("dim", 64))
    n = int(cfg.sampler.get("num_negatives") or 1)
    kind = _kind(cfg.sampler)
    shared = kind == "shared" or (kind == "popularity" and bool(cfg.sampler.get("shared")))
    cols = batch if kind == "in_batch" else 1 + n  # in-batch: the other rows' positives are the negatives
    gathers = device.type != "cpu" or cfg.encoder.get("similarity", "cosine") == "dot"  # CPU cosine reads in place
    out = {
        "scores": batch * cols * FLOAT * SCORE_COPIES,
        "indices": (cols if shared else batch * cols) * INDEX * INDEX_COPIES,
    }
    if gathers:
        out["gathered rows"] = (1 + n if shared else batch * cols) * dim * FLOAT * GATHER_COPIES
    if kind == "hard":  # a pool of candidates per row, scored without grad
        pool = int(cfg.sampler.get("pool_size") or 4 * n)
        out["hard-negative pool"] = batch * pool * (INDEX + FLOAT + (dim * FLOAT if gathers else 0))
    return out


def _graph_bytes(cfg: DictConfig, n_users: int, n_items: int, nnz: int) -> tuple[int, int]:
    """(adjacency, propagated layers) of a graph encoder; (0, 0) for the others."""
    copies = GRAPH_COPIES.get(_kind(cfg.encoder), 0)
    layers = int(cfg.encoder.get("n_layers", 0) or 0)
    if copies == 0 or layers == 0:
        return 0, 0
    adjacency = 2 * nnz * (INDEX + FLOAT) + (n_users + n_items + 1) * INDEX  # symmetric CSR
    propagated = (layers + 1) * (n_users + n_items) * int(cfg.encoder.get("dim", 64)) * FLOAT * copies
    return adjacency, propagated


def _eval_bytes(cfg: DictConfig, n_users: int, n_items: int, device: torch.device) -> dict[str, int]:
    """Full-ranking evaluation: the ranking workers' blocks of users x all items scores with their selection (see
    :func:`mmlexp.evaluation.ranking.workspace_bytes`), the embeddings and the top-k indices."""
    k_max = max(int(k) for k in cfg.eval.ks)
    dim = int(cfg.encoder.get("dim", 64))
    threads = int(cfg.trainer.get("num_threads") or torch.get_num_threads())
    work = workspace_bytes(n_users, n_items, dim, k_max, cfg.eval.get("chunk_size"), device, threads)
    return {
        "score blocks": sum(work.values()),
        "embeddings": (n_users + n_items) * dim * FLOAT,
        "top-k": n_users * k_max * INDEX,
    }


def estimate(cfg: DictConfig, n_users: int, n_items: int, nnz: int, device: torch.device) -> Estimate:
    """The bytes a run of ``cfg`` needs on ``device`` for a dataset of these sizes (``nnz``: train interactions)."""
    dim = int(cfg.encoder.get("dim", 64))
    adjacency, propagated = _graph_bytes(cfg, n_users, n_items, nnz)
    est = Estimate()
    est.resident = {
        "tables": _table_rows(cfg, n_users, n_items) * dim * FLOAT * TABLE_COPIES,
        "training pairs": 3 * nnz * INDEX,  # users, items and an epoch's permutation
    }
    if adjacency:
        est.resident["adjacency"] = adjacency
    est.step = _step_bytes(cfg, n_items, device) | ({"propagated layers": propagated} if propagated else {})
    est.evaluation = _eval_bytes(cfg, n_users, n_items, device) | (
        {"propagated tables": propagated // 2} if propagated else {}
    )
    n_key, b_key = negatives_key(cfg), "trainer.batch_size"
    graph_keys = ["encoder.n_layers", "encoder.dim"]
    est.keys = {
        "step": [b_key, n_key, "encoder.dim"] + (["sampler.pool_size"] if _kind(cfg.sampler) == "hard" else []),
        "evaluation": ["eval.chunk_size", "trainer.num_threads", "eval.ks"],
        "tables": ["encoder.dim"],
        "training pairs": [],
        "adjacency": graph_keys,
    }
    return est


def available_bytes(device: torch.device) -> tuple[int, str]:
    """Free memory on ``device`` and where it was read."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free), f"free memory on {device} (torch.cuda.mem_get_info)"
    import psutil

    return int(psutil.virtual_memory().available), "available system memory (psutil)"


def _gib(n: int) -> str:
    return f"{n / GIB:,.1f} GiB" if n >= GIB / 10 else f"{n / 2**20:,.1f} MiB"


def _either(names: list[str]) -> str:
    """``a, b or c``."""
    if not names:
        return "the sizes"
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _setting(cfg: DictConfig, key: str) -> str:
    from omegaconf import OmegaConf

    return f"{key}={OmegaConf.select(cfg, key)!r}"


def refusal(cfg: DictConfig, est: Estimate, free: int, where: str, sizes: str) -> str:
    """The message of a refused run: the keys that size the largest part, the estimate and what is available."""
    part = est.largest()
    keys = [_setting(cfg, k) for k in est.keys.get(part, [])]
    detail = est.step if part == "step" else est.evaluation if part == "evaluation" else {part: est.resident[part]}
    shown = ", ".join(f"{name} {_gib(b)}" for name, b in sorted(detail.items(), key=lambda kv: -kv[1]))
    return (
        f"{', '.join(keys + [sizes])}: the run needs about {_gib(est.total)} (estimate; {part}: {shown}), "
        f"more than the {_gib(free)} of {where}. Lower {_either([k.split('=')[0] for k in keys])}, "
        "or set trainer.memory_check=false to skip this check"
    )


def check_memory(cfg: DictConfig, n_users: int, n_items: int, nnz: int, device: torch.device) -> Estimate:
    """Raise ``ConfigError`` when the run cannot fit on ``device`` (skipped with ``trainer.memory_check=false``)."""
    est = estimate(cfg, n_users, n_items, nnz, device)
    if not cfg.trainer.get("memory_check", True) or device.type not in ("cpu", "cuda"):
        return est
    free, where = available_bytes(device)
    if est.total > free:
        sizes = f"dataset {cfg.dataset.name} ({n_users:,} users, {n_items:,} items, {nnz:,} train interactions)"
        raise ConfigError(refusal(cfg, est, free, where, sizes))
    return est

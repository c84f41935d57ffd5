"""Which optimiser a run gets (``trainer.optimizer``) and whether TableAdam defers rows (``trainer.defer_rows``).

``adam`` is the paper's dense Adam with L2 on the full tables and the clip norm (paper-reference §3,
``TableAdam``); ``sparse_adam`` is ``LazyAdam`` (touched rows only, L2 on them: the RecZoo/RecBox
convention).  Deferring rows pays where a step reads few item rows: with ``draws`` uniform draws over
n rows a step reads ``1 - (1 - 1/n)^draws`` of them in expectation; ``auto`` defers at ``AUTO_MAX_SHARE``
or less (``benchmarks/results/deferred_rows_cpu.md``).
"""

import weakref
from typing import Any

import numpy as np
import torch
from torch import nn

from mmlexp.config import switch
from mmlexp.optim.lazy_adam import LazyAdam
from mmlexp.optim.sparse_rows import takes_sparse_grads
from mmlexp.optim.table_adam import TableAdam

OPTIMIZERS = ("adam", "sparse_adam")
AUTO_MAX_SHARE = 0.10  # trainer.defer_rows=auto defers where a step reads at most this share of the item table


def make_optimizer(
    model: nn.Module, lr: float, name: str = "adam", l2: float = 0.0, defer: bool = False
) -> torch.optim.Optimizer:
    """``adam``: dense Adam with torch defaults (paper-reference §3) as ``TableAdam``: the embedding tables
    in its L2 group, other parameters without L2 (``train_step`` passes ``l2`` and the clip norm to each
    step).  A model with a ``sparse_grad`` switch gets it on where TableAdam reads sparse gradients without
    densifying them.  ``sparse_adam``: ``LazyAdam``, a faster variant that changes the semantics (only
    touched rows move; ``l2`` on those rows only).  ``defer``: TableAdam defers the rows a step does not
    read and replays them exactly (``mmlexp.optim.deferred_rows``; ``choose_deferred_rows`` decides)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer: torch.optim.Optimizer
    if name == "sparse_adam":
        optimizer = LazyAdam(params, lr=lr, weight_decay=l2)
    elif name == "adam":
        declared = getattr(model, "embedding_tables", None)  # the encoders' tables under L2
        tables = {id(t) for t in declared()} if declared is not None else set()
        groups: list[dict[str, Any]] = [
            {"params": [p for p in params if id(p) in tables]},
            {"params": [p for p in params if id(p) not in tables], "decay": False},
        ]
        table_adam = TableAdam([g for g in groups if g["params"]], lr=lr, defer=defer)
        if defer:
            _materialize_on_model_io(model, table_adam)
        optimizer = table_adam
    else:
        raise ValueError(f"optimizer={name!r}: must be one of {', '.join(OPTIMIZERS)}")
    if hasattr(model, "sparse_grad"):  # both update a sparse gradient's rows directly on the numba path
        setattr(model, "sparse_grad", takes_sparse_grads(params))  # noqa: B010 (a plain attribute of MF)
    return optimizer


def _materialize_on_model_io(model: nn.Module, optimizer: TableAdam) -> None:
    """``model.state_dict()`` and ``model.load_state_dict()`` see (and replace) every row up to date:
    ``optimizer.materialize()`` first (rows TableAdam deferred, ``mmlexp.optim.deferred_rows``)."""
    ref = weakref.ref(optimizer)

    def hook(*_args, **_kwargs):
        live = ref()
        if live is not None:
            live.materialize()

    model.register_state_dict_pre_hook(hook)
    model.register_load_state_dict_pre_hook(hook)


def item_draws(sampler, batch: int) -> int:
    """Item rows one step reads, repeats counted, as the sampler declares them (``item_draws(batch)``: B
    positives + B x N negatives per row, B + N for a shared draw, B for in-batch negatives); a sampler that
    declares nothing counts as drawing its ``num_negatives`` per row, as ``NegativeSampler.item_draws``."""
    declared = getattr(sampler, "item_draws", None)
    if declared is not None:
        return int(declared(batch))
    return batch * (1 + getattr(sampler, "num_negatives", 0))


def choose_deferred_rows(mode, sampler, batch: int, n_items: int, device: torch.device) -> tuple[bool, str]:
    """``trainer.defer_rows`` (auto | on | off; YAML's true/false as on/off) -> (defer, why).  ``auto`` defers on the
    CPU where a step reads at most ``AUTO_MAX_SHARE`` of the item rows: there deferral measured faster (Gowalla
    at 10 negatives), and slower where a step reads about half the table (Gowalla at 100)."""
    mode = switch("trainer.defer_rows", mode)
    if mode != "auto":
        return mode == "on", f"trainer.defer_rows={mode}"
    if device.type != "cpu":
        return False, f"trainer.defer_rows=auto: off on {device.type} (deferred rows are a CPU path)"
    draws = item_draws(sampler, batch)
    share = -np.expm1(draws * np.log1p(-1.0 / max(n_items, 2)))
    verdict = "on" if share <= AUTO_MAX_SHARE else "off"
    return verdict == "on", (
        f"trainer.defer_rows=auto: {verdict} (a step reads about {share:.0%} of the {n_items:,} item rows; "
        f"deferring pays at {AUTO_MAX_SHARE:.0%} or less)"
    )

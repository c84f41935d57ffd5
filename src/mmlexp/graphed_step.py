"""The training step as one CUDA graph (``trainer.cuda_graph``): one launch per step instead of ~60.

What is captured: the whole ``train.train_step`` on static ``users``/``items`` buffers of the full batch
size B (so one graph per run: N follows from the sampler): the negative draw on the device, the scores,
the loss, the backward and TableAdam's fused update (L2, clip norm as ``grad_scale``, Adam state ``step``
on the device).  The gradients are set to None before the capture, so the captured backward writes them
(no accumulate, no zero-fill) into memory of the graph's private pool, as in torch's whole-network
example.  The first ``WARMUP`` full batches run eagerly on a side stream (real steps: lazy state such as
Adam's moments and cuBLAS workspaces is created outside the capture), the next is captured on that stream
and replayed; every later full batch is a copy into the buffers and one replay.  A batch of another size
(the epoch's last, smaller one) runs eagerly through ``train_step``.

RNG: the sampler's generator is registered with the graph (``CUDAGraph.register_generator_state``), and
dropout uses the default CUDA generator, which every graph registers.  A replay advances each generator's
philox offset by what the captured kernels consume, and each kernel reads its offset as the eager kernel
would, so graphed draws are the same stream as eager ones (negatives, dropout masks) and the generator
states in a checkpoint stay exact.  Seeded runs are reproducible; float sums made with atomics
(``index_add_`` in the backward) can still differ in the last bits between any two CUDA runs, eager too.

What stays eager, each with its reason (``eager_reason``): other devices, ``trainer.precision=bf16``,
``trainer.optimizer=sparse_adam``, another optimiser than TableAdam, TableAdam with deferred rows,
parameters that fused Adam does not take, and encoders or samplers that do not declare
``supports_graph_capture`` (their ``graph_capture_note`` says why: ``encoders.base``, ``samplers.base``;
of the built-in ones MF and the uniform, popularity, shared and in-batch samplers are checked, uniform
not with ``exclude_positives``), or a sampler drawing off the device.
"""

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mmlexp.config import switch
from mmlexp.optim import TableAdam
from mmlexp.samplers.base import GRAPH_CAPTURE_NOTE, SUPPORTS_GRAPH_CAPTURE

log = logging.getLogger(__name__)

WARMUP = 3  # eager steps on the side stream before the capture (torch.cuda.make_graphed_callables' default)

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cuda_graph_mode(value: Any) -> str:
    """``trainer.cuda_graph`` as one of auto, on, off (``config.switch``)."""
    return switch("trainer.cuda_graph", value)


def eager_reason(model: nn.Module, sampler, optimizer: torch.optim.Optimizer, settings) -> str | None:
    """Why this training step cannot be captured (the option that prevents it), or None."""
    params = [p for p in model.parameters() if p.requires_grad]
    if settings.precision != "fp32":
        return f"trainer.precision={settings.precision}: autocast (its cast cache must be off in a graph) stays eager"
    if settings.optimizer != "adam" or not isinstance(optimizer, TableAdam):
        return (
            f"trainer.optimizer={settings.optimizer} ({type(optimizer).__name__}): only TableAdam's fused "
            "update is captured (LazyAdam coalesces the touched rows: shapes depend on the batch)"
        )
    if optimizer.defer:
        return "TableAdam(defer=True): deferred rows are replayed on the host"
    if not getattr(model, "supports_graph_capture", False):  # the encoders' declaration (encoders.base)
        return f"encoder {type(model).__name__} {getattr(model, 'graph_capture_note', GRAPH_CAPTURE_NOTE)}"
    if not getattr(sampler, "supports_graph_capture", SUPPORTS_GRAPH_CAPTURE):  # the samplers' (samplers.base)
        return f"sampler {type(sampler).__name__} {getattr(sampler, 'graph_capture_note', GRAPH_CAPTURE_NOTE)}"
    devices = {p.device.type for p in params} | {sampler.device.type}
    generator = getattr(sampler, "generator", None)
    if generator is not None:
        devices.add(generator.device.type)
    if devices != {"cuda"}:
        return f"the model, sampler or generator is on {'/'.join(sorted(devices - {'cuda'}))}, not CUDA"
    if any(p.dtype not in (torch.float32, torch.float64) for p in params):
        return "parameters other than float32/float64: TableAdam's unfused Adam reads its step on the host"
    return None


def training_step(step: Step, model: nn.Module, sampler, optimizer: torch.optim.Optimizer, settings) -> Step:
    """``step`` (eager ``train_step`` on a batch) or the graphed one, as ``settings.cuda_graph`` asks:
    ``auto`` graphs on CUDA where the options allow (the reason logged at INFO where not), ``on`` the same with
    the reason as a WARNING (also off CUDA), ``off`` is always eager."""
    mode = cuda_graph_mode(settings.cuda_graph)
    on_cuda = any(p.is_cuda for p in model.parameters())
    if mode == "off" or (mode == "auto" and not on_cuda):
        return step
    reason = eager_reason(model, sampler, optimizer, settings)
    if reason is not None:
        level = logging.WARNING if mode == "on" else logging.INFO
        log.log(level, f"trainer.cuda_graph={mode}: the training step runs eagerly ({reason})")
        return step
    return GraphedStep(step, settings.batch_size, generator=getattr(sampler, "generator", None))


class GraphedStep:
    """``step(users, items)`` with full batches (``batch`` rows) copied into static buffers; on CUDA the step
    on them is captured once (after ``warmup`` eager ones) and replayed.  Returns the loss tensor (on CUDA the
    graph's static one: read it before the next call overwrites it).  Off CUDA the buffered step just runs
    eagerly (what the CPU tests compare with ``train_step``)."""

    def __init__(self, step: Step, batch: int, generator: torch.Generator | None = None, warmup: int = WARMUP):
        self.step, self.batch, self.generator, self.warmup = step, batch, generator, warmup
        self.users: torch.Tensor | None = None
        self.items: torch.Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.loss: torch.Tensor | None = None
        self.eager_steps = 0  # full batches run eagerly (the warm-up)
        self._stream: torch.cuda.Stream | None = None

    def __call__(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        if users.shape[0] != self.batch:
            return self.step(users, items)
        if self.users is None or self.items is None:
            self.users, self.items = torch.empty_like(users), torch.empty_like(items)
        static_users, static_items = self.users, self.items
        static_users.copy_(users)
        static_items.copy_(items)
        if self.graph is not None and self.loss is not None:
            self.graph.replay()
            return self.loss
        if not users.is_cuda:
            return self.step(static_users, static_items)
        if self._stream is None:
            self._stream = torch.cuda.Stream(users.device)
        stream, main = self._stream, torch.cuda.current_stream()
        if self.eager_steps < self.warmup:
            self.eager_steps += 1
            stream.wait_stream(main)
            with torch.cuda.stream(stream):
                loss = self.step(static_users, static_items)
            main.wait_stream(stream)
            return loss
        try:
            return self._capture(stream, static_users, static_items)
        except Exception as err:  # an op we did not foresee: this run stays eager, the batch too
            log.warning(f"trainer.cuda_graph: capturing the training step failed ({err}); it runs eagerly")
            self.batch, self.graph, self.loss = -1, None, None
            return self.step(users, items)

    def _capture(self, stream: torch.cuda.Stream, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Capture the step on the buffers (nothing runs during a capture: no update, no draw), then replay it.
        ``train_step`` starts with ``zero_grad(set_to_none=True)``: the captured backward allocates the
        gradients in the graph's pool and writes them on each replay."""
        graph = torch.cuda.CUDAGraph()
        if self.generator is not None:
            graph.register_generator_state(self.generator)
        with torch.cuda.graph(graph, stream=stream):
            loss = self.step(users, items)
        self.graph, self.loss = graph, loss
        log.info(f"captured the training step in a CUDA graph (batch {self.batch})")
        graph.replay()
        return loss

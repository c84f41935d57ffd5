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

No untested fast path (issue 31): the graph is trusted only once it has matched the eager step, and any failure
ends in the eager step, for ``auto`` and ``on`` alike, with a WARNING naming the error:

- **The first replay is checked.** At the capture (batch ``WARMUP + 1``) the parameters, the optimiser state and the
  generators are copied to the host, the eager step runs on the batch (its loss and resulting state kept, on the
  host), the copy is put back, the graph is captured and replayed on the same batch.  The replay must give the eager
  loss within ``LOSS_RTOL`` = 1e-4 relative plus ``LOSS_ATOL`` = 1e-6, and every parameter and Adam state tensor
  within ``torch.allclose(rtol=STATE_RTOL, atol=STATE_ATOL)`` = (1e-4, 1e-6) of the eager ones (the atomics' rounding
  is ~1e-7 relative; a wrong update is far outside).  On a mismatch the
  warning names both losses, the eager step's result is put back and the run continues eagerly: that batch is
  applied once, as eager training would.  The host copies cost 2 x (parameters + Adam moments), once per run.
- **A failed capture or first replay** (an op we did not foresee) leaves the eager step's result of that batch in
  place (it ran just before; put back); the run continues eagerly.
- **A failed replay** (``replay()`` raising at a later batch): ``cudaGraphLaunch`` launches all of a graph or none,
  so the parameters and Adam state are those before the batch, which then runs eagerly, and so does the rest of
  the run.  Not guaranteed: the replay advances the registered generators' offsets before the launch, so after
  such a fallback the draws are not those of an uninterrupted run (still a valid run, not bit-comparable); and a
  kernel fault inside a replay is asynchronous: it surfaces later as a sticky CUDA error that stops the eager step
  too (the run then fails with that error instead of training on half-updated tables).

The CUDA calls go through ``CudaGraphs``, the seam the CPU tests replace with fakes (``tests/test_graphed_step.py``).
"""

import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Protocol

import torch
from torch import nn

from mmlexp.config import switch
from mmlexp.optim import TableAdam
from mmlexp.samplers.base import GRAPH_CAPTURE_NOTE, SUPPORTS_GRAPH_CAPTURE

log = logging.getLogger(__name__)

WARMUP = 3  # eager steps on the side stream before the capture (torch.cuda.make_graphed_callables' default)

LOSS_RTOL, LOSS_ATOL = 1e-4, 1e-6  # the first replay's loss against the eager step's
STATE_RTOL, STATE_ATOL = 1e-4, 1e-6  # its parameters and Adam state against the eager step's (torch.allclose)

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
State = Callable[[], list[torch.Tensor]]


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
    state = partial(state_tensors, model, optimizer)
    return GraphedStep(step, settings.batch_size, state, generator=getattr(sampler, "generator", None))


def state_tensors(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """What one training step writes: the parameters (and buffers) and every tensor of the optimiser's state."""
    tensors = [t.detach() for t in (*model.parameters(), *model.buffers())]
    for per_param in optimizer.state.values():
        tensors += [t for t in per_param.values() if isinstance(t, torch.Tensor)]
    return tensors


class Graph(Protocol):
    def replay(self) -> None: ...


class CudaGraphs:
    """The CUDA calls of ``GraphedStep``: a side stream for the warm-up, the capture, the default generator.
    Tests pass an object with the same methods to run the CUDA-only branches on the CPU."""

    def __init__(self) -> None:
        self._stream: torch.cuda.Stream | None = None

    def applies(self, users: torch.Tensor) -> bool:
        return users.is_cuda

    def _side(self, device: torch.device) -> torch.cuda.Stream:
        if self._stream is None:
            self._stream = torch.cuda.Stream(device)
        return self._stream

    def warm_up(self, step: Step, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """One eager step on the side stream (lazy state created outside any capture)."""
        stream, main = self._side(users.device), torch.cuda.current_stream()
        stream.wait_stream(main)
        with torch.cuda.stream(stream):
            loss = step(users, items)
        main.wait_stream(stream)
        return loss

    def capture(self, step: Step, users: torch.Tensor, items: torch.Tensor, generator) -> tuple[Graph, torch.Tensor]:
        """Capture ``step`` on the buffers (nothing runs during a capture: no update, no draw): (graph, its loss).
        ``train_step`` starts with ``zero_grad(set_to_none=True)``: the captured backward allocates the gradients
        in the graph's pool and writes them on each replay."""
        graph = torch.cuda.CUDAGraph()
        if generator is not None:
            graph.register_generator_state(generator)
        with torch.cuda.graph(graph, stream=self._side(users.device)):
            loss = step(users, items)
        return graph, loss

    def default_generator(self, device: torch.device) -> torch.Generator:
        """The generator dropout draws from (every graph registers it)."""
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.default_generators[index]


class _Snapshot:
    """Host copies of the state tensors and the generators' states; ``restore`` writes them back in place (the
    graph reads the tensors at their addresses)."""

    def __init__(self, tensors: Sequence[torch.Tensor], generators: Sequence[torch.Generator]):
        self.tensors = [t.detach().to("cpu", copy=True) for t in tensors]
        self.rng = [g.get_state() for g in generators]

    def restore(self, tensors: Sequence[torch.Tensor], generators: Sequence[torch.Generator]) -> None:
        with torch.no_grad():
            for t, saved in zip(tensors, self.tensors, strict=True):
                t.copy_(saved)
        for g, saved in zip(generators, self.rng, strict=True):
            g.set_state(saved)

    def differs(self, tensors: Sequence[torch.Tensor]) -> int | None:
        """The index of the first tensor not within the state tolerance of its copy, or None."""
        for k, (t, saved) in enumerate(zip(tensors, self.tensors, strict=True)):
            if not torch.allclose(t.detach().cpu(), saved, rtol=STATE_RTOL, atol=STATE_ATOL, equal_nan=True):
                return k
        return None


class GraphedStep:
    """``step(users, items)`` with full batches (``batch`` rows) copied into static buffers; on CUDA the step
    on them is captured once (after ``warmup`` eager ones), checked against the eager step and replayed (the
    module's docstring: what is checked, what a failure leaves).  ``state()`` lists the tensors a step writes
    (``state_tensors``).  Returns the loss tensor (on CUDA the graph's static one: read it before the next call
    overwrites it).  Off CUDA the buffered step just runs eagerly (what the CPU tests compare with
    ``train_step``); ``graphs`` replaces the CUDA calls (tests)."""

    def __init__(
        self,
        step: Step,
        batch: int,
        state: State,
        generator: torch.Generator | None = None,
        warmup: int = WARMUP,
        graphs: Any = None,
    ):
        self.step, self.batch, self.state, self.generator, self.warmup = step, batch, state, generator, warmup
        self.graphs = CudaGraphs() if graphs is None else graphs
        self.users: torch.Tensor | None = None
        self.items: torch.Tensor | None = None
        self.graph: Graph | None = None
        self.loss: torch.Tensor | None = None
        self.eager_steps = 0  # full batches run eagerly (the warm-up)
        self.fallback: str | None = None  # why the run went back to the eager step, once it has

    def __call__(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        if users.shape[0] != self.batch or self.fallback is not None:
            return self.step(users, items)
        if self.users is None or self.items is None:
            self.users, self.items = torch.empty_like(users), torch.empty_like(items)
        static_users, static_items = self.users, self.items
        static_users.copy_(users)
        static_items.copy_(items)
        if self.graph is not None and self.loss is not None:
            try:
                self.graph.replay()
            except Exception as err:  # launched nothing (see the module's docstring): this batch runs eagerly
                self._eager_from_now(f"replaying the training step's CUDA graph failed ({err!r})")
                return self.step(users, items)
            return self.loss
        if not self.graphs.applies(users):
            return self.step(static_users, static_items)
        if self.eager_steps < self.warmup:
            self.eager_steps += 1
            return self.graphs.warm_up(self.step, static_users, static_items)
        return self._capture_checked(static_users, static_items)

    def _generators(self, device: torch.device) -> list[torch.Generator]:
        default = self.graphs.default_generator(device)
        return [default] if self.generator is None or self.generator is default else [self.generator, default]

    def _capture_checked(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The eager step on the batch (its result kept), then, from the same state, the capture and its first
        replay, compared with it; returns the loss of the step applied (the graph's, or the eager one on a
        failure or a mismatch, its result put back)."""
        tensors, generators = self.state(), self._generators(users.device)
        before = _Snapshot(tensors, generators)
        expected = self.step(users, items).detach().clone()
        eager = _Snapshot(tensors, generators)
        before.restore(tensors, generators)
        del before
        try:
            graph, loss = self.graphs.capture(self.step, users, items, self.generator)
            graph.replay()
            got, want = float(loss), float(expected)
        except Exception as err:  # an op we did not foresee: this run stays eager
            eager.restore(tensors, generators)
            self._eager_from_now(f"capturing the training step or its first replay failed ({err!r})")
            return expected
        bad = None if abs(got - want) <= LOSS_RTOL * abs(want) + LOSS_ATOL else "the loss"
        if bad is None and (k := eager.differs(tensors)) is not None:
            bad = f"state tensor {k} of shape {tuple(tensors[k].shape)}"
        if bad is not None:
            eager.restore(tensors, generators)
            self._eager_from_now(
                f"the first replayed step does not match the eager one ({bad} differs; loss {got!r} graphed, "
                f"{want!r} eager; tolerance rtol {LOSS_RTOL:g}/{STATE_RTOL:g}, atol {LOSS_ATOL:g}/{STATE_ATOL:g})"
            )
            return expected
        self.graph, self.loss = graph, loss
        log.info(f"captured the training step in a CUDA graph (batch {self.batch})")
        log.info(f"the first replayed step matched the eager one (loss {got!r} graphed, {want!r} eager)")
        return loss

    def _eager_from_now(self, reason: str) -> None:
        log.warning(f"trainer.cuda_graph: {reason}; the training step runs eagerly for the rest of the run")
        self.fallback, self.graph, self.loss = reason, None, None

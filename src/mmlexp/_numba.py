"""The numba settings every CPU kernel shares: the jit flags, the row blocks, a prefetch hint, threads.

``AVAILABLE`` is False where numba is missing, and ``applies_to`` says whether given tensors can be
handed over; otherwise callers take their PyTorch path.  ``jit`` compiles a kernel parallel over row
blocks with ``FAST`` math: reassociation and fused multiply-add, but NaN and inf keep their meaning
(no "nnan"/"ninf"), so a kernel's rounding follows its loop shape (the tests pin it bit for bit).
"""

from collections.abc import Callable
from typing import Any, cast

import torch

try:
    import numba as nb
    from llvmlite import ir
    from numba.extending import intrinsic

    AVAILABLE = True
except ImportError:  # pragma: no cover - numba is a dependency; the PyTorch paths stay correct without it
    nb, AVAILABLE = None, False  # type: ignore[assignment]

FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}
BLOCKS = 64  # row blocks per call: enough for any core count, few enough to amortise the dispatch
AHEAD = 8  # rows prefetched ahead in the random gathers


def jit(fn):
    """A parallel kernel (``prange`` over ``BLOCKS``), cached on disk, releasing the GIL."""
    return nb.njit(parallel=True, fastmath=FAST, cache=True, nogil=True)(fn) if AVAILABLE else fn


def serial_jit(fn):
    """A one-thread kernel in IEEE arithmetic (a counting sort, a scan that must run in order)."""
    return nb.njit(cache=True)(fn) if AVAILABLE else fn


def fast_serial_jit(fn):
    """A one-thread kernel with ``FAST`` math, releasing the GIL (a loss over a small score matrix)."""
    return nb.njit(cache=True, fastmath=FAST, nogil=True)(fn) if AVAILABLE else fn


def inline_jit(fn):
    """A helper inlined into each kernel that calls it (numba IR inlining: the caller's flags and loops)."""
    return nb.njit(inline="always")(fn) if AVAILABLE else fn


if AVAILABLE:

    @intrinsic
    def _prefetch_row(typingctx, array, row):
        """Hint the cache to fetch ``array[row]`` (``llvm.prefetch``; no effect on results).  Gathers that
        read rows in a random order no hardware prefetcher predicts: asking a few rows ahead halves their
        time when the table is not in cache."""

        def codegen(context, builder, signature, args):
            ary = context.make_array(signature.args[0])(context, builder, args[0])
            byte = ir.IntType(8).as_pointer()
            row = context.cast(builder, args[1], signature.args[1], nb.types.intp)
            offset = builder.mul(row, builder.extract_value(ary.strides, 0))
            address = builder.inttoptr(builder.add(builder.ptrtoint(ary.data, ir.IntType(64)), offset), byte)
            i32 = ir.IntType(32)
            fn = builder.module.declare_intrinsic(
                "llvm.prefetch", fnty=ir.FunctionType(ir.VoidType(), [byte, i32, i32, i32])
            )
            builder.call(
                fn, [address, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)]
            )  # read, keep, data
            return context.get_dummy_value()

        return nb.types.void(array, row), codegen

    # called from jitted code as prefetch_row(array, row): numba supplies the typing context
    prefetch_row: Callable[[Any, Any], None] = cast(Callable[[Any, Any], None], _prefetch_row)

else:  # pragma: no cover - nothing calls it without numba
    prefetch_row = None  # type: ignore[assignment]


def applies_to(*tensors) -> bool:
    """Whether the kernels can take these tensors: numba is there and each is a plain CPU fp32/fp64 tensor
    (not a ``torch.func`` transform's wrapper, which has no memory of its own to hand to numba)."""
    return AVAILABLE and all(
        t.device.type == "cpu"
        and t.dtype in (torch.float32, torch.float64)
        and not torch._C._functorch.is_functorch_wrapped_tensor(t)
        for t in tensors
    )


def start_pool() -> None:
    """Start numba's thread pool now.  Starting its OpenMP layer resets torch's intra-op threads to all cores
    (they share libgomp), so a process starts it before ``torch.set_num_threads``, not at its first kernel."""
    if AVAILABLE:
        nb.get_num_threads()  # launches the pool


def set_threads(n: int) -> None:
    """Use ``n`` threads (capped at numba's pool), to follow ``torch.get_num_threads()``."""
    if AVAILABLE:
        nb.set_num_threads(max(1, min(int(n), nb.config.NUMBA_NUM_THREADS)))  # type: ignore[attr-defined]

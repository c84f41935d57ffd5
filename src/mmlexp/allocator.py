"""The process's memory allocator settings for the CPU hot path (glibc malloc thresholds).

glibc's ``malloc`` hands every block over its mmap threshold (at most 32 MiB by default) straight
back to the kernel on ``free``, so each step's large temporaries (the ``[B, N, d]`` gathered rows:
52 MB at B=256, N=800) are page-faulted in again on every step, which costs more than the
arithmetic.  Raising the mmap and trim thresholds keeps freed blocks in the heap for reuse, as
PyTorch's CPU tuning guide gets from jemalloc/tcmalloc.  The cost is memory the process keeps
after its peak (returned at exit).
"""

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_done = False


def keep_freed_memory(limit_bytes: int = 1 << 30) -> bool:
    """Raise glibc's mmap/trim thresholds to ``limit_bytes`` (once per process); False where not glibc."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mmap_set = bool(libc.mallopt(_M_MMAP_THRESHOLD, limit_bytes))
        _done = mmap_set and bool(libc.mallopt(_M_TRIM_THRESHOLD, limit_bytes))
    except (OSError, AttributeError):
        return False
    return _done

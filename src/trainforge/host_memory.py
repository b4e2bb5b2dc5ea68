"""Host memory: keep freed activation memory in the process instead of handing it back to the kernel.

PyTorch allocates CPU tensors with the C library's ``malloc``. glibc serves blocks above a
(dynamic, at most 32 MiB) threshold with ``mmap`` and trims the heap's free top back to the
kernel, so the activations of every step or validation forward are returned at ``free`` and
faulted in again, zero-filled page by page, at the next ``malloc``. On the grokking recipe's
validation that was ~11,000 page faults per forward, 15-25 % of its time. A training loop
allocates the same sizes every step: it is better served by keeping the memory, as PyTorch's
CUDA caching allocator does on a GPU and as jemalloc or tcmalloc are preloaded to do on a CPU.

``keep_freed_memory()`` (called by ``Trainer.fit``, once per process) raises the mmap threshold
to its 32 MiB maximum and the trim threshold to 512 MiB. Cost: the process keeps up to 512 MiB
of freed heap for reuse instead of returning it. Only glibc (Linux) has these knobs; elsewhere,
and with ``TRAINFORGE_HOST_MEMORY=system``, it changes nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20   # glibc's largest: above it, mallopt refuses the value
TRIM_THRESHOLD = 512 << 20
ENV = "TRAINFORGE_HOST_MEMORY"

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Tune glibc's malloc to keep freed memory for reuse (once per process). True when it did."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if os.environ.get(ENV, "keep").strip().lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries without mallopt
        return False
    # mmap first: while the mmap threshold is dynamic, a fixed trim threshold alone would leave
    # glibc's 128 KiB default in force and make every larger tensor an mmap.
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))

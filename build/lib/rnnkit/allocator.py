"""Training's large tensors reused, not page-faulted in again every step: glibc's malloc tuned.

A training step allocates and frees the same large activations every step: an LSTM's gates
for batch 32, 128 steps and H=512 are 33 MB. glibc serves a block above its mmap threshold
(128 KB at start, rising with what is freed up to 32 MB) with a fresh ``mmap`` and unmaps it
on free, so every step the kernel maps and zeroes those pages again, one fault per 4 KB;
freed heap memory above the trim threshold goes back to the system the same way.
``benchmarks/allocator.py`` measures what that costs a CPU training step.

:func:`keep_freed_memory` raises both thresholds (``mallopt``), so freed blocks stay in the
heap for the next step: what PyTorch's CPU tuning guide gets by preloading jemalloc or
tcmalloc, without a preload. The price: the process keeps its peak heap until it exits.
It is process-wide, so only the trainer (:func:`rnnkit.training.fit`, on the CPU) calls it;
``RNNKIT_KEEP_FREED_MEMORY=0`` turns it off. On anything but Linux with glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger("rnnkit")

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, glibc's malloc.h
MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GB from the heap, reused
TRIM_THRESHOLD = (1 << 31) - 1  # (an int) the heap's free top goes back to the system above 2 GB only

_done: list[bool] = []  # once per process: the result of the first call


def keep_freed_memory() -> bool:
    """Keep blocks of up to 1 GB in the heap once freed, for reuse (see the module doc);
    ``True`` if glibc took the settings. Idempotent."""
    if not _done:
        _done.append(_tune())
    return _done[0]


def _tune() -> bool:
    if os.environ.get("RNNKIT_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    tuned = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    log.debug("malloc keeps freed blocks for reuse: %s", tuned)
    return tuned

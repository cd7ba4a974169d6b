"""Reused CPU buffers for the compiled kernels' big temporaries (see :func:`reused_buffer`)."""

from __future__ import annotations

import math
import threading

import torch
from torch import Tensor

_pools = threading.local()
MAX_BUFFERS = 8  # per thread: a 2-layer minLSTM holds 5 at its peak (x W^T and h per layer, one dk)


def reused_buffer(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """An uninitialised CPU tensor of ``shape`` whose memory is reused once nobody holds it.

    The compiled kernels' big temporaries (minGRU/minLSTM: ``x W^T`` and the outputs ``h``,
    kept for backward, and ``dk``, inside backward, 16-50 MB at T=1024, H=256, batch 16; the
    LSTM's per-step tensors, 85 MB at T=100, H=256, batch 64): malloc hands such blocks back
    to the OS on free, and touching a fresh one costs more in page faults than the kernel
    pass over it. So each thread keeps a few buffers and hands out a new view of a free one;
    a buffer is free when no other tensor shares its storage any more (the autograd graph
    that saved it has been freed: ``retain_graph`` keeps it taken, as it must; outputs a
    caller keeps keep theirs). At most ``MAX_BUFFERS`` per thread stay allocated between
    calls (what training a few layers needs at its peak anyway). Without the storage use
    count (a private torch API) every call allocates.
    """
    numel = math.prod(shape)
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None:
        return torch.empty(shape, dtype=dtype)
    pool = _pools.__dict__.setdefault("buffers", [])
    # 2 = the pool's own tensor + the temporary storage object asking
    free = [b for b in pool if b.dtype == dtype and b.numel() >= numel and use_count(b.untyped_storage()._cdata) == 2]
    if free:  # the smallest that fits: a small request never takes a big block a later one needs
        return min(free, key=Tensor.numel)[:numel].view(shape)
    buffer = torch.empty(numel, dtype=dtype)
    if len(pool) < MAX_BUFFERS:  # a few layers' temporaries; beyond that, plain allocations
        pool.append(buffer)
    return buffer.view(shape)

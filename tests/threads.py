"""One torch thread for a module-scoped fixture, which runs before conftest's one-thread fixture."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Train on one thread for the block (a 2-core machine shared with other runs collapses on
    OpenMP barriers), then restore the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)

"""The trainer's malloc tuning (``rnnkit/allocator.py``): freed large blocks are reused.

The setting is process-wide and cannot be undone, so each check runs in a fresh process.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnnkit.training import loop as training_loop
from rnnkit.training import TrainConfig, fit

SRC = Path(__file__).resolve().parents[1] / "src"

# Allocate and fill a 64 MB tensor a few times (the steady state of a training loop), then ask glibc
# (mallinfo2, glibc >= 2.33) where one such block lives and what stays in the heap once it is
# freed; the page faults of the last three rounds come along for the failure message. The heap
# figures are what rnnkit's tuning controls and what the test asserts; the faults they save are the
# kernel's side, measured per training step in benchmarks/allocator.py (a CI run once counted as
# many faults with the tuning as without, which this machine never reproduced).
_PROBE = """
import ctypes, json, resource, sys, torch
from rnnkit.allocator import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                      "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
applied = keep_freed_memory() if sys.argv[1] == "tune" else None
for _ in range(4):
    torch.empty(16 << 20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = torch.empty(16 << 20).fill_(1.0)
mapped_while_live = libc.mallinfo2().hblkhd
del block
heap_free_after = libc.mallinfo2().fordblks
for _ in range(2):
    torch.empty(16 << 20).fill_(1.0)
print(json.dumps({"applied": applied, "mapped_while_live": mapped_while_live, "heap_free_after": heap_free_after,
                  "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""
BLOCK = 64 << 20


def _probe(mode: str, **env: str) -> dict:
    environment = {**os.environ, "PYTHONPATH": str(SRC), **env}
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], check=True, capture_output=True, text=True, env=environment)
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "mallinfo2"),
                    reason="glibc >= 2.33 (mallopt, mallinfo2): Linux only")
def test_kept_freed_memory_is_reused_from_the_heap():
    default, tuned = _probe("default"), _probe("tune")
    assert default["mapped_while_live"] >= BLOCK, f"glibc's default should mmap a 64 MB block: {default}"
    assert tuned["applied"] is True
    assert tuned["mapped_while_live"] < BLOCK, f"with the tuning the block should come from the heap: {tuned}"
    assert tuned["heap_free_after"] >= BLOCK, f"the freed block should stay in the heap for reuse: {tuned}"


def test_turned_off_by_the_environment():
    assert _probe("tune", RNNKIT_KEEP_FREED_MEMORY="0")["applied"] is False


def test_the_trainer_tunes_malloc_when_it_trains_on_the_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(training_loop, "keep_freed_memory", lambda: calls.append(True))
    model = torch.nn.Linear(2, 1)
    loss = lambda m, batch, state: (torch.nn.functional.mse_loss(m(batch[0]), batch[1]), None)  # noqa: E731
    fit(model, loss, (torch.randn(8, 2), torch.randn(8, 1)), config=TrainConfig(max_steps=1, batch_size=4, progress=False))
    assert calls == [True]

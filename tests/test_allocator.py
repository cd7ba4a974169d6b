"""The trainer's malloc tuning (``rnnkit/allocator.py``): freed large blocks are reused.

The setting is process-wide and cannot be undone, so each check runs in a fresh process.
"""

from __future__ import annotations

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

# Allocate and fill a 64 MB tensor seven times: how many page faults the last three cost (the
# steady state of a training loop; the first few grow the heap).
_FAULTS = """
import json, resource, sys, torch
from rnnkit.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "tune" else None
for _ in range(4):
    torch.empty(16 << 20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    torch.empty(16 << 20).fill_(1.0)
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _faults(mode: str, **env: str) -> dict:
    environment = {**os.environ, "PYTHONPATH": str(SRC), **env}
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], check=True, capture_output=True, text=True, env=environment)
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_kept_freed_memory_is_reused_without_page_faults():
    default, tuned = _faults("default"), _faults("tune")
    assert tuned["applied"] is True
    assert default["faults"] > 3 * 8000, "glibc's default should map the 64 MB blocks afresh each time"
    assert tuned["faults"] < 1000, f"freed blocks were not reused: {tuned['faults']} page faults"


def test_turned_off_by_the_environment():
    assert _faults("tune", RNNKIT_KEEP_FREED_MEMORY="0")["applied"] is False


def test_the_trainer_tunes_malloc_when_it_trains_on_the_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(training_loop, "keep_freed_memory", lambda: calls.append(True))
    model = torch.nn.Linear(2, 1)
    loss = lambda m, batch, state: (torch.nn.functional.mse_loss(m(batch[0]), batch[1]), None)  # noqa: E731
    fit(model, loss, (torch.randn(8, 2), torch.randn(8, 1)), config=TrainConfig(max_steps=1, batch_size=4, progress=False))
    assert calls == [True]

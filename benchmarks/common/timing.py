"""Interleaved timing on a shared, noisy machine: ratios measured side by side, medians kept.

Every repeat measures every candidate once, in a rotating order (alternating direction),
and each candidate's ratio to its baseline is taken within the same repeat; the figure
reported is the median over repeats. Absolute times drift with the machine's load, ratios
taken this way much less.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Iterator, Literal, Optional

import torch
from torch import Tensor, nn

from rnnkit.files import atomic_write_bytes


def seconds_per_call(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def interleaved(
    candidates: dict[str, Callable[[], object]],
    baselines: dict[str, str],
    *,
    repeats: int,
    seconds: float,
    warmup: int = 2,
) -> dict[str, dict]:
    """Time every candidate ``repeats`` times, interleaved; ``baselines[name]`` names its baseline.

    Returns per candidate: median seconds per call, the samples, and the median over
    repeats of ``baseline time / candidate time`` (a speed-up: > 1 is faster).
    """
    calls = {}
    for name, fn in candidates.items():
        for _ in range(warmup):
            fn()
        once = seconds_per_call(fn, 1)
        calls[name] = max(1, int(seconds / max(once, 1e-7)))
    names = list(candidates)
    samples: dict[str, list[float]] = {n: [] for n in names}
    speedups: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names)
        order = names[k:] + names[:k]
        this = {}
        for name in order[::-1] if r % 2 else order:
            gc.collect()
            this[name] = seconds_per_call(candidates[name], calls[name])
        for name in names:
            samples[name].append(this[name])
            speedups[name].append(this[baselines.get(name, name)] / this[name])
    return {
        name: {
            "seconds_per_call": statistics.median(samples[name]),
            "samples": samples[name],
            "baseline": baselines.get(name, name),
            "speedup_vs_baseline": statistics.median(speedups[name]),
            "speedup_range": [min(speedups[name]), max(speedups[name])],
        }
        for name in names
    }


def training_step(model: nn.Module, x: Tensor, *, bf16: bool = False,
                  loss: Literal["upstream", "mse"] = "upstream",
                  optimizer: Optional[Callable[[Iterator[nn.Parameter]], torch.optim.Optimizer]] = None,
                  ) -> Callable[[], None]:
    """One training step of a recurrent layer ``model(x) -> (outputs, state)`` on a fixed batch:
    forward (under bfloat16 autocast with ``bf16``), backward, update by ``optimizer(params)``
    (default: SGD, lr 1e-3).

    The backward starts from a fixed gradient of the outputs (``outputs.backward(upstream)``,
    how DeepBench times an RNN layer), so a step costs the layer and nothing else. With
    ``loss="mse"`` it starts from a mean-square loss of the outputs instead, whose forward and
    backward are then paid on top by every layer alike (~20 ms a step at B=16, T=1024, H=256 on
    one Xeon core: a sixth of minLSTM's step, which narrows every ratio against it).
    """
    opt = (optimizer or (lambda params: torch.optim.SGD(params, lr=1e-3)))(model.parameters())
    upstream: list[Tensor] = []  # made at the first call, once the outputs' shape is known

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            outputs, _ = model(x)
        outputs = outputs.float()
        if loss == "mse":
            outputs.square().mean().backward()
        else:
            if not upstream:  # about the size of a mean loss's gradient
                seed = torch.Generator().manual_seed(0)
                upstream.append(torch.randn(outputs.shape, generator=seed) / outputs.numel())
            outputs.backward(upstream[0])
        opt.step()

    return step


class threads:
    """``with threads(n):`` run torch on ``n`` threads, then restore the previous count."""

    def __init__(self, n: int) -> None:
        self.n, self.previous = n, torch.get_num_threads()

    def __enter__(self) -> None:
        torch.set_num_threads(self.n)

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.previous)


def machine() -> dict:
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"torch": torch.__version__, "cpu_model": cpu, "cpu_count": os.cpu_count(),
            "default_threads": torch.get_num_threads(), "mkl": torch.backends.mkl.is_available(),
            "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def write_result(result: dict, out_dir: Optional[Path], name: str) -> Optional[Path]:
    """``out_dir/name.json`` (atomic); nothing if ``out_dir`` is ``None``."""
    if out_dir is None:
        return None
    result = {"benchmark": name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), **result}
    return atomic_write_bytes(Path(out_dir) / f"{name}.json", (json.dumps(result, indent=2) + "\n").encode())

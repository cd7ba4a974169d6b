"""Parallel-scan cells: minGRU and minLSTM against torch.nn.LSTM, in speed and on the adding problem.

Speed: training tokens/s (forward, backward from a fixed gradient of the outputs, SGD step:
:func:`common.timing.training_step`) at T=1024, H=256, batch 16, one layer, input
256, interleaved with ``torch.nn.LSTM`` on the same shapes, on 1 and 2 threads (the GUIDE's
figures are on 2; a scan's large ops use both cores, an LSTM's small per-step products at
batch 16 hardly can); also with a mean-square loss on top of both, which adds about the
same ~20 ms to every step on one thread (~15 on two). Timed in the same rotation: each cell's two
projection GEMMs alone (forward and weight gradient), the ceiling of its ratio: with
I = H, a training step of minLSTM costs 3/10 of the LSTM's matrix FLOPs and minGRU 1/5
(2BT·H²·6 and ·4 against ·20: no recurrent product, no gradient through one), so where
``torch.nn.LSTM`` runs at ~2/3 of a large GEMM's FLOP rate (one thread here) the
ceilings are ~5x (minLSTM) and ~7x (minGRU) before any gate, scan or loss is paid.

On 1 thread also under bfloat16 autocast, each cell against ``torch.nn.LSTM`` under autocast
(``speedup_vs_torch_nn_lstm`` of an autocast row is against that baseline).

The speed figures depend on the compiled scan kernel (``cells/kernels/linear_scan.cpp``):
the benchmark builds it when it can (cached) and records which path ran in
``"scan_path"``; ``RNNKIT_KERNELS=0`` measures the Python-ops path instead.

Learning: the adding problem (Hochreiter & Schmidhuber, 1997): two channels, random values
in [0, 1] and a marker that is 1 at two positions, one in each half of the sequence; the
target is the sum of the two marked values. Predicting the mean, 1, scores MSE 1/6 ~ 0.167;
a model that solves it scores near 0. Both models get the same steps, batches and
optimiser; 2 layers each (one minGRU layer is a gated running average and cannot add).
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

from rnnkit.layers import Recurrent
from . import kernel_path
from .timing import interleaved, threads, training_step

CHANCE_MSE = 1 / 6  # variance of the sum of two U(0, 1)


def _gemms_only(x: torch.Tensor, chunks: int) -> Callable[[], None]:
    """The floor under a minGRU (2 chunks) / minLSTM (3) training step: its two projection GEMMs,
    ``x W^T`` forward and ``dW = dk^T x`` backward (the input needs no gradient), alone."""
    x2 = x.reshape(-1, x.size(-1))  # (B*T, I)
    weight = torch.randn(chunks * x.size(-1), x.size(-1))
    xw, dweight = torch.empty(x2.size(0), weight.size(0)), torch.empty_like(weight)

    def step():
        torch.mm(x2, weight.t(), out=xw)
        torch.mm(xw.t(), x2, out=dweight)

    return step


def throughput(quick: bool, n_threads: int = 1) -> dict:
    batch, steps, hidden = 16, 1024, 256
    torch.manual_seed(0)
    x = torch.randn(batch, steps, hidden)

    def layers() -> dict[str, nn.Module]:  # fresh ones for each variant
        return {"torch.nn.LSTM": nn.LSTM(hidden, hidden, batch_first=True),
                "rnnkit minGRU": Recurrent(hidden, hidden, cell="mingru"),
                "rnnkit minLSTM": Recurrent(hidden, hidden, cell="minlstm")}

    # name suffix -> the step's options, each variant against torch.nn.LSTM's of the same kind: with
    # a mean-square loss on top (how this benchmark measured before), and on one thread bfloat16
    # autocast on both sides (the GEMMs in bfloat16, the scans in float32)
    variants = {"": {}, ", mean-square loss": {"loss": "mse"}}
    if n_threads == 1:
        variants[", bf16 autocast"] = {"bf16": True}
    candidates, baselines = {}, {}
    for suffix, options in variants.items():
        for name, layer in layers().items():
            candidates[name + suffix] = training_step(layer, x, **options)
            baselines[name + suffix] = "torch.nn.LSTM" + suffix
    if n_threads == 1:  # and bfloat16's own gain: torch.nn.LSTM under autocast against float32
        baselines["torch.nn.LSTM, bf16 autocast"] = "torch.nn.LSTM"
    for cell, chunks in (("minGRU", 2), ("minLSTM", 3)):
        candidates[f"{cell} GEMMs only"] = _gemms_only(x, chunks)
        baselines[f"{cell} GEMMs only"] = "torch.nn.LSTM"
    with threads(n_threads):
        timed = interleaved(candidates, baselines,
                            repeats=3 if quick else 7, seconds=0.3 if quick else 1.0, warmup=1)
    return {
        "shape": {"batch": batch, "time": steps, "hidden": hidden, "input": hidden, "threads": n_threads},
        "tokens_per_s_median": {n: batch * steps / r["seconds_per_call"] for n, r in timed.items()},
        "speedup_vs_torch_nn_lstm": {n: r["speedup_vs_baseline"] for n, r in timed.items()},
        "raw": timed,
    }


def adding_batch(batch: int, steps: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x (B, T, 2), y (B, 1))`` for the adding problem."""
    values = torch.rand(batch, steps, generator=generator)
    first = torch.randint(0, steps // 2, (batch,), generator=generator)
    second = torch.randint(steps // 2, steps, (batch,), generator=generator)
    marker = torch.zeros(batch, steps)
    rows = torch.arange(batch)
    marker[rows, first] = marker[rows, second] = 1.0
    target = (values[rows, first] + values[rows, second]).unsqueeze(1)
    return torch.stack([values, marker], dim=2), target


class _Adder(nn.Module):
    def __init__(self, cell: str, hidden: int) -> None:
        super().__init__()
        if cell == "torch.nn.LSTM":
            self.recurrent = nn.LSTM(2, hidden, num_layers=2, batch_first=True)
        else:
            self.recurrent = Recurrent(2, hidden, cell=cell, num_layers=2)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        outputs, _ = self.recurrent(x)
        return self.head(outputs[:, -1])


def adding_problem(quick: bool) -> dict:
    steps, hidden, batch = (30, 32, 64) if quick else (50, 64, 64)
    updates = 400 if quick else 2000
    results = {}
    for cell in ("torch.nn.LSTM", "mingru", "minlstm"):
        torch.manual_seed(0)
        model = _Adder(cell, hidden)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        data = torch.Generator().manual_seed(1)
        start = time.perf_counter()
        with threads(1):
            for _ in range(updates):
                x, y = adding_batch(batch, steps, data)
                loss = nn.functional.mse_loss(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
            with torch.no_grad():
                x, y = adding_batch(1000, steps, torch.Generator().manual_seed(2))
                test_mse = nn.functional.mse_loss(model(x), y).item()
        results[cell] = {"test_mse": test_mse, "solved": test_mse < 0.1 * CHANCE_MSE,
                         "train_seconds": time.perf_counter() - start}
    return {"sequence_length": steps, "hidden": hidden, "layers": 2, "batch": batch, "updates": updates,
            "optimizer": "Adam lr 3e-3, clip 1.0", "chance_mse": CHANCE_MSE, "results": results}


def run(quick: bool = False) -> dict:
    """The whole scan-cell benchmark (what ``benchmarks/scan_cells.py`` writes): speed on 1 and
    2 threads (the quick run: 2), then the adding problem."""
    result = {"scan_path": kernel_path("scan"), "throughput": {f"{n}_threads": throughput(quick, n) for n in ((2,) if quick else (1, 2))},
              "adding_problem": adding_problem(quick)}
    result["ratios"] = {}
    for key, speed in result["throughput"].items():
        speed = speed["speedup_vs_torch_nn_lstm"]
        for cell in ("minGRU", "minLSTM"):
            name = f"{cell} training tokens/s vs torch.nn.LSTM, T=1024, {key.replace('_', ' ')} (target >= 5x)"
            result["ratios"][name] = speed[f"rnnkit {cell}"]
        for cell in ("minGRU", "minLSTM"):
            name = f"  with a mean-square loss on top, both sides: {cell}, {key.replace('_', ' ')}"
            result["ratios"][name] = speed[f"rnnkit {cell}, mean-square loss"]
        for cell in ("minGRU", "minLSTM"):  # the ceiling: what the ratio would be if only the GEMMs cost
            name = f"  ceiling: {cell}'s projection GEMMs alone vs torch.nn.LSTM, {key.replace('_', ' ')}"
            result["ratios"][name] = speed[f"{cell} GEMMs only"]
    autocast = result["throughput"].get("1_threads", {}).get("speedup_vs_torch_nn_lstm", {})
    for cell in ("minGRU", "minLSTM"):
        if f"rnnkit {cell}, bf16 autocast" in autocast:
            name = f"{cell} vs torch.nn.LSTM, both under bf16 autocast, 1 threads"
            result["ratios"][name] = autocast[f"rnnkit {cell}, bf16 autocast"]
    result["ratios"].update(adding_problem_summary(result))
    return result


def adding_problem_summary(result: dict) -> dict:
    adding = result["adding_problem"]
    return {f"adding problem T={adding['sequence_length']}: {cell} test MSE / chance": r["test_mse"] / CHANCE_MSE
            for cell, r in adding["results"].items()}

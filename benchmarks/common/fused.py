"""Fused custom cells and bfloat16: training speed against torch.nn, accuracy cost of bf16.

Training tokens/s (forward, backward from a fixed gradient of the outputs, SGD step:
:func:`common.timing.training_step`) at B=64, T=100, H=256 (input 256), one layer,
interleaved in one run, on 1 and then 2 threads:

- LayerNorm and peephole LSTMs on rnnkit's fused recurrence (``cells/scan.py``) and on the
  reference path (the equations as a Python loop under autograd), against ``torch.nn.LSTM``;
  the fused recurrence on the compiled LSTM kernel (``cells/kernels/lstm_scan.cpp``) when it
  can be built (the benchmark builds it, cached, and records which path ran in
  ``"lstm_path"``; ``RNNKIT_KERNELS=0`` measures the Python loops);
- rnnkit's GRU (fused path) against ``torch.nn.GRU``: on the compiled GRU kernel
  (``cells/kernels/gru_scan.cpp``) when it can be built (the benchmark builds it, cached, and
  records which path ran in ``"gru_path"``; ``RNNKIT_KERNELS=0`` measures the Python loop);
- rnnkit's LSTM under ``torch.autocast("cpu", dtype=torch.bfloat16)`` against float32.

bfloat16 accuracy: the same LSTM's outputs and weight gradients under autocast, relative
to float32 (``max |a - b| / max |b|``), on one batch of the benchmark's shape, for the plain
and the layer-norm LSTM. (A freshly initialised layer-norm LSTM amplifies perturbations
through time: normalising the small recurrent product of early steps blows their rounding
up; even float32 rounding grows from 1e-7 to 2e-4 over these 100 steps.)
"""

from __future__ import annotations

import torch
from torch import nn

import rnnkit

from . import kernel_path
from .timing import interleaved, threads, training_step

BATCH, STEPS, HIDDEN = 64, 100, 256


def _candidates(x: torch.Tensor, quick: bool) -> tuple[dict, dict]:
    def lstm(**options):
        torch.manual_seed(0)
        return rnnkit.LSTM(HIDDEN, HIDDEN, **options)

    candidates = {
        "torch.nn.LSTM": training_step(nn.LSTM(HIDDEN, HIDDEN, batch_first=True), x),
        "rnnkit LSTM layer_norm fused": training_step(lstm(layer_norm=True), x),
        "rnnkit LSTM peephole fused": training_step(lstm(peephole=True), x),
        "rnnkit LSTM bf16 autocast": training_step(lstm(), x, bf16=True),
        "rnnkit LSTM float32": training_step(lstm(), x),
        "torch.nn.GRU": training_step(nn.GRU(HIDDEN, HIDDEN, batch_first=True), x),
        "rnnkit GRU fused": training_step(rnnkit.GRU(HIDDEN, HIDDEN), x),
    }
    if not quick:  # the Python loops are slow: the full run only
        candidates["rnnkit LSTM layer_norm reference"] = training_step(lstm(layer_norm=True, backend="reference"), x)
        candidates["rnnkit LSTM peephole reference"] = training_step(lstm(peephole=True, backend="reference"), x)
    baselines = {n: "torch.nn.LSTM" for n in candidates}
    baselines.update({"torch.nn.GRU": "torch.nn.GRU", "rnnkit GRU fused": "torch.nn.GRU",
                      "rnnkit LSTM bf16 autocast": "rnnkit LSTM float32"})
    return candidates, baselines


def bf16_accuracy() -> dict:
    """Relative error of bf16-autocast outputs and gradients against float32, same weights and batch.

    Also the error at the first step, and how much the model itself amplifies a perturbation
    over the sequence: a float32 run with the input nudged by 1e-5 (relative), its output
    error at the last step divided by 1e-5. A freshly initialised LayerNorm LSTM is chaotic
    (layer norm holds the recurrent half at unit variance, a gain above 1): any rounding, bf16's
    or another float32 kernel's, grows along the sequence, which is what its output error shows.
    """
    torch.manual_seed(0)
    x = torch.randn(BATCH, STEPS, HIDDEN)
    nudge = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    nudge *= 1e-5 * x.norm() / nudge.norm()
    errors = {}
    for name, options in (("lstm", {}), ("lstm layer_norm", {"layer_norm": True})):
        torch.manual_seed(0)
        cell = rnnkit.LSTM(HIDDEN, HIDDEN, **options)
        runs = []
        for bf16 in (False, True):
            cell.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                outputs, _ = cell(x)
            outputs.float().square().mean().backward()
            runs.append((outputs.float().detach(), cell.weight_hh.grad.clone()))
        (out32, grad32), (out16, grad16) = runs
        with torch.no_grad():
            nudged, _ = cell(x + nudge)

        def rel(a, b):
            return ((a - b).abs().max() / b.abs().max()).item()

        errors[name] = {"outputs_rel_error": rel(out16, out32), "grad_weight_hh_rel_error": rel(grad16, grad32),
                        "first_step_outputs_rel_error": rel(out16[:, 0], out32[:, 0]),
                        "float32_nudge_amplification_over_sequence": rel(nudged[:, -1], out32[:, -1]) / 1e-5}
    return errors


def _timed(quick: bool, n_threads: int) -> dict:
    torch.manual_seed(0)
    x = torch.randn(BATCH, STEPS, HIDDEN)
    candidates, baselines = _candidates(x, quick)
    with threads(n_threads):
        return interleaved(candidates, baselines, repeats=3 if quick else 7, seconds=0.3 if quick else 1.0, warmup=1)


def run(quick: bool = False) -> dict:
    """The fused-cell and bf16 benchmark (what ``benchmarks/fused_cells.py`` writes), on 1 and
    2 threads (the quick run: 1)."""
    gru_path = kernel_path("gru")
    lstm_path = kernel_path("lstm")
    timed_by_threads = {f"{n}_threads": _timed(quick, n) for n in ((1,) if quick else (1, 2))}
    with threads(1):
        accuracy = bf16_accuracy()
    ratios = {}
    for key, timed in timed_by_threads.items():
        speed = {n: r["speedup_vs_baseline"] for n, r in timed.items()}
        on = key.replace("_", " ")
        ratios[f"LayerNorm LSTM fused training tokens/s vs torch.nn.LSTM, {on} (target >= 0.6x)"] = \
            speed["rnnkit LSTM layer_norm fused"]
        ratios[f"peephole LSTM fused training tokens/s vs torch.nn.LSTM, {on}"] = speed["rnnkit LSTM peephole fused"]
        ratios[f"rnnkit GRU training tokens/s vs torch.nn.GRU, {on} (target >= 1x)"] = speed["rnnkit GRU fused"]
        ratios[f"torch.nn.GRU vs torch.nn.LSTM training tokens/s, {on}"] = (
            timed["torch.nn.LSTM"]["seconds_per_call"] / timed["torch.nn.GRU"]["seconds_per_call"])
        ratios[f"LSTM bf16 autocast training speed vs float32, {on}"] = speed["rnnkit LSTM bf16 autocast"]
        if not quick:
            ratios[f"LayerNorm LSTM reference (Python loop) vs torch.nn.LSTM, {on}"] = \
                speed["rnnkit LSTM layer_norm reference"]
    ratios["LSTM bf16 autocast output relative error"] = accuracy["lstm"]["outputs_rel_error"]
    ratios["LayerNorm LSTM bf16 autocast output relative error"] = accuracy["lstm layer_norm"]["outputs_rel_error"]
    ratios["  same, first step only"] = accuracy["lstm layer_norm"]["first_step_outputs_rel_error"]
    ratios["  how much the fresh LayerNorm LSTM itself amplifies a float32 input nudge over 100 steps"] = (
        accuracy["lstm layer_norm"]["float32_nudge_amplification_over_sequence"])
    return {
        "shape": {"batch": BATCH, "time": STEPS, "hidden": HIDDEN, "input": HIDDEN},
        "gru_path": gru_path,
        "lstm_path": lstm_path,
        "tokens_per_s_median": {key: {n: BATCH * STEPS / r["seconds_per_call"] for n, r in timed.items()}
                                for key, timed in timed_by_threads.items()},
        "bf16_accuracy": accuracy,
        "ratios": ratios,
        "raw": timed_by_threads,
    }

"""bfloat16 mixed precision (``precision="bf16"``) against float32: training speed, and what it costs.

Speed: training steps (forward and loss under ``rnnkit.precision.autocast``, backward, AdamW)
timed interleaved in float32 and in bfloat16 on copies of the same model and batch, on
torch's default thread count, as ``fit`` runs them:

- the language model ``rnnkit textgen train`` builds by default (characters of Shakespeare,
  one LSTM layer of 512, 32 streams of 128 steps);
- ``Recurrent`` layers at the cells benchmark's shape (B=64, T=100, I=H=256): LSTM, GRU,
  layer-norm LSTM, minGRU, minLSTM.

The ratio is float32's time over bfloat16's (> 1: bfloat16 is faster).

Cost: the same language model trained from the same seed for the same steps (one pass over
the first 95 % of Shakespeare's text, or a slice of it) in each precision, then scored in
float32 on the held-out last 5 %: bits per character and their difference. The full run
also trains each for the same wall-clock budget: what a user with ``--minutes`` gets.

Generation: the float32-trained model generating one stream (``rnnkit textgen sample``), and
64 at once (``--num-samples 64``), one thread, with ``precision="fp32"`` and ``"bf16"``,
interleaved; and how many greedy tokens the two precisions produce alike before they first differ.
"""

from __future__ import annotations

import copy
import time
from typing import Callable

import torch
from torch import nn

from rnnkit.data.text import load_shakespeare
from rnnkit.layers import Recurrent
from rnnkit.precision import autocast, native_bf16
from rnnkit.tasks.textgen import TextGenerator, TextGeneratorConfig, language_model, next_token_loss
from . import kernel_path
from .timing import interleaved, threads

CPU = torch.device("cpu")
LM = TextGeneratorConfig()  # rnnkit textgen train's defaults


def _train_step(model: nn.Module, loss_of: Callable[[nn.Module], torch.Tensor], precision: str) -> Callable[[], None]:
    """One training step of ``model`` as ``fit`` takes it, in ``precision``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with autocast(precision, CPU):
            loss = loss_of(model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _models(quick: bool) -> dict[str, tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]]:
    """name -> (model, its loss on a fixed batch)."""
    torch.manual_seed(0)
    vocab, rows = 96, LM.batch_size
    tokens = torch.randint(0, vocab, (rows, LM.seq_len + 1))
    lm = language_model(LM, vocab)
    models = {f"textgen LM (LSTM H={LM.hidden_size}, B={rows}, T={LM.seq_len})":
              (lm, lambda m: next_token_loss(m, (tokens[:, :-1], tokens[:, 1:]), None)[0])}
    batch, steps, hidden = (16, 50, 128) if quick else (64, 100, 256)
    x = torch.randn(batch, steps, hidden)
    cells = {"LSTM": dict(cell="lstm"), "GRU": dict(cell="gru"), "layer-norm LSTM": dict(cell="lstm", layer_norm=True),
             "minGRU": dict(cell="mingru"), "minLSTM": dict(cell="minlstm")}
    for name, options in cells.items():
        models[f"{name} (B={batch}, T={steps}, H={hidden})"] = (
            Recurrent(hidden, hidden, **options), lambda m: m(x)[0].float().square().mean())
    return models


def speed(quick: bool) -> dict:
    candidates, baselines = {}, {}
    for name, (model, loss_of) in _models(quick).items():
        candidates[f"{name}, fp32"] = _train_step(model, loss_of, "fp32")
        candidates[f"{name}, bf16"] = _train_step(copy.deepcopy(model), loss_of, "bf16")
        baselines[f"{name}, bf16"] = f"{name}, fp32"
    timed = interleaved(candidates, baselines, repeats=3 if quick else 7, seconds=0.3 if quick else 1.5, warmup=1)
    return {"threads": torch.get_num_threads(),
            "seconds_per_step_median": {n: r["seconds_per_call"] for n, r in timed.items()},
            "bf16_speedup": {n.removesuffix(", bf16"): r["speedup_vs_baseline"]
                             for n, r in timed.items() if n.endswith(", bf16")},
            "raw": timed}


def _train_lm(text: str, val_text: str, precision: str, **options) -> tuple[dict, TextGenerator]:
    config = TextGeneratorConfig(precision=precision, progress=False, **options)
    start = time.perf_counter()
    lm = TextGenerator(config).fit(text, val_text)
    m = lm.metrics
    return {"steps": m["steps"], "train_seconds": time.perf_counter() - start,
            "train_tokens_per_s": m["train_tokens_per_s"], "val_bpc": m["val_bpc"]}, lm


SAMPLES = 64  # `rnnkit textgen sample --num-samples 64`: 64 streams at once


def generation(lm: TextGenerator, quick: bool) -> dict:
    """Time per step (one token for each stream) of one stream, and of SAMPLES at once, in each
    precision; and the greedy tokens they share before differing."""
    tokens = 100 if quick else 300
    candidates = {p: (lambda p=p: lm.sample("ROMEO:", 1, tokens, seed=0, precision=p)) for p in ("fp32", "bf16")}
    for p in ("fp32", "bf16"):
        candidates[f"{p}, {SAMPLES} samples"] = lambda p=p: lm.sample("ROMEO:", SAMPLES, tokens, seed=0, precision=p)
    baselines = {"bf16": "fp32", f"bf16, {SAMPLES} samples": f"fp32, {SAMPLES} samples"}
    with threads(1):
        timed = interleaved(candidates, baselines, repeats=3 if quick else 7, seconds=0.3 if quick else 1.0)
    full, low = (lm.sample("", 1, tokens, temperature=0.0, precision=p)[0] for p in ("fp32", "bf16"))
    alike = next((k for k, (a, b) in enumerate(zip(full, low)) if a != b), min(len(full), len(low)))
    return {"us_per_token": {p: 1e6 * r["seconds_per_call"] / tokens for p, r in timed.items()},
            "bf16_speedup": timed["bf16"]["speedup_vs_baseline"],
            f"bf16_speedup_{SAMPLES}_samples": timed[f"bf16, {SAMPLES} samples"]["speedup_vs_baseline"],
            "greedy_characters_alike": alike, "greedy_characters": tokens}


def accuracy(quick: bool) -> dict:
    """Held-out bits per character of the default LM trained in each precision: the same steps
    from the same seed; in the full run also the same wall-clock budget."""
    text = load_shakespeare()
    cut = int(len(text) * (1 - LM.val_fraction))
    train, val = text[:cut], text[cut:]
    options = dict(hidden_size=128, epochs=1, minutes=None) if quick else dict(epochs=1, minutes=None)
    train = train[:200_000] if quick else train[:1_500_000]  # full: ~360 steps of 32 x 128 characters
    val = val[:20_000] if quick else val
    (full, lm), (low, _) = (_train_lm(train, val, p, **options) for p in ("fp32", "bf16"))
    result = {"same_steps": {"fp32": full, "bf16": low}}
    if not quick:
        budget = dict(minutes=1.5, epochs=100)
        result["same_budget_1.5_min"] = {p: _train_lm(text[:cut], val, p, **budget)[0] for p in ("fp32", "bf16")}
    return result, lm


def run(quick: bool = False) -> dict:
    """The whole precision benchmark (what ``benchmarks/precision.py`` writes)."""
    if not native_bf16(CPU):
        return {"skipped": "this CPU has no native bfloat16 (AVX-512 BF16 or AMX)", "ratios": {}}
    # the compiled kernels its cells and generation run on (built now if need be, cached), as the other suites do
    result = {"kernel_paths": {name: kernel_path(name) for name in ("stream", "scan", "gru", "lstm")}}
    result["speed"] = speed(quick)
    result["accuracy"], lm = accuracy(quick)
    result["generation"] = generation(lm, quick)
    ratios = {f"bf16 training speed-up: {n}": r for n, r in result["speed"]["bf16_speedup"].items()}
    ratios["bf16 generation speed-up, one stream, per token"] = result["generation"]["bf16_speedup"]
    ratios[f"bf16 generation speed-up, {SAMPLES} samples at once"] = result["generation"][f"bf16_speedup_{SAMPLES}_samples"]
    for what, runs in result["accuracy"].items():
        ratios[f"held-out bits/char, {what.replace('_', ' ')}: fp32"] = runs["fp32"]["val_bpc"]
        ratios[f"held-out bits/char, {what.replace('_', ' ')}: bf16"] = runs["bf16"]["val_bpc"]
    result["ratios"] = ratios
    return result

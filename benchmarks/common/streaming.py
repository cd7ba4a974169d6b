"""Streaming: one step of a 2-layer LSTM (H=256) for one stream, and generation for 64.

Per-step latency, batch 1, one thread, state carried from step to step, of

- ``torch.nn.LSTM`` called on one step at a time (what a serving loop does with torch.nn);
- ATen's ``_VF.lstm_cell`` per layer (the fused cell op ``torch.nn.LSTMCell`` calls), the
  loop a user would write by hand;
- ``rnnkit.layers.Recurrent.step`` (the streaming path, ``cells/streaming.py``) and, with the
  compiled kernel, ``compiled_step`` alone (the kernel call under it;
  the benchmark builds the kernel, cached, and records which path ran in ``"stream_path"``);

The headline ratio is against the STRONGEST of those two baselines in this run (the faster one,
``"strongest_baseline"`` in the JSON; ATen's ``lstm_cell`` wherever measured so far), with the
ratio against ``torch.nn.LSTM`` per step beside it; ``"python_path_vs_strongest_baseline"`` is
the same ratio when the kernel is not used (``RNNKIT_KERNELS=0`` or none built: the step then
runs ATen's ``lstm_cell`` per layer itself, over column-major copies of the weights, the path in
``"python_step_path"``). A GRU stack's step, which has no compiled kernel, against ATen's
``gru_cell`` per layer by hand: ``"latency_gru"``.

Next to them the memory-bandwidth floor of reading the weights once per step, measured on the
same bytes (all four weight matrices, fp32, 4 MB: more than one core's L2, so they come
from L3 or RAM each step) four ways: ``torch.sum`` over them, the compiled kernel's own
plain read (a sum with four vector accumulators, no dispatch; when the kernel is built), the
same read of the four matrices in the order the kernel's step reads them, alternating from
step to step so that what one step read last (still in L2) the next reads first, and one
``torch.mv`` over them all. The floor is the fastest, per repeat.

Under bfloat16 autocast, the same step for ``torch.nn.LSTM`` (all in bfloat16) and rnnkit
(bfloat16 weights, float32 state and arithmetic), next to the floor of reading the
bfloat16 weights, and each one's output error against float32 over 200 steps. Each timed
call runs ``STEPS_PER_CALL`` steps, so autocast is entered once per 8 steps, not per step.

The same float32 step on 2 threads, rnnkit's against torch.nn's, and on 1 thread for a small
model (H=32), where the step is per-call overhead: dispatch, checks, allocations.

Then batched generation: 64 streams of a character-level LM (embedding, the same 2-layer
LSTM, a linear head, sampling), tokens/s with rnnkit's step (float32, and bfloat16 autocast)
against torch.nn.LSTM's (float32, and bfloat16 autocast); and the bfloat16 step's output error
at 64 streams, where it is one bfloat16 GEMM per layer.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import _VF, nn

from rnnkit.cells import kernels
from rnnkit.cells.kernels import stream_kernel
from rnnkit.cells.streaming import compiled_step
from rnnkit.layers import Recurrent
from . import kernel_path
from .timing import interleaved, threads

HIDDEN, LAYERS, VOCAB, STREAMS = 256, 2, 96, 64
SMALL_HIDDEN = 32  # a small model: its step is all per-call overhead


def _stepper(step: Callable, state) -> Callable[[torch.Tensor], torch.Tensor]:
    """A closure that carries ``state`` across calls of ``step(x, state) -> (y, state)``."""
    box = [state]

    def call(x):
        y, box[0] = step(x, box[0])
        return y

    return call


STEPS_PER_CALL = 8  # steps per timed call: a bfloat16 candidate enters autocast once per call, as a generation loop would


def _steps(step: Callable[[], object], bf16: bool = False) -> Callable[[], None]:
    """``STEPS_PER_CALL`` calls of ``step``, under bfloat16 autocast if ``bf16``."""

    def call():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for _ in range(STEPS_PER_CALL):
                step()

    return call


def _one_stream(hidden: int = HIDDEN) -> tuple[Recurrent, nn.LSTM, torch.Tensor, torch.Tensor]:
    """The measured stack (rnnkit's, and torch.nn's with the same weights), one step's input
    ``(1, H)`` and the zero state ``(L, 1, H)``."""
    torch.manual_seed(0)
    rnnkit_lstm = Recurrent(hidden, hidden, cell="lstm", num_layers=LAYERS).eval()
    return rnnkit_lstm, rnnkit_lstm.to_torch().eval(), torch.randn(1, hidden), torch.zeros(LAYERS, 1, hidden)


def latency(quick: bool) -> dict:
    rnnkit_lstm, torch_lstm, x, zeros = _one_stream()
    rnnkit_step = _stepper(rnnkit_lstm.step, (zeros, zeros))
    torch_step = _stepper(lambda x, s: torch_lstm(x[:, None], s), (zeros, zeros))
    rnnkit_bf16_step = _stepper(rnnkit_lstm.step, (zeros, zeros))
    torch_bf16_step = _stepper(lambda x, s: torch_lstm(x[:, None], s), (zeros, zeros))
    weights = [[c.weight_ih, c.weight_hh, c.bias_ih, c.bias_hh] for c in rnnkit_lstm.cells]
    cell_state = [(torch.zeros(1, HIDDEN), torch.zeros(1, HIDDEN)) for _ in range(LAYERS)]

    def aten_cells():
        inp = x
        for layer in range(LAYERS):
            cell_state[layer] = _VF.lstm_cell(inp, cell_state[layer], *weights[layer])
            inp = cell_state[layer][0]

    all_weights = torch.cat([torch.cat([c.weight_ih, c.weight_hh], 1) for c in rnnkit_lstm.cells]).detach()
    vector = torch.randn(all_weights.size(1))
    candidates = {
        "torch.nn.LSTM, one step per call": _steps(lambda: torch_step(x)),
        "ATen lstm_cell per layer": _steps(aten_cells),
        "rnnkit Recurrent.step": _steps(lambda: rnnkit_step(x)),
        "floor: stream-read the weights (sum)": _steps(lambda: all_weights.sum()),
        "floor: one matvec over all weights": _steps(lambda: torch.mv(all_weights, vector)),
        # bfloat16 autocast: torch.nn.LSTM's whole step in bfloat16, rnnkit's weights only
        "torch.nn.LSTM, bfloat16 autocast": _steps(lambda: torch_bf16_step(x), bf16=True),
        "rnnkit Recurrent.step, bfloat16 autocast": _steps(lambda: rnnkit_bf16_step(x), bf16=True),
    }
    kernel = stream_kernel()
    python_step = "rnnkit Recurrent.step"
    python_layer = rnnkit_lstm
    if kernel is not None:
        python_step = "rnnkit Recurrent.step without the kernel (the Python path)"
        python_call, python_layer = _without_kernel(x, zeros)
        candidates[python_step] = _steps(python_call)
        # what Recurrent.step costs beyond its kernel call (Python's dispatch to it)
        with torch.no_grad():
            rnnkit_lstm.step(x, (zeros, zeros))  # builds the compiled stack
            cache, cells = rnnkit_lstm.path_cache, rnnkit_lstm.cells
            assert compiled_step(cache, cells, x, (zeros, zeros)) is not None, "the compiled step did not run"
        candidates["rnnkit compiled_step (the kernel call under Recurrent.step)"] = _steps(
            lambda: compiled_step(cache, cells, x, (zeros, zeros)))
        # the tightest floors: a plain read with no per-call dispatch, in one order, and in the
        # step's own alternating order of weight halves (what one step leaves in L2 the next reuses)
        candidates["floor: stream-read the weights (kernel, no dispatch)"] = _steps(
            lambda: kernel.stream_read(all_weights))
        candidates["floor: stream-read the weights in the step's alternating order (kernel)"] = _steps(
            _alternating_read(kernel, rnnkit_lstm))
        # the bfloat16 step's floor: the same read of the weights' bfloat16 bytes (half as many)
        bf16_bytes = all_weights.bfloat16().view(torch.float32)
        candidates["bf16 floor: stream-read the bfloat16 weights (kernel)"] = _steps(
            lambda: kernel.stream_read(bf16_bytes))
    base = "torch.nn.LSTM, one step per call"
    with torch.no_grad(), threads(1):
        timed = interleaved(candidates, {n: base for n in candidates}, repeats=5 if quick else 15,
                            seconds=0.05 if quick else 0.25)
    per_step = {name: 1e6 * row["seconds_per_call"] / STEPS_PER_CALL for name, row in timed.items()}
    weight_bytes = all_weights.numel() * all_weights.element_size()
    floor_names = [n for n in candidates if n.startswith("floor")]
    floor_us = min(per_step[n] for n in floor_names)
    strongest = min(BASELINES, key=lambda n: per_step[n])
    result = {
        "shape": {"layers": LAYERS, "hidden": HIDDEN, "input": HIDDEN, "batch": 1, "threads": 1},
        "compiled_kernel": kernel is not None,
        "steps_per_timed_call": STEPS_PER_CALL,
        "weight_bytes": weight_bytes,
        "floor": "reading the fp32 weights (W_ih, W_hh of both layers) once: the fastest of the "
                 "'floor:' candidates, per repeat",
        "per_step_us_median": per_step,
        "speedup_vs_torch_nn_lstm": {n: r["speedup_vs_baseline"] for n, r in timed.items()},
        "strongest_baseline": strongest,
        "step_speedup_vs_strongest_baseline": _ratio(timed, strongest, "rnnkit Recurrent.step"),
        "python_path_vs_strongest_baseline": _ratio(timed, strongest, python_step),
        "python_step_path": sorted({path.name for path in python_layer.path_cache.steps.values()}),
        "floor_us_median": floor_us,
        "floor_read_GB_per_s": weight_bytes / floor_us / 1e3,
        # The floor ratio per repeat, like every other ratio: rnnkit's step / the faster floor.
        "rnnkit_step_over_floor": _over_floor(timed, "rnnkit Recurrent.step", floor_names),
        "bfloat16": bf16_accuracy(rnnkit_lstm, torch_lstm),
        "raw": timed,
    }
    if kernel is not None:
        result["bfloat16"]["step_over_bf16_floor"] = _over_floor(
            timed, "rnnkit Recurrent.step, bfloat16 autocast", ["bf16 floor: stream-read the bfloat16 weights (kernel)"])
    return result


#: the baselines a user could step with instead of rnnkit; the headline ratio is against the faster
BASELINES = ("torch.nn.LSTM, one step per call", "ATen lstm_cell per layer")


def _ratio(timed: dict, baseline: str, name: str) -> float:
    """Median over repeats of ``baseline``'s time over ``name``'s, each pair from the same repeat."""
    ratios = sorted(b / o for b, o in zip(timed[baseline]["samples"], timed[name]["samples"]))
    return ratios[len(ratios) // 2]


def _without_kernel(x: torch.Tensor, zeros: torch.Tensor) -> tuple[Callable[[], None], Recurrent]:
    """``Recurrent.step`` of the measured stack (same seed, same weights) with the stream kernel
    hidden from it for the call: what runs where it is not built; and that stack."""
    layer = _one_stream()[0]
    step = _stepper(layer.step, (zeros, zeros))

    def call():
        saved = kernels._loaded.get("stream")
        kernels._loaded["stream"] = None
        try:
            step(x)
        finally:
            kernels._loaded["stream"] = saved

    return call, layer


def _alternating_read(kernel, stack: Recurrent) -> Callable[[], None]:
    """A plain read of the stack's weight halves (``W_ih``, ``W_hh`` per layer) in the order the
    stream kernel's step reads them, alternating from call to call (``stream_step.cpp``):
    even ``ih0 (descending), hh0, ih1, hh1``, odd ``hh1 (descending), hh0, ih0, ih1``."""
    (ih0, hh0), (ih1, hh1) = [(c.weight_ih.detach().contiguous(), c.weight_hh.detach().contiguous())
                              for c in stack.cells]
    orders = [((ih0, True), (hh0, False), (ih1, False), (hh1, False)),
              ((hh1, True), (hh0, False), (ih0, False), (ih1, False))]
    parity = [0]

    def read():
        for weights, descending in orders[parity[0]]:
            kernel.stream_read(weights, descending)
        parity[0] ^= 1

    return read


def step_latency(quick: bool, n_threads: int = 1, hidden: int = HIDDEN) -> dict:
    """The batch-1 step alone, rnnkit's against ``torch.nn.LSTM``'s: on 2 threads (torch's default
    here; the kernel splits each layer's unit blocks across them, torch.nn's step is overhead),
    or for a small model (H=32), where a step is all dispatch and no arithmetic."""
    rnnkit_lstm, torch_lstm, x, zeros = _one_stream(hidden)
    rnnkit_step = _stepper(rnnkit_lstm.step, (zeros, zeros))
    torch_step = _stepper(lambda x, s: torch_lstm(x[:, None], s), (zeros, zeros))
    candidates = {"torch.nn.LSTM, one step per call": _steps(lambda: torch_step(x)),
                  "rnnkit Recurrent.step": _steps(lambda: rnnkit_step(x))}
    with torch.no_grad(), threads(n_threads):
        timed = interleaved(candidates, dict.fromkeys(candidates, "torch.nn.LSTM, one step per call"),
                            repeats=5 if quick else 15, seconds=0.05 if quick else 0.25)
    return {"threads": n_threads, "hidden": hidden,
            "per_step_us_median": {n: 1e6 * r["seconds_per_call"] / STEPS_PER_CALL for n, r in timed.items()},
            "speedup_vs_torch_nn_lstm": timed["rnnkit Recurrent.step"]["speedup_vs_baseline"], "raw": timed}


def gru_latency(quick: bool) -> dict:
    """A 2-layer H=256 GRU stack's batch-1 step (no compiled kernel exists for it: what runs is
    always the path without one) against ATen's ``gru_cell`` per layer by hand, one thread."""
    torch.manual_seed(0)
    layer = Recurrent(HIDDEN, HIDDEN, cell="gru", num_layers=LAYERS).eval()
    x, zeros = torch.randn(1, HIDDEN), torch.zeros(LAYERS, 1, HIDDEN)
    weights = [[c.weight_ih, c.weight_hh, c.bias_ih, c.bias_hh] for c in layer.cells]
    cell_state = [torch.zeros(1, HIDDEN) for _ in range(LAYERS)]

    def aten_cells():
        inp = x
        for index in range(LAYERS):
            inp = cell_state[index] = _VF.gru_cell(inp, cell_state[index], *weights[index])

    step = _stepper(layer.step, zeros)
    base = "ATen gru_cell per layer"
    candidates = {base: _steps(aten_cells), "rnnkit Recurrent.step (GRU)": _steps(lambda: step(x))}
    with torch.no_grad(), threads(1):
        timed = interleaved(candidates, dict.fromkeys(candidates, base), repeats=5 if quick else 15,
                            seconds=0.05 if quick else 0.25)
    return {"threads": 1, "hidden": HIDDEN, "layers": LAYERS,
            "step_path": sorted({path.name for path in layer.path_cache.steps.values()}),
            "per_step_us_median": {n: 1e6 * r["seconds_per_call"] / STEPS_PER_CALL for n, r in timed.items()},
            "speedup_vs_aten_gru_cell": timed["rnnkit Recurrent.step (GRU)"]["speedup_vs_baseline"],
            "speedup_range": timed["rnnkit Recurrent.step (GRU)"]["speedup_range"], "raw": timed}


def _over_floor(timed: dict, name: str, floor_names: list[str]) -> float:
    """Median over repeats of ``name``'s time over the fastest floor's in the same repeat."""
    ours = timed[name]["samples"]
    floors = [min(timed[n]["samples"][r] for n in floor_names) for r in range(len(ours))]
    ratios = sorted(o / f for o, f in zip(ours, floors))
    return ratios[len(ratios) // 2]


@torch.no_grad()
def bf16_accuracy(rnnkit_lstm: Recurrent, torch_lstm: nn.LSTM, steps: int = 200, streams: int = 4) -> dict:
    """Relative error of each bfloat16-autocast step's outputs against float32 torch.nn.LSTM,
    stepping ``steps`` random inputs for ``streams`` streams with the state carried (errors
    compound over time). From 16 streams on rnnkit's step is the bfloat16 GEMM (``cells/streaming.py``)."""
    xs = torch.randn(streams, steps, HIDDEN, generator=torch.Generator().manual_seed(1))
    reference, _ = torch_lstm(xs)
    outputs = {"rnnkit Recurrent.step": [], "torch.nn.LSTM": []}
    states = dict.fromkeys(outputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for t in range(steps):
            y, states["rnnkit Recurrent.step"] = rnnkit_lstm.step(xs[:, t], states["rnnkit Recurrent.step"])
            outputs["rnnkit Recurrent.step"].append(y)
            y, states["torch.nn.LSTM"] = torch_lstm(xs[:, t:t + 1], states["torch.nn.LSTM"])
            outputs["torch.nn.LSTM"].append(y[:, 0])
    return {"steps": steps, "streams": streams, "outputs_rel_error_vs_float32": {
        name: float((torch.stack(ys, 1).float() - reference).norm() / reference.norm()) for name, ys in outputs.items()}}


class _CharLM(nn.Module):
    def __init__(self, recurrent: nn.Module) -> None:
        super().__init__()
        self.embed, self.recurrent, self.head = nn.Embedding(VOCAB, HIDDEN), recurrent, nn.Linear(HIDDEN, VOCAB)


def generation(quick: bool) -> dict:
    """Tokens/s of sampling 64 streams at once, one token per step, state carried."""
    torch.manual_seed(0)
    ours = _CharLM(Recurrent(HIDDEN, HIDDEN, cell="lstm", num_layers=LAYERS)).eval()
    theirs = _CharLM(ours.recurrent.to_torch()).eval()
    theirs.embed.load_state_dict(ours.embed.state_dict())
    theirs.head.load_state_dict(ours.head.state_dict())
    tokens_per_call = 16

    def sampler(model: _CharLM, step: Callable, bf16: bool = False) -> Callable[[], None]:
        zeros = torch.zeros(LAYERS, STREAMS, HIDDEN)
        box = [torch.zeros(STREAMS, dtype=torch.long), (zeros, zeros)]

        def generate():
            token, state = box
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                for _ in range(tokens_per_call):
                    h, state = step(model.embed(token), state)  # (S, H)
                    probs = torch.softmax(model.head(h).float(), dim=-1)
                    token = torch.multinomial(probs, 1).squeeze(1)
            box[:] = [token, state]

        return generate

    candidates = {
        "torch.nn.LSTM": sampler(theirs, lambda e, s: (lambda o, s2: (o[:, 0], s2))(*theirs.recurrent(e[:, None], s))),
        "rnnkit Recurrent.step": sampler(ours, ours.recurrent.step),
        "rnnkit Recurrent.step, bfloat16 autocast": sampler(ours, ours.recurrent.step, bf16=True),
        "torch.nn.LSTM, bfloat16 autocast": sampler(
            theirs, lambda e, s: (lambda o, s2: (o[:, 0], s2))(*theirs.recurrent(e[:, None], s)), bf16=True),
    }
    with torch.no_grad(), threads(1):
        timed = interleaved(candidates, {n: "torch.nn.LSTM" for n in candidates},
                            repeats=3 if quick else 9, seconds=0.1 if quick else 0.4)
    tokens = {n: STREAMS * tokens_per_call / r["seconds_per_call"] for n, r in timed.items()}
    return {
        "streams": STREAMS, "vocab": VOCAB, "threads": 1,
        "tokens_per_s_median": tokens,
        "speedup_vs_torch_nn_lstm": timed["rnnkit Recurrent.step"]["speedup_vs_baseline"],
        "bf16_speedup_vs_torch_nn_lstm": timed["rnnkit Recurrent.step, bfloat16 autocast"]["speedup_vs_baseline"],
        "bf16_speedup_vs_torch_nn_lstm_bf16": (tokens["rnnkit Recurrent.step, bfloat16 autocast"]
                                               / tokens["torch.nn.LSTM, bfloat16 autocast"]),
        "bfloat16": bf16_accuracy(ours.recurrent, theirs.recurrent, streams=STREAMS),
        "raw": timed,
    }


def run(quick: bool = False) -> dict:
    """The whole streaming benchmark (what ``benchmarks/streaming.py`` writes)."""
    result = {"stream_path": kernel_path("stream"),  # built first (cached), as the other suites do
              "latency": latency(quick), "latency_2_threads": step_latency(quick, n_threads=2),
              "latency_small_model": step_latency(quick, hidden=SMALL_HIDDEN),
              "latency_gru": gru_latency(quick),
              "generation_64_streams": generation(quick)}
    lat = result["latency"]
    result["strongest_baseline"] = lat["strongest_baseline"]
    result["ratios"] = {
        f"step speed-up vs the strongest baseline, {lat['strongest_baseline']}":
            lat["step_speedup_vs_strongest_baseline"],
        "step without the kernel (the Python path) vs the strongest baseline":
            lat["python_path_vs_strongest_baseline"],
        "GRU step (no compiled kernel exists for it) vs ATen gru_cell per layer":
            result["latency_gru"]["speedup_vs_aten_gru_cell"],
        "step speed-up vs torch.nn.LSTM per step (target >= 10x)":
            lat["speedup_vs_torch_nn_lstm"]["rnnkit Recurrent.step"],
        "step time / memory floor (target <= 2x)": lat["rnnkit_step_over_floor"],
        "step speed-up vs torch.nn.LSTM per step, both on 2 threads": result["latency_2_threads"]["speedup_vs_torch_nn_lstm"],
        f"step speed-up vs torch.nn.LSTM per step, a small model (H={SMALL_HIDDEN})":
            result["latency_small_model"]["speedup_vs_torch_nn_lstm"],
        "bfloat16 autocast step speed-up vs torch.nn.LSTM (float32) per step":
            lat["speedup_vs_torch_nn_lstm"]["rnnkit Recurrent.step, bfloat16 autocast"],
        "bfloat16 autocast step speed-up vs torch.nn.LSTM under bfloat16 autocast": (
            lat["per_step_us_median"]["torch.nn.LSTM, bfloat16 autocast"]
            / lat["per_step_us_median"]["rnnkit Recurrent.step, bfloat16 autocast"]),
        "bfloat16 step output relative error after 200 steps":
            lat["bfloat16"]["outputs_rel_error_vs_float32"]["rnnkit Recurrent.step"],
        "bfloat16 step time / bfloat16 memory floor": lat["bfloat16"].get("step_over_bf16_floor"),
        "ATen lstm_cell speed-up vs torch.nn.LSTM": lat["speedup_vs_torch_nn_lstm"]["ATen lstm_cell per layer"],
        "generation tokens/s, 64 streams, vs torch.nn.LSTM": result["generation_64_streams"]["speedup_vs_torch_nn_lstm"],
        "generation tokens/s, 64 streams, bfloat16 autocast vs torch.nn.LSTM (float32)":
            result["generation_64_streams"]["bf16_speedup_vs_torch_nn_lstm"],
        "generation tokens/s, 64 streams, both under bfloat16 autocast":
            result["generation_64_streams"]["bf16_speedup_vs_torch_nn_lstm_bf16"],
        "bfloat16 step output relative error after 200 steps, 64 streams":
            result["generation_64_streams"]["bfloat16"]["outputs_rel_error_vs_float32"]["rnnkit Recurrent.step"],
    }
    # the bfloat16 floor is read by the compiled kernel: no figure without it
    result["ratios"] = {what: ratio for what, ratio in result["ratios"].items() if ratio is not None}
    return result

"""The streaming step (``cells/streaming.py``) against ``torch.nn.LSTM``, step after step.

Both paths: the compiled kernel (its own blocked product for small batches, MKL's for
larger ones) and the Python fallback (``RNNKIT_KERNELS=0`` or no built kernel). And the
cache of re-laid-out weights must never serve stale weights: after an optimiser step,
``load_state_dict``, a ``.data`` swap or a replaced parameter the step follows.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rnnkit.cells import kernels, paths, streaming
from rnnkit.errors import RnnkitError
from rnnkit.layers import Recurrent

STEPS = 40


def _close(a, b, what, atol=1e-5):
    diff = (a - b).abs().max().item()
    assert diff <= atol, f"{what}: max abs diff {diff:.3g} > {atol}"


@pytest.fixture(params=[pytest.param("kernel", marks=pytest.mark.slow), "python"])
def path(request, monkeypatch):
    """Run the test once with the compiled kernel and once on the Python fallback."""
    if request.param == "kernel":
        module = request.getfixturevalue("built_kernel")
        monkeypatch.setattr(kernels, "_loaded", {"stream": module})
    else:
        monkeypatch.setenv("RNNKIT_KERNELS", "0")
        monkeypatch.setattr(kernels, "_loaded", {})
    return request.param


def _compiled(layer: Recurrent):
    """The compiled stack the kernel steps, cached in the layer's path cache (None if it never ran)."""
    return layer.path_cache.stack


def _stepped(layer: Recurrent, x: torch.Tensor, state=None):
    """``layer.step`` over every step of ``x`` ``(B, T, I)``: outputs ``(B, T, H)`` and final state."""
    outputs = []
    with torch.no_grad():
        for t in range(x.size(1)):
            y, state = layer.step(x[:, t], state)
            outputs.append(y)
    return torch.stack(outputs, 1), state


def _assert_equals_torch_nn(layer: Recurrent, x: torch.Tensor, what: str):
    reference = layer.to_torch().to(x.dtype).eval()
    state = layer.initial_state(x.size(0), x)
    state = (torch.randn_like(state[0]), torch.randn_like(state[1]))
    got, (h, c) = _stepped(layer, x, state)
    with torch.no_grad():
        want, (want_h, want_c) = reference(x, state)
    _close(got, want, f"{what}: outputs over {x.size(1)} steps")
    _close(h, want_h, f"{what}: final h")
    _close(c, want_c, f"{what}: final c")


@pytest.mark.parametrize(
    "batch, input_size, hidden, layers, bias",
    [(1, 256, 256, 2, True),  # the benchmark's shape
     (1, 7, 32, 2, True),
     (5, 3, 20, 3, True),  # a batch tile plus a remainder; H not a multiple of 16
     (3, 16, 16, 1, False)],
    ids=["b1-h256", "b1-h32", "b5-h20-3layers", "b3-h16-nobias"],
)
def test_step_equals_torch_nn_lstm_over_many_steps(path, batch, input_size, hidden, layers, bias):
    torch.manual_seed(0)
    layer = Recurrent(input_size, hidden, num_layers=layers, bias=bias).eval()
    _assert_equals_torch_nn(layer, torch.randn(batch, STEPS, input_size), f"{path} path")
    assert (_compiled(layer) is not None) == (path == "kernel"), "the step did not run the path under test"


@pytest.mark.slow
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_a_step_does_not_depend_on_the_order_its_weight_passes_ran_in(built_kernel, monkeypatch, layers):
    """The kernel reads a layer's weight halves in an order that alternates from step to step
    (what one step leaves in L2, the next reads first): the same input and state must give
    bit-identical outputs on an even and an odd step, float32 and bfloat16 alike."""
    monkeypatch.setattr(kernels, "_loaded", {"stream": built_kernel})
    torch.manual_seed(2)
    layer = Recurrent(40, 48, num_layers=layers).eval()
    x = torch.randn(3, 40)
    state = (torch.randn(layers, 3, 48), torch.randn(layers, 3, 48))
    for bf16 in (False, True):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            first, second = layer.step(x, state), layer.step(x, state)
        assert _compiled(layer) is not None
        assert torch.equal(first[0], second[0]) and all(torch.equal(a, b) for a, b in zip(first[1], second[1]))


@pytest.mark.slow
def test_kernel_above_the_blocked_batch_runs_mkl_and_equals_torch_nn(built_kernel, monkeypatch):
    monkeypatch.setattr(kernels, "_loaded", {"stream": built_kernel})
    monkeypatch.setattr(paths, "BLOCKED_MAX_BATCH", {built_kernel.LANES: 2})
    torch.manual_seed(1)
    layer = Recurrent(6, 24, num_layers=2).eval()
    _assert_equals_torch_nn(layer, torch.randn(4, 12, 6), "MKL path")
    assert _compiled(layer) is None
    assert layer.path_cache.packed.get(0), "the MKL path did not run"


@pytest.mark.parametrize("batch", [1, 2], ids=["one-stream", "two-streams"])
def test_step_sees_fresh_weights(path, batch):
    """The re-laid-out weights are a cache: every way of changing a parameter must refresh it
    (one stream without the kernel: the column-major copies; with it, the kernel's own)."""
    torch.manual_seed(2)
    layer = Recurrent(5, 20, num_layers=2)
    x = torch.randn(batch, 6, 5)

    def check(what):
        layer.eval()
        _assert_equals_torch_nn(layer, x, f"{path} path, {what}")

    check("first steps")
    optimiser = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer.train()
    out, _ = layer(x)
    out.square().mean().backward()
    optimiser.step()  # in place: only the parameters' _version changes
    check("after an optimiser step")
    layer.load_state_dict(Recurrent(5, 20, num_layers=2).state_dict())
    check("after load_state_dict")
    with torch.no_grad():
        layer.cells[1].weight_hh.data = torch.randn_like(layer.cells[1].weight_hh)
    check("after swapping .data")
    layer.cells[0].bias_hh = nn.Parameter(torch.randn(4 * 20))
    check("after replacing a parameter")
    layer.load_state_dict(Recurrent(5, 20, num_layers=2).state_dict(), assign=True)
    check("after load_state_dict(assign=True)")
    layer.cells[1] = type(layer.cells[1])(20, 20)
    check("after replacing a cell")


def test_kernels_off_by_environment_runs_the_python_step(monkeypatch, caplog):
    monkeypatch.setenv("RNNKIT_KERNELS", "0")
    monkeypatch.setattr(kernels, "_loaded", {})
    layer = Recurrent(4, 8, num_layers=2).eval()
    with caplog.at_level("INFO", logger="rnnkit"), torch.no_grad():
        y, _ = layer.step(torch.randn(1, 4))
    assert kernels.stream_kernel() is None and "RNNKIT_KERNELS=0" in caplog.text
    assert _compiled(layer) is None and y.shape == (1, 8)


@pytest.mark.parametrize("frozen", [False, True], ids=["trainable", "frozen-weights"])
def test_step_keeps_gradients_where_asked(path, frozen):
    """With gradients on, the step is differentiable: through the weights, or through the state
    alone, also after gradient-free steps have built the compiled stack."""
    torch.manual_seed(3)
    layer = Recurrent(4, 8, num_layers=2)
    layer.requires_grad_(not frozen)
    _stepped(layer, torch.randn(3, 2, 4))  # under no_grad
    h = torch.randn(2, 3, 8, requires_grad=True)
    y, (h2, c2) = layer.step(torch.randn(3, 4), (h, torch.randn(2, 3, 8)))
    (y.sum() + c2.sum()).backward()
    assert h.grad is not None and h.grad.abs().sum() > 0
    assert (layer.cells[0].weight_hh.grad is None) == frozen


def test_a_stepped_stack_deep_copies_and_the_copy_steps_its_own_weights(path):
    import copy

    torch.manual_seed(4)
    layer = Recurrent(5, 20, num_layers=2).eval()
    x = torch.randn(1, 4, 5)
    _stepped(layer, x)
    twin = copy.deepcopy(layer)
    with torch.no_grad():
        twin.cells[0].weight_ih.mul_(-1)
    _assert_equals_torch_nn(twin, x, f"{path} path, a deep copy")
    _assert_equals_torch_nn(layer, x, f"{path} path, the original")


def test_float64_steps_outside_the_kernel_and_equals_torch_nn(path):
    torch.manual_seed(5)
    layer = Recurrent(3, 10, num_layers=2).double().eval()
    _assert_equals_torch_nn(layer, torch.randn(2, 8, 3, dtype=torch.float64), f"{path} path, float64")
    assert _compiled(layer) is None


@pytest.mark.slow
@pytest.mark.parametrize(
    "batch, input_size, hidden, layers",
    [(1, 256, 256, 2),  # the benchmark's shape
     (1, 7, 33, 2),  # odd input and hidden sizes: a bfloat16 pair with a zero partner
     (5, 3, 20, 3)],  # a batch tile plus a remainder
    ids=["b1-h256", "b1-i7-h33", "b5-h20-3layers"],
)
def test_bfloat16_autocast_step_equals_torch_nn_with_bfloat16_weights(built_kernel, monkeypatch, batch, input_size,
                                                                       hidden, layers):
    """Under bfloat16 autocast the blocked kernel reads bfloat16 weights and computes in float32:
    exactly torch.nn.LSTM (float32) run with the weights rounded to bfloat16 (biases kept)."""
    monkeypatch.setattr(kernels, "_loaded", {"stream": built_kernel})
    torch.manual_seed(6)
    layer = Recurrent(input_size, hidden, num_layers=layers).eval()
    x = torch.randn(batch, STEPS, input_size)
    rounded = layer.to_torch().eval()
    with torch.no_grad():
        for name, p in rounded.named_parameters():
            if name.startswith("weight"):
                p.copy_(p.bfloat16().float())
        want, (want_h, want_c) = rounded(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, (h, c) = _stepped(layer, x)
    assert got.dtype == h.dtype == torch.float32, "the state must stay float32 under autocast"
    _close(got, want, "bfloat16 weights: outputs", atol=2e-5)
    _close(c, want_c, "bfloat16 weights: final c", atol=2e-5)
    stack = _compiled(layer)
    assert stack.has_weights(True) and not stack.has_weights(False), "the bfloat16 stack did not run"
    plain, _ = _stepped(layer, x)  # autocast off again: the float32 weights, no rounding
    with torch.no_grad():
        exact, _ = layer.to_torch().eval()(x)
    _close(plain, exact, "float32 after bfloat16")
    assert (plain - got).abs().max() > 1e-4, "autocast made no difference: the float32 stack ran both times"


def _bf16_gemm_reference(layer: Recurrent, x: torch.Tensor) -> torch.Tensor:
    """The GEMM step's equations in float32 ops: per layer z = b + [x | h] W^T with [x | h] and
    W = [W_ih | W_hh] rounded to bfloat16 and the sums in float32, then the gates."""
    h = [torch.zeros(x.size(0), layer.hidden_size) for _ in layer.cells]
    c = [torch.zeros_like(s) for s in h]
    outputs = []
    with torch.no_grad():
        for t in range(x.size(1)):
            inp = x[:, t]
            for l, cell in enumerate(layer.cells):
                weight = torch.cat([cell.weight_ih, cell.weight_hh], 1).bfloat16().float()
                z = torch.cat([inp, h[l]], 1).bfloat16().float() @ weight.t() + cell.bias_ih + cell.bias_hh
                i, f, g, o = z.chunk(4, 1)
                c[l] = torch.sigmoid(f) * c[l] + torch.sigmoid(i) * torch.tanh(g)
                h[l] = inp = torch.sigmoid(o) * torch.tanh(c[l])
            outputs.append(inp)
    return torch.stack(outputs, 1)


@pytest.mark.slow
def test_many_streams_under_bfloat16_autocast_step_as_one_bfloat16_gemm_per_layer(built_kernel, monkeypatch):
    """From BF16_GEMM_FROM_BATCH streams on, where the CPU multiplies bfloat16 in hardware, a step
    under autocast is one bfloat16 GEMM per layer with float32 sums (then the gates in float32):
    equal to those equations in float32 ops, and not what the blocked product on bfloat16
    weights (the inputs kept float32) gives."""
    if not (built_kernel.HAS_BF16_GEMM and kernels.cpu_multiplies_bf16()):
        pytest.skip("no MKL bfloat16 GEMM in this torch, or no bfloat16 arithmetic in this CPU")
    monkeypatch.setattr(kernels, "_loaded", {"stream": built_kernel})
    torch.manual_seed(8)
    layer = Recurrent(7, 33, num_layers=2).eval()
    x = torch.randn(paths.BF16_GEMM_FROM_BATCH + 3, 12, 7)
    want = _bf16_gemm_reference(layer, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, (h, c) = _stepped(layer, x)
        monkeypatch.setattr(paths, "BF16_GEMM_FROM_BATCH", 10**6)
        layer.path_cache.clear()  # rebuilt with the new threshold
        blocked, _ = _stepped(layer, x)
    assert got.dtype == h.dtype == c.dtype == torch.float32
    _close(got, want, "bfloat16 GEMM step: outputs", atol=1e-5)  # measured: 1e-7
    assert (blocked - want).abs().max() > 1e-4, "the blocked product ran where the GEMM should have"  # 4e-4


@pytest.mark.parametrize("batch", [1, paths.BF16_GEMM_FROM_BATCH], ids=["blocked", "gemm"])
def test_bfloat16_step_sees_fresh_weights(built_kernel, monkeypatch, batch):
    monkeypatch.setattr(kernels, "_loaded", {"stream": built_kernel})
    torch.manual_seed(7)
    layer = Recurrent(4, 16, num_layers=2).eval()
    x = torch.randn(batch, 4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before, _ = layer.step(x)
        layer.cells[1].weight_ih.mul_(-1)  # in place: only the version counter changes
        after, _ = layer.step(x)
        layer.cells[1].weight_ih.mul_(-1)
        again, _ = layer.step(x)
    assert (before - after).abs().max() > 1e-3, "the step served the stale bfloat16 weights"
    _close(again, before, "the weights restored")


def test_after_the_first_step_the_compiled_step_runs_alone_and_bad_input_still_gets_a_clear_error(
        built_kernel, monkeypatch):
    """From the second step on, ``Recurrent.step`` is one compiled call (no Python checks); what
    that call cannot take still reaches the checked path and its readable errors."""
    from rnnkit import layers
    from rnnkit.errors import RnnkitError

    monkeypatch.setattr(kernels, "_loaded", {"stream": built_kernel})
    torch.manual_seed(8)
    layer = Recurrent(6, 16, num_layers=2).eval()
    x = torch.randn(1, 6)
    with torch.no_grad():
        y, state = layer.step(x)  # builds the stack
        monkeypatch.setattr(layers, "step_path", None)  # the checked path would now fail
        y2, state2 = layer.step(x, state)
        want, _ = layer.to_torch().eval()(torch.stack([x, x], 1))
        _close(y2, want[:, 1], "the compiled step alone")
        assert torch.equal(y2, state2[0][-1]), "the output is not the last layer's h"
        monkeypatch.undo()
        monkeypatch.setattr(kernels, "_loaded", {"stream": built_kernel})
        with pytest.raises(RnnkitError, match="shape"):
            layer.step(torch.randn(1, 5), state)
        with pytest.raises(RnnkitError, match="state"):
            layer.step(x, (state[0][:1], state[1][:1]))
        with pytest.raises(RnnkitError, match="state"):
            layer.step(torch.randn(3, 6), state)  # 3 streams, the state of 1


def test_the_compiled_stack_refuses_a_stack_whose_upper_layer_does_not_read_the_one_below(built_kernel, monkeypatch):
    """Layer 1 of 6 inputs under layer 0 of 8 units: the kernel would feed it 8; it must not run."""
    from rnnkit.cells import LSTM

    monkeypatch.setattr(kernels, "_loaded", {"stream": built_kernel})
    cells = nn.ModuleList([LSTM(5, 8), LSTM(6, 8)])
    zeros = torch.zeros(2, 1, 8)
    with torch.no_grad():
        stack = streaming.PathCache().compiled_stack(built_kernel, cells, bf16=False)
        assert stack.step(torch.randn(1, 5), zeros, zeros) is None


@pytest.mark.parametrize("cell, options", [("lstm", {}), ("gru", {}), ("rnn", {}), ("rnn", {"nonlinearity": "relu"})],
                         ids=["lstm", "gru", "rnn-tanh", "rnn-relu"])
def test_one_stream_without_the_kernel_steps_on_column_major_copies(monkeypatch, cell, options):
    """One stream, no kernel, no gradients: ATen's cell per layer over column-major weight copies
    (aten-*-cell-colmajor), equal to torch.nn step after step, following a weight changed in
    place; the path remembered for the stream's shapes never lets a wrong shape through."""
    monkeypatch.setenv("RNNKIT_KERNELS", "0")
    monkeypatch.setattr(kernels, "_loaded", {})
    torch.manual_seed(6)
    layer = Recurrent(7, 12, cell=cell, num_layers=3, **options).eval()
    assert layer.paths().step.name == f"aten-{cell}-cell-colmajor"
    x = torch.randn(1, STEPS, 7)
    reference = layer.to_torch().eval()
    state = layer.initial_state(1, x)
    state = (torch.randn_like(state[0]), torch.randn_like(state[1])) if cell == "lstm" else torch.randn_like(state)
    for what in ("first steps", "after a weight changed in place"):
        got, final = _stepped(layer, x, state)
        with torch.no_grad():
            want, want_final = reference(x, state)
        _close(got, want, f"{cell}, {what}: outputs")
        for got_part, want_part in zip(final if cell == "lstm" else [final], want_final if cell == "lstm" else [want_final]):
            _close(got_part, want_part, f"{cell}, {what}: final state")
        with torch.no_grad():
            layer.cells[1].weight_hh.mul_(-1)
            reference = layer.to_torch().eval()
    assert layer.path_cache.colmajor is not None
    assert [p.name for p in layer.path_cache.steps.values()] == [f"aten-{cell}-cell-colmajor"]
    with torch.no_grad(), pytest.raises(RnnkitError, match="x_t of shape"):
        layer.step(torch.randn(1, 8), state)
    short = (state[0][:2], state[1][:2]) if cell == "lstm" else state[:2]
    with torch.no_grad(), pytest.raises(RnnkitError, match="expected state"):
        layer.step(torch.randn(1, 7), short)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_state_or_output_changed_in_place_between_steps_is_not_carried_over(monkeypatch, cell):
    """One stream without the kernel reads the next step's per-layer state from what the step
    before stacked, while the state handed back is the one it returned, untouched: a state
    changed in place, or an output changed in place (the last layer's state stacked from it), must
    be read as it now is."""
    monkeypatch.setenv("RNNKIT_KERNELS", "0")
    monkeypatch.setattr(kernels, "_loaded", {})
    torch.manual_seed(7)
    layer = Recurrent(4, 6, cell=cell, num_layers=2).eval()
    reference = layer.to_torch().eval()
    x = torch.randn(1, 4, 4)

    def check(state, t, what):
        with torch.no_grad():
            got, got_state = layer.step(x[:, t], state)
            want, want_state = reference(x[:, t:t + 1], state)
        _close(got, want[:, 0], f"{cell}: {what}")
        return got, got_state

    with torch.no_grad():
        y, state = layer.step(x[:, 0], layer.initial_state(1, x))
    y, state = check(state, 1, "the state carried over")
    with torch.no_grad():
        (state[0] if cell == "lstm" else state).add_(1.0)
    y, state = check(state, 2, "a state changed in place")
    with torch.no_grad():
        y.mul_(3.0)
    check(state, 3, "an output changed in place")
    assert layer.path_cache.carried is not None
    with torch.inference_mode():  # inference tensors have no _version: nothing is carried over
        y, state = layer.step(x[:, 0], layer.initial_state(1, x))
        y2, _ = layer.step(x[:, 1], state)
    assert layer.path_cache.carried is None
    _close(y2, check(state.clone() if cell == "gru" else tuple(s.clone() for s in state), 1, "inference mode")[0],
           f"{cell}: inference mode")

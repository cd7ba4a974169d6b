"""The compiled LayerNorm/peephole LSTM recurrence (``cells/kernels/lstm_scan.cpp``) against the
Python time loops of ``LSTMScan`` and the cell's reference step: outputs, final state and every
gradient (x, h0, c0, each parameter), with and without lengths, batch 1 and an odd H, 2 threads,
``gradcheck`` in float64, the reused workspace, and the fallback without the kernel.

The kernel is optional: building it needs a C++ compiler and ninja (~40 s of CPU, cached), so
the tests that build it are slow and skip without a compiler.
"""

from __future__ import annotations

import shutil

import pytest
import torch

import rnnkit
from rnnkit.cells import kernels
from rnnkit.cells.scan import LSTMScan

OPTIONS = pytest.mark.parametrize(
    "options", [{"layer_norm": True}, {"peephole": True}, {"layer_norm": True, "peephole": True}],
    ids=["layer_norm", "peephole", "both"])
LENGTHS = pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
NAMES = ["outputs", "h_T", "c_T", "grad x", "grad h0", "grad c0"]


@pytest.fixture(scope="module")
def lstm_kernel():
    if shutil.which("c++") is None or shutil.which("ninja") is None:
        pytest.skip("no C++ compiler or ninja: the kernel is optional and the Python loops run")
    return kernels.build(names=["lstm"])[0]


def _inputs(B, T, I, H, dtype, with_lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, I, generator=g, dtype=dtype) * 2
    h0, c0 = torch.randn(B, H, generator=g, dtype=dtype), torch.randn(B, H, generator=g, dtype=dtype)
    lengths = torch.randint(1, T + 1, (B,), generator=g) if with_lengths else None
    if lengths is not None:
        lengths[0] = T  # one full row (the layer's time axis is the longest length)
    return x, h0, c0, lengths


def _run(cell, x0, h0_0, c0_0, lengths, kernel):
    """Outputs, final (h, c) and the gradients w.r.t. x, h0, c0 and every parameter, with the
    LSTM kernel ``kernel`` (the built module, or ``None``: the Python loops)."""
    saved = dict(kernels._loaded)
    kernels._loaded["lstm"] = kernel
    try:
        x, h0, c0 = (t.clone().requires_grad_(True) for t in (x0, h0_0, c0_0))
        out, (h, c) = cell(x, (h0, c0), lengths=lengths)
        if cell.backend != "reference":
            assert out.grad_fn.compiled == (kernel is not None), "ran on the wrong path"
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        loss = (out * weights).sum() + (h * 1.5).sum() + (c * 0.7).sum()
        return [out, h, c, *torch.autograd.grad(loss, [x, h0, c0, *cell.parameters()])]
    finally:
        kernels._loaded.clear()
        kernels._loaded.update(saved)


def _assert_close(got, want, names, atol, rtol=0.0):
    assert len(got) == len(want) == len(names)
    for a, b, name in zip(got, want, names):
        assert torch.allclose(a, b, atol=atol, rtol=rtol), f"{name}: max abs diff {(a - b).abs().max():.3g}"


def _cells(options, I, H, dtype):
    torch.manual_seed(1)
    cell = rnnkit.LSTM(I, H, **options).to(dtype)
    with torch.no_grad():  # non-trivial layer-norm and peephole parameters
        for p in cell.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    reference = rnnkit.LSTM(I, H, backend="reference", **options).to(dtype)
    reference.load_state_dict(cell.state_dict())
    names = NAMES + [f"grad {n}" for n, _ in cell.named_parameters()]
    return cell, reference, names


@pytest.mark.slow
@OPTIONS
@LENGTHS
def test_kernel_equals_python_loops_and_reference_float32(lstm_kernel, options, with_lengths):
    cell, reference, names = _cells(options, 6, 16, torch.float32)
    inputs = _inputs(4, 13, 6, 16, torch.float32, with_lengths)
    compiled = _run(cell, *inputs, lstm_kernel)
    _assert_close(compiled, _run(cell, *inputs, None), names, atol=1e-4, rtol=1e-4)
    _assert_close(compiled, _run(reference, *inputs, None), names, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@OPTIONS
@pytest.mark.parametrize("B, H", [(1, 7), (5, 3)], ids=["batch1-H7", "batch5-H3"])
def test_kernel_float64_batch_one_and_odd_hidden(lstm_kernel, options, B, H):
    """float64 (std::exp, std::tanh): equal to the Python loops to rounding, with lengths."""
    cell, reference, names = _cells(options, 4, H, torch.float64)
    inputs = _inputs(B, 9, 4, H, torch.float64, with_lengths=B > 1, seed=B)
    compiled = _run(cell, *inputs, lstm_kernel)
    _assert_close(compiled, _run(cell, *inputs, None), names, atol=1e-10)
    _assert_close(compiled, _run(reference, *inputs, None), names, atol=1e-10)


@pytest.mark.slow
def test_kernel_on_two_threads_equals_one_thread(lstm_kernel):
    """The rows split across threads (and the 2-thread GEMMs) give the same numbers."""
    cell, _, names = _cells({"layer_norm": True, "peephole": True}, 8, 32, torch.float32)
    inputs = _inputs(16, 20, 8, 32, torch.float32, with_lengths=True)
    one = _run(cell, *inputs, lstm_kernel)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = _run(cell, *inputs, lstm_kernel)
    finally:
        torch.set_num_threads(previous)
    _assert_close(two, one, names, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_kernel_gradcheck_float64(lstm_kernel, monkeypatch):
    monkeypatch.setitem(kernels._loaded, "lstm", lstm_kernel)
    torch.manual_seed(2)
    B, T, H = 2, 4, 3
    double = dict(dtype=torch.float64, requires_grad=True)
    valid = torch.tensor([[True] * T, [True, True, False, False]]).unsqueeze(-1)  # (B, T, 1)
    args = (torch.randn(B, T, 4 * H, **double), torch.randn(B, H, **double), torch.randn(B, H, **double),
            torch.randn(4 * H, H, **double), torch.randn(4 * H, **double), torch.randn(3, H, **double),
            1 + 0.1 * torch.randn(4 * H, **double), torch.randn(4 * H, **double),
            1 + 0.1 * torch.randn(H, **double), torch.randn(H, **double), valid)
    assert LSTMScan.apply(*args)[0].grad_fn.compiled
    assert torch.autograd.gradcheck(LSTMScan.apply, args)
    no_norm = args[:6] + (None,) * 4 + (None,)  # peepholes only, no lengths
    assert torch.autograd.gradcheck(LSTMScan.apply, no_norm)


@pytest.mark.slow
def test_workspace_is_reused_and_kept_while_a_graph_needs_it(lstm_kernel, monkeypatch):
    """The per-step tensors live in a reused buffer: a graph kept with ``retain_graph`` keeps
    its own (a second backward after other steps gives the same gradients), a plain training
    loop does not grow the pool, and changing the outputs in place is allowed as for any op."""
    from rnnkit.cells import buffers

    monkeypatch.setitem(kernels._loaded, "lstm", lstm_kernel)
    cell = rnnkit.LSTM(4, 8, layer_norm=True, peephole=True)
    x = torch.randn(3, 10, 4, requires_grad=True)
    out, _ = cell(x)
    first = torch.autograd.grad(out.square().sum(), x, retain_graph=True)[0]
    for _ in range(3):  # other graphs come and go meanwhile
        other, _ = cell(torch.randn(3, 10, 4) * 5)
        other.sum().backward()
    assert torch.equal(first, torch.autograd.grad(out.square().sum(), x)[0])
    pool = buffers._pools.buffers
    sizes = len(pool)
    for _ in range(3):
        other, _ = cell(torch.randn(3, 10, 4))
        other.mul_(2).sum().backward()
    assert len(pool) == sizes <= buffers.MAX_BUFFERS


def test_without_the_lstm_kernel_the_python_loops_run(monkeypatch, caplog):
    monkeypatch.setenv("RNNKIT_KERNELS", "0")
    monkeypatch.setattr(kernels, "_loaded", {})
    cell = rnnkit.LSTM(4, 5, layer_norm=True)
    x = torch.randn(3, 7, 4, requires_grad=True)
    with caplog.at_level("INFO", logger="rnnkit"):
        out, _ = cell(x)
    out.sum().backward()
    assert kernels.lstm_kernel() is None and not out.grad_fn.compiled
    assert "lstm kernel is off (RNNKIT_KERNELS=0)" in caplog.text
    assert out.shape == (3, 7, 5) and x.grad.shape == x.shape


def test_python_loops_run_when_the_kernel_cannot(monkeypatch):
    """bfloat16 tensors (the kernel takes float32 and float64) stay on the Python loops."""
    monkeypatch.setitem(kernels._loaded, "lstm", object())  # would fail if it were called
    cell = rnnkit.LSTM(4, 5, peephole=True).to(torch.bfloat16)
    xw, h0 = torch.randn(2, 3, 20, dtype=torch.bfloat16), torch.zeros(2, 5, dtype=torch.bfloat16)
    out, _, _ = LSTMScan.apply(xw.requires_grad_(), h0, h0, cell.weight_hh, cell.bias_hh, cell.weight_peephole,
                               None, None, None, None, None)
    assert not out.grad_fn.compiled and out.dtype == torch.bfloat16

"""The compiled GRU recurrence (``cells/kernels/gru_scan.cpp``) against the Python recurrence
(``GRUScan``) and ``torch.nn.GRU``: outputs, final state and every gradient, with and without
bias, with variable lengths, batch 1 and an odd H; ``gradcheck`` in float64; autocast; and the
fallback without the kernel.

The kernel is optional: building it needs a C++ compiler and ninja (~30 s of CPU, cached),
so the tests that build it are slow and skip without a compiler.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from rnnkit.cells import kernels
from rnnkit.cells.scan import CompiledGRUScan

SHAPES = pytest.mark.parametrize("B, T, I, H", [(3, 11, 4, 6), (1, 7, 3, 9)], ids=["batch3", "batch1-oddH"])
LENGTHS = pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
BIAS = pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])


@pytest.fixture(scope="module")
def gru_kernel():
    if shutil.which("c++") is None or shutil.which("ninja") is None:
        pytest.skip("no C++ compiler or ninja: the kernel is optional and the Python recurrence runs")
    return kernels.build(names=["gru"])[0]


def _lengths(B: int, T: int):
    return torch.tensor([T, 1, T - 2][:B]) if B > 1 else torch.tensor([T - 3])


def _loss(out, h):
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    return (out * weights).sum() + (h * 1.5).sum()


def _run(cell, x0, h0_0, kernel, lengths=None, autocast=False):
    """Outputs, final state and the gradients w.r.t. x, h0 and every parameter, with the GRU
    kernel ``kernel`` (the built module, or ``None``: the Python recurrence); the forward
    under bfloat16 autocast if asked (backward outside it, as autocast wants)."""
    saved = dict(kernels._loaded)
    kernels._loaded["gru"] = kernel
    try:
        x, h0 = x0.clone().requires_grad_(True), h0_0.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out, h = cell(x, h0, lengths=lengths)
        path = type(out.grad_fn).__name__
        assert path == ("CompiledGRUScanBackward" if kernel is not None else "GRUScanBackward"), path
        return [out, h, *torch.autograd.grad(_loss(out, h), [x, h0, *cell.parameters()])]
    finally:
        kernels._loaded.clear()
        kernels._loaded.update(saved)


def _torch_gru(cell, x0, h0_0, lengths=None):
    """The same outputs and gradients from ``torch.nn.GRU`` with the cell's weights."""
    gru = nn.GRU(cell.input_size, cell.hidden_size, bias=cell.bias, batch_first=True).to(x0.dtype)
    with torch.no_grad():
        for name, p in cell.named_parameters():
            getattr(gru, f"{name}_l0").copy_(p)
    x, h0 = x0.clone().requires_grad_(True), h0_0.clone().requires_grad_(True)
    if lengths is None:
        out, h = gru(x, h0.unsqueeze(0))
    else:
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, h = gru(packed, h0.unsqueeze(0))
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
    h = h.squeeze(0)
    params = [getattr(gru, f"{name}_l0") for name, _ in cell.named_parameters()]
    return [out, h, *torch.autograd.grad(_loss(out, h), [x, h0, *params])]


def _assert_close(got, want, atol, rtol=0.0):
    names = ["outputs", "final state", "grad x", "grad h0", "grad weight_ih", "grad weight_hh",
             "grad bias_ih", "grad bias_hh"]
    assert len(got) == len(want)
    for a, b, name in zip(got, want, names):
        assert torch.allclose(a, b, atol=atol, rtol=rtol), f"{name}: max abs diff {(a - b).abs().max():.3g}"


@pytest.mark.slow
@SHAPES
@LENGTHS
@BIAS
def test_compiled_gru_equals_python_recurrence_and_torch_nn(gru_kernel, B, T, I, H, with_lengths, bias):
    torch.manual_seed(1)
    cell = rnnkit.GRU(I, H, bias=bias)
    x, h0 = torch.randn(B, T, I) * 2, torch.randn(B, H)
    lengths = _lengths(B, T) if with_lengths else None
    compiled = _run(cell, x, h0, gru_kernel, lengths)
    _assert_close(compiled, _run(cell, x, h0, None, lengths), atol=1e-5)
    _assert_close(compiled, _torch_gru(cell, x, h0, lengths), atol=1e-5)
    if with_lengths:  # padded steps output 0; the final state is the last valid step's
        for b, n in enumerate(lengths.tolist()):
            assert (compiled[0][b, n:] == 0).all()
            assert torch.equal(compiled[1][b], compiled[0][b, n - 1])


@pytest.mark.slow
def test_compiled_gru_on_two_threads_splits_the_batch_and_still_agrees(gru_kernel):
    """With 2 threads and enough rows (the kernel splits from ~4K elements a step), each thread
    takes a block of batch rows and sums its own bias gradient: the totals must not change."""
    torch.manual_seed(5)
    cell = rnnkit.GRU(8, 64)
    x, h0 = torch.randn(50, 6, 8), torch.randn(50, 64)
    lengths = torch.randint(1, 7, (50,))
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        compiled = _run(cell, x, h0, gru_kernel, lengths)
    finally:
        torch.set_num_threads(previous)
    _assert_close(compiled, _run(cell, x, h0, None, lengths), atol=1e-5, rtol=1e-5)  # sums up to ~40


@pytest.mark.slow
def test_compiled_gru_float64_matches_to_rounding_without_h0_gradient(gru_kernel):
    """float64 (std::exp, std::tanh in the kernel) agrees with the Python path to ~1e-12; with
    no initial state given, no h0 gradient is wanted and the kernel skips its last product."""
    torch.manual_seed(2)
    cell = rnnkit.GRU(4, 5).double()
    x = torch.randn(3, 9, 4, dtype=torch.float64, requires_grad=True)
    grads = []
    for kernel in (gru_kernel, None):
        saved = dict(kernels._loaded)
        kernels._loaded["gru"] = kernel
        try:
            out, h = cell(x)
            grads.append([out, h, *torch.autograd.grad(_loss(out, h), [x, *cell.parameters()])])
        finally:
            kernels._loaded.clear()
            kernels._loaded.update(saved)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("masked", [False, True], ids=["full", "valid-mask"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_compiled_gru_gradcheck_float64(gru_kernel, masked, bias):
    torch.manual_seed(3)
    B, T, H = 2, 5, 3
    double = dict(dtype=torch.float64, requires_grad=True)
    valid = (torch.arange(T)[None, :] < torch.tensor([T, 2])[:, None]).unsqueeze(2) if masked else None
    args = (torch.randn(B, T, 3 * H, **double), torch.randn(B, H, **double), torch.randn(3 * H, H, **double),
            torch.randn(3 * H, **double) if bias else None)
    assert torch.autograd.gradcheck(lambda *a: CompiledGRUScan.apply(*a, valid, gru_kernel), args)


@pytest.mark.slow
def test_compiled_gru_under_bf16_autocast_equals_python_recurrence(gru_kernel):
    """Under autocast the input projection runs in bfloat16 and the recurrence in float32 on
    both paths (the layer turns autocast off around it): outputs and the recurrence's own
    gradients agree to float32 rounding, those back through the bfloat16 projection (x,
    weight_ih, bias_ih) to bfloat16's (a float32 difference may round to the next bf16 value)."""
    torch.manual_seed(4)
    cell = rnnkit.GRU(4, 6)
    x, h0 = torch.randn(3, 8, 4), torch.randn(3, 6)
    compiled, python = (_run(cell, x, h0, kernel, autocast=True) for kernel in (gru_kernel, None))
    assert compiled[0].dtype == torch.float32
    for i, name in enumerate(["outputs", "final state", "grad x", "grad h0", "grad weight_ih", "grad weight_hh",
                              "grad bias_ih", "grad bias_hh"]):
        tolerance = dict(atol=1e-3, rtol=2 ** -7) if name in ("grad x", "grad weight_ih", "grad bias_ih") else dict(atol=1e-5)
        assert torch.allclose(compiled[i], python[i], **tolerance), name


@pytest.mark.parametrize("why", ["disabled", "not built"])
def test_without_the_gru_kernel_the_python_recurrence_runs(monkeypatch, caplog, tmp_path, why):
    if why == "disabled":
        monkeypatch.setenv("RNNKIT_KERNELS", "0")
    else:
        monkeypatch.setenv("RNNKIT_CACHE", str(tmp_path))  # an empty cache: nothing built there
    monkeypatch.setattr(kernels, "_loaded", {})
    cell = rnnkit.GRU(3, 4)
    x = torch.randn(2, 5, 3, requires_grad=True)
    with caplog.at_level("INFO", logger="rnnkit"):
        out, h = cell(x)
    out.sum().backward()
    assert kernels.gru_kernel() is None
    assert ("gru kernel is off (RNNKIT_KERNELS=0)" if why == "disabled" else "gru kernel is off (not built") in caplog.text
    assert type(out.grad_fn).__name__ == "GRUScanBackward"
    assert out.shape == (2, 5, 4) and x.grad.shape == x.shape and cell.weight_hh.grad is not None

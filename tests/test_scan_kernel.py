"""The compiled minGRU/minLSTM scan (``cells/kernels/linear_scan.cpp``) against the Python scan
and the sequential reference step: outputs, final state and every gradient, ``gradcheck`` in
float64, float32 with inputs that saturate the gates, and the fallback without the kernel.

The kernel is optional: building it needs a C++ compiler and ninja (~30 s of CPU, cached),
so the tests that build it are slow and skip without a compiler.
"""

from __future__ import annotations

import shutil

import pytest
import torch

import rnnkit
from rnnkit.cells import kernels
from rnnkit.cells.minimal import _CompiledScan

B, T, I, H = 3, 11, 4, 5
MINIMAL = pytest.mark.parametrize("cls", [rnnkit.MinGRU, rnnkit.MinLSTM], ids=["mingru", "minlstm"])


@pytest.fixture(scope="module")
def scan_kernel():
    if shutil.which("c++") is None or shutil.which("ninja") is None:
        pytest.skip("no C++ compiler or ninja: the kernel is optional and the Python scan runs")
    return kernels.build(names=["scan"])[0]


def _run(cell, x0, h0_0, kernel):
    """Outputs, final state and the gradients w.r.t. x, h0 and every parameter, with the scan
    kernel ``kernel`` (the built module, or ``None``: the Python scan)."""
    saved = dict(kernels._loaded)
    kernels._loaded["scan"] = kernel
    try:
        x, h0 = x0.clone().requires_grad_(True), h0_0.clone().requires_grad_(True)
        out, h = cell(x, h0)
        compiled = type(out.grad_fn).__name__ == "_CompiledScanBackward"
        assert compiled == (kernel is not None and cell.uses_fused), "ran on the wrong path"
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        loss = (out * weights).sum() + (h * 1.5).sum()
        return [out, h, *torch.autograd.grad(loss, [x, h0, *cell.parameters()])]
    finally:
        kernels._loaded.clear()
        kernels._loaded.update(saved)


def _assert_close(got, want, atol, rtol=0.0):
    names = ["outputs", "final state", "grad x", "grad h0", "grad weight", "grad bias"]
    for a, b, name in zip(got, want, names):
        assert torch.allclose(a, b, atol=atol, rtol=rtol), f"{name}: max abs diff {(a - b).abs().max():.3g}"


@pytest.mark.slow
@MINIMAL
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_compiled_scan_equals_python_scan_and_reference(scan_kernel, cls, bias):
    torch.manual_seed(1)
    cell = cls(I, H, bias=bias).double()
    reference = cls(I, H, bias=bias, backend="reference").double()
    reference.load_state_dict(cell.state_dict())
    x, h0 = torch.randn(B, T, I, dtype=torch.float64) * 2, torch.randn(B, H, dtype=torch.float64)
    compiled = _run(cell, x, h0, scan_kernel)
    _assert_close(compiled, _run(cell, x, h0, None), atol=1e-12)
    _assert_close(compiled, _run(reference, x, h0, None), atol=1e-12)


@pytest.mark.slow
@MINIMAL
@pytest.mark.parametrize("input_grad", [True, False], ids=["dx", "no-dx"])
def test_fused_backward_carries_the_gradient_across_its_chunks(scan_kernel, cls, input_grad):
    """300 steps: the fused passes' chunks (forward 256 steps, backward 128: whole ones and a
    part) must hand the state and the gradient on from chunk to chunk, and their chunked GEMMs
    give the whole x W^T, dW and dx."""
    torch.manual_seed(4)
    cell = cls(I, H).double()
    x, h0 = torch.randn(2, 300, I, dtype=torch.float64), torch.randn(2, H, dtype=torch.float64)

    def gradients(kernel):
        saved = dict(kernels._loaded)
        kernels._loaded["scan"] = kernel
        try:
            xs = x.clone().requires_grad_(input_grad)
            out, _ = cell(xs, h0)
            assert (type(out.grad_fn).__name__ == "_CompiledScanBackward") == (kernel is not None)
            wanted = [xs, *cell.parameters()] if input_grad else list(cell.parameters())
            return (out.detach(), *torch.autograd.grad((out * out.detach().cos()).sum(), wanted))
        finally:
            kernels._loaded.clear()
            kernels._loaded.update(saved)

    for fused, python in zip(gradients(scan_kernel), gradients(None)):
        assert torch.allclose(fused, python, atol=1e-11), f"max abs diff {(fused - python).abs().max():.3g}"


@pytest.mark.slow
@MINIMAL
def test_two_threads_and_two_layers_give_the_one_thread_gradients(scan_kernel, cls, monkeypatch):
    """The fused backward's GEMMs run on torch's other threads too, where grad mode is on: with
    a second layer's input requiring grad they must still run, unrecorded, and agree."""
    monkeypatch.setitem(kernels._loaded, "scan", scan_kernel)
    torch.manual_seed(5)
    stack = rnnkit.layers.Recurrent(I, H, cell=cls.__name__.lower(), num_layers=2).double()
    x = torch.randn(4, 300, I, dtype=torch.float64)
    grads = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        xs = x.clone().requires_grad_(True)
        out, _ = stack(xs)
        grads.append(torch.autograd.grad(out.square().sum(), [xs, *stack.parameters()]))
    for one, two in zip(*grads):
        assert not two.requires_grad and torch.allclose(one, two, atol=1e-11)


@pytest.mark.slow
@MINIMAL
def test_compiled_scan_gradcheck_float64(scan_kernel, cls):
    torch.manual_seed(2)
    chunks = cls.num_chunks
    double = dict(dtype=torch.float64, requires_grad=True)
    args = (torch.randn(2, 6, 3, **double), torch.randn(chunks * 4, 3, **double),
            torch.randn(chunks * 4, **double), torch.randn(2, 4, **double))
    assert torch.autograd.gradcheck(lambda *a: _CompiledScan.apply(*a, scan_kernel), args)


@pytest.mark.slow
@MINIMAL
def test_compiled_scan_float32_saturated_gates(scan_kernel, cls):
    """Float32 (the kernel's own exp) with pre-activations up to +-100: every gate saturates in
    both directions, where a careless exp overflows. Compared with the float64 reference."""
    torch.manual_seed(3)
    cell = cls(I, H)
    reference = cls(I, H, backend="reference").double()
    reference.load_state_dict(cell.state_dict())
    x, h0 = torch.randn(B, 40, I) * 60, torch.randn(B, H)
    with torch.no_grad():
        extreme = torch.nn.functional.linear(x, cell.weight_ih, cell.bias_ih).abs().max()
    assert extreme > 100, "the test must reach pre-activations beyond the float32 exp's range"
    got = _run(cell, x, h0, scan_kernel)
    want = _run(reference, x.double(), h0.double(), None)
    assert all(torch.isfinite(g).all() for g in got)
    _assert_close([g.double() for g in got], want, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_reused_buffers_survive_retain_graph_and_are_reused(scan_kernel, monkeypatch):
    """The kernel path reuses its big temporaries: a graph kept with ``retain_graph`` must keep
    its own (a second backward after another forward gives the same gradients), and a plain
    training loop must not grow the pool."""
    from rnnkit.cells import buffers

    monkeypatch.setitem(kernels._loaded, "scan", scan_kernel)
    cell = rnnkit.MinGRU(I, H)
    x = torch.randn(B, T, I, requires_grad=True)
    out, _ = cell(x)
    assert type(out.grad_fn).__name__ == "_CompiledScanBackward"
    first = torch.autograd.grad(out.square().sum(), x, retain_graph=True)[0]
    for _ in range(3):  # other graphs come and go meanwhile
        other, _ = cell(torch.randn(B, T, I) * 5)
        other.sum().backward()
    again = torch.autograd.grad(out.square().sum(), x)[0]
    assert torch.equal(first, again)
    pool = buffers._pools.buffers
    sizes = len(pool)
    for _ in range(3):
        other, _ = cell(torch.randn(B, T, I))
        other.sum().backward()
    assert len(pool) == sizes <= buffers.MAX_BUFFERS


@pytest.mark.slow
@MINIMAL
def test_outputs_a_caller_keeps_are_never_reused(scan_kernel, cls, monkeypatch):
    """The outputs come from the reused buffers too: while a caller holds them (no graph
    needed), later calls must write elsewhere; once dropped, their buffer serves again."""
    from rnnkit.cells import buffers

    monkeypatch.setitem(kernels._loaded, "scan", scan_kernel)
    monkeypatch.setattr(buffers._pools, "buffers", [], raising=False)  # room for this test's buffers
    cell = cls(I, H)
    with torch.no_grad():
        kept = [cell(torch.randn(B, T, I))[0] for _ in range(3)]
        copies = [k.clone() for k in kept]
        for _ in range(3):
            cell(torch.randn(B, T, I) * 3)
        pointers = {cell(torch.randn(B, T, I))[0].data_ptr() for _ in range(3)}
    assert all(torch.equal(k, c) for k, c in zip(kept, copies))
    assert len(pointers) == 1 and not pointers & {k.data_ptr() for k in kept}


@pytest.mark.slow
@MINIMAL
def test_compiled_scan_under_bfloat16_autocast_runs_its_gemms_in_bfloat16(scan_kernel, cls):
    """Under autocast the kernel path still runs (it used to fall back to the slower Python
    scan): its two GEMMs in bfloat16, the scan in float32. Close to float32, and as close as
    the Python path under autocast, but not equal (the bfloat16 GEMMs did run)."""
    torch.manual_seed(3)
    cell = cls(16, 32)
    x, h0 = torch.randn(4, 50, 16), torch.randn(4, 32)
    exact = _run(cell, x, h0, scan_kernel)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = _run(cell, x, h0, scan_kernel)
        python = _run(cell, x, h0, None)
    assert low[0].dtype == torch.float32
    for got, want, py, name in zip(low, exact, python, ["outputs", "final state", "grad x", "grad h0", "grad weight"]):
        error, python_error = ((got - want).norm() / want.norm()).item(), ((py - want).norm() / want.norm()).item()
        assert 1e-5 < error < max(2e-2, 3 * python_error), f"{name}: relative error {error:.2g} (Python path {python_error:.2g})"


@pytest.mark.slow
@pytest.mark.parametrize("chunks", [2, 3], ids=["mingru", "minlstm"])
def test_kernel_reads_bfloat16_xw_as_its_float32_widening_and_writes_dk_rounded(scan_kernel, chunks):
    """Under autocast the kernel keeps the GEMM's bfloat16 x W^T: a pass over it gives what a
    float32 pass over the same values widened gives (to float32 rounding), dk comes out as that
    pass's dk rounded to bfloat16, and dbias, dh0 stay float32. H=40 is not a multiple of the
    vector width, so the loops' remainders run too."""
    torch.manual_seed(5)
    batch, steps, hidden = 3, 37, 40
    xw = (torch.randn(batch * steps, chunks * hidden) * 4).to(torch.bfloat16)
    bias, h0, dh = torch.randn(chunks * hidden), torch.randn(batch, hidden), torch.randn(batch, steps, hidden)
    h_low, h_wide = torch.empty(batch, steps, hidden), torch.empty(batch, steps, hidden)
    scan_kernel.scan_forward(xw, bias, h0, chunks, h_low)
    scan_kernel.scan_forward(xw.float(), bias, h0, chunks, h_wide)
    assert torch.allclose(h_low, h_wide, rtol=1e-6, atol=1e-6)
    dk_low, dk_wide = torch.empty_like(xw), torch.empty(xw.shape)
    _, dbias_low, dh0_low = scan_kernel.scan_backward(xw, bias, h_low, h0, dh, dk_low, chunks)
    _, dbias_wide, dh0_wide = scan_kernel.scan_backward(xw.float(), bias, h_wide, h0, dh, dk_wide, chunks)
    assert dk_low.dtype == torch.bfloat16 and dbias_low.dtype == dh0_low.dtype == torch.float32
    rounding = dk_wide.abs() * 2.0**-8 + 1e-30  # half a bfloat16 ulp, and a float32 ulp before it
    assert ((dk_low.float() - dk_wide).abs() <= rounding).all()
    assert (dk_low.float() != dk_wide).any(), "dk was not rounded to bfloat16"
    assert torch.allclose(dbias_low, dbias_wide, rtol=1e-5, atol=1e-6)
    assert torch.allclose(dh0_low, dh0_wide, rtol=1e-5, atol=1e-6)


def test_without_the_scan_kernel_the_python_scan_runs(monkeypatch, caplog):
    monkeypatch.setenv("RNNKIT_KERNELS", "0")
    monkeypatch.setattr(kernels, "_loaded", {})
    cell = rnnkit.MinLSTM(I, H)
    x = torch.randn(B, T, I, requires_grad=True)
    with caplog.at_level("INFO", logger="rnnkit"):
        out, h = cell(x)
    out.sum().backward()
    assert kernels.scan_kernel() is None
    assert "scan kernel is off (RNNKIT_KERNELS=0)" in caplog.text
    assert out.shape == (B, T, H) and x.grad.shape == x.shape

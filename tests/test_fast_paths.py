"""Every fast path (issue 7) against the reference equations it replaces: outputs and gradients.

- the streaming step (``cells/streaming.py``) against ATen's ``lstm_cell`` and the
  reference step, including after the weights change under it;
- rnnkit's own fused recurrences (``cells/scan.py``: LayerNorm/peephole LSTM, GRU)
  against the reference path, with padding, and by ``gradcheck`` in float64;
- minGRU/minLSTM: the parallel log-space scan against the sequential step.
"""

from __future__ import annotations

import pytest
import torch
from torch import _VF

import rnnkit
from rnnkit.cells.scan import GRUScan, LSTMScan
from rnnkit.errors import RnnkitError
from rnnkit.layers import Recurrent

B, T, I, H = 3, 9, 4, 5
LENGTHS = torch.tensor([9, 4, 1])  # unsorted padding, down to one step


def _close(a, b, what, atol=1e-5):
    diff = (a - b).abs().max().item()
    assert diff <= atol, f"{what}: max abs diff {diff:.3g} > {atol}"


def _pair(cls, dtype=torch.float64, **options):
    """The same cell twice, fused and reference, with non-trivial layer-norm parameters."""
    cells = []
    for backend in ("fused", "reference"):
        torch.manual_seed(7)
        cell = cls(I, H, backend=backend, **options).to(dtype)
        with torch.no_grad():
            for name, p in cell.named_parameters():
                if name.startswith("ln_"):
                    p.uniform_(0.5, 1.5) if name.endswith("weight") else p.uniform_(-0.3, 0.3)
        cells.append(cell)
    return cells


def _outputs_and_grads(cell, x0, state0, lengths):
    """Outputs, final state and gradients w.r.t. input, initial state and every parameter."""
    x = x0.clone().requires_grad_(True)
    state = [s.clone().requires_grad_(True) for s in state0]
    out, final = cell(x, tuple(state) if len(state) == 2 else state[0], lengths=lengths)
    final = list(final) if isinstance(final, tuple) else [final]
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    loss = (out * weights).sum() + sum((f * (k + 1.5)).sum() for k, f in enumerate(final))
    grads = torch.autograd.grad(loss, [x, *state, *cell.parameters()])
    return [out, *final, *grads]


def _assert_paths_agree(cls, lengths, atol=1e-9, **options):
    fused, reference = _pair(cls, **options)
    assert fused.uses_fused and not reference.uses_fused
    torch.manual_seed(3)
    x = torch.randn(B, T, I, dtype=torch.float64)
    state0 = [torch.randn(B, H, dtype=torch.float64) for _ in range(fused.num_states)]
    got = _outputs_and_grads(fused, x, state0, lengths)
    want = _outputs_and_grads(reference, x, state0, lengths)
    names = ["outputs"] + [f"final state {k}" for k in range(fused.num_states)] + ["grad x"]
    names += [f"grad state {k}" for k in range(fused.num_states)]
    names += [f"grad {n}" for n, _ in fused.named_parameters()]
    for a, b, name in zip(got, want, names):
        _close(a, b, name, atol)
    if lengths is not None:
        assert torch.count_nonzero(got[0][1, int(lengths[1]):]) == 0, "padding outputs not zero"


# ------------------------------------------------------------- fused recurrences (scan.py)

LSTM_OPTIONS = pytest.mark.parametrize(
    "options",
    [{"peephole": True}, {"layer_norm": True}, {"peephole": True, "layer_norm": True},
     {"peephole": True, "bias": False}, {"layer_norm": True, "bias": False}],
    ids=["peephole", "layer_norm", "both", "peephole-nobias", "layer_norm-nobias"],
)
PADDING = pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "padded"])


@LSTM_OPTIONS
@PADDING
def test_fused_option_lstm_equals_reference(options, lengths):
    _assert_paths_agree(rnnkit.LSTM, lengths, **options)


@PADDING
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_fused_gru_recurrence_equals_reference(lengths, bias):
    _assert_paths_agree(rnnkit.GRU, lengths, bias=bias)


def test_lstm_scan_gradcheck_float64():
    torch.manual_seed(0)
    b, t, h = 2, 3, 2
    double = dict(dtype=torch.float64, requires_grad=True)
    args = [torch.randn(b, t, 4 * h, **double), torch.randn(b, h, **double), torch.randn(b, h, **double),
            torch.randn(4 * h, h, **double), torch.randn(4 * h, **double), torch.randn(3, h, **double),
            torch.rand(4 * h, **double), torch.randn(4 * h, **double), torch.rand(h, **double),
            torch.randn(h, **double)]
    valid = (torch.arange(t)[None, :] < torch.tensor([3, 2])[:, None]).unsqueeze(2)
    assert torch.autograd.gradcheck(lambda *a: LSTMScan.apply(*a, valid), args, eps=1e-6, atol=1e-6)


def test_gru_scan_gradcheck_float64():
    torch.manual_seed(0)
    b, t, h = 2, 3, 2
    double = dict(dtype=torch.float64, requires_grad=True)
    args = [torch.randn(b, t, 3 * h, **double), torch.randn(b, h, **double),
            torch.randn(3 * h, h, **double), torch.randn(3 * h, **double)]
    valid = (torch.arange(t)[None, :] < torch.tensor([2, 3])[:, None]).unsqueeze(2)
    assert torch.autograd.gradcheck(lambda *a: GRUScan.apply(*a, valid), args, eps=1e-6, atol=1e-6)


# ----------------------------------------------------------------- streaming (streaming.py)


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("cell_type", ["lstm", "gru", "rnn"])
def test_steps_without_kernels_run_aten_fused_cells_and_equal_the_reference_equations(monkeypatch, batch, bias, cell_type):
    """The path without compiled kernels steps each cell with ATen's fused cell op (never slower
    Python gate arithmetic), for one cell and for a stack, and that equals the equations as written."""
    from rnnkit.cells import kernels

    monkeypatch.setenv("RNNKIT_KERNELS", "0")
    monkeypatch.setattr(kernels, "_loaded", {})
    op = {"lstm": "lstm_cell", "gru": "gru_cell", "rnn": "rnn_tanh_cell"}[cell_type]
    calls = []
    aten = getattr(_VF, op)
    monkeypatch.setattr(_VF, op, lambda *a: calls.append(op) or aten(*a), raising=False)
    fast = Recurrent(I, H, cell=cell_type, num_layers=2, bias=bias).eval()
    slow = Recurrent(I, H, cell=cell_type, num_layers=2, bias=bias, backend="reference").eval()
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(batch, 3, I)
    state = fast.initial_state(batch, x)
    state = tuple(torch.randn_like(s) for s in state) if isinstance(state, tuple) else torch.randn_like(state)
    with torch.no_grad():
        got, want = (state, state)
        for t in range(3):
            y, got = fast.step(x[:, t], got)
            y_ref, want = slow.step(x[:, t], want)
            _close(y, y_ref, f"{cell_type} step {t}")
        cell_y, _ = fast.cells[0].step(x[:, 0])
        ref_y, _ = slow.cells[0].step(x[:, 0])
    _close(cell_y, ref_y, f"{cell_type} cell step")
    assert calls.count(op) == 2 * 3 + 1, f"ATen's {op} did not run every step: {calls}"


def test_streaming_step_sees_weight_updates():
    """An optimiser step, load_state_dict or .data swap: the next step uses the new weights."""
    cell = rnnkit.LSTM(I, H)
    x_t = torch.randn(2, I)
    state = (torch.randn(2, H), torch.randn(2, H))

    def check(what):
        with torch.no_grad():
            got, _ = cell.step(x_t, state)
        want, _ = _VF.lstm_cell(x_t, state, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
        _close(got, want.detach(), what)

    check("first step")
    with torch.no_grad():
        cell.weight_hh.mul_(-2.0)  # in place, as an optimiser does
    check("after an in-place update")
    other = rnnkit.LSTM(I, H)
    cell.load_state_dict(other.state_dict())
    check("after load_state_dict")
    cell.bias_ih.data = torch.randn(4 * H)
    check("after swapping .data")


def test_step_with_gradients_runs_the_differentiable_path():
    cell = rnnkit.LSTM(I, H)
    x_t = torch.randn(2, I, requires_grad=True)
    h, (_, c) = cell.step(x_t)
    (h.sum() + c.sum()).backward()
    assert cell.weight_hh.grad is not None and x_t.grad is not None


@pytest.mark.parametrize("cell_name", ["lstm", "gru", "rnn", "mingru", "minlstm"])
def test_stacked_step_equals_forward(cell_name):
    torch.manual_seed(1)
    layer = Recurrent(I, H, cell=cell_name, num_layers=2).eval()
    x = torch.randn(B, T, I)
    with torch.no_grad():
        out, final = layer(x)
        state, steps = None, []
        for t in range(T):
            y, state = layer.step(x[:, t], state)
            steps.append(y)
    _close(torch.stack(steps, 1), out, "stepped outputs")
    for s, f in zip(state if isinstance(state, tuple) else (state,), final if isinstance(final, tuple) else (final,)):
        _close(s, f, "stepped final state")


def test_stacked_step_checks_its_input_once():
    layer = Recurrent(I, H, num_layers=2)
    with pytest.raises(RnnkitError, match=rf"\(batch, {I}\), got \(2, {I + 1}\)"):
        layer.step(torch.randn(2, I + 1))
    with pytest.raises(RnnkitError, match=r"state.*\(2, 2, 5\)"):
        layer.step(torch.randn(2, I), (torch.zeros(2, 3, H), torch.zeros(2, 3, H)))


# ------------------------------------------------------------------------ minGRU / minLSTM

MINIMAL = pytest.mark.parametrize("cls", [rnnkit.MinGRU, rnnkit.MinLSTM], ids=["mingru", "minlstm"])


@MINIMAL
@PADDING
def test_parallel_scan_equals_sequential_steps(cls, lengths):
    _assert_paths_agree(cls, lengths)


@MINIMAL
def test_parallel_scan_float32_and_long_sequences(cls):
    """Float32 over 300 steps: the log-space scan stays within rounding of the sequential form."""
    fused, reference = _pair(cls, dtype=torch.float32)
    x = torch.randn(2, 300, I)
    h0 = torch.randn(2, H) * 3  # any sign: h0 enters outside the logs
    with torch.no_grad():
        _close(fused(x, h0)[0], reference(x, h0)[0], "outputs", atol=1e-4)


@MINIMAL
def test_minimal_cell_padded_batch_equals_each_sequence_alone(cls):
    cell = cls(I, H)
    x = torch.randn(B, T, I) * 3
    with torch.no_grad():
        out, h = cell(x, lengths=LENGTHS)
        for b, length in enumerate(LENGTHS.tolist()):
            alone, h_alone = cell(x[b:b + 1, :length])
            _close(out[b, :length], alone[0], f"sequence {b}")
            _close(h[b], h_alone[0], f"sequence {b} final state")


@MINIMAL
def test_minimal_cell_contract(cls):
    cell = cls(I, H)
    assert cell.weight_hh is None and "weight_hh" not in cell.state_dict()
    assert cell.weight_ih.shape == (cls.num_chunks * H, I)
    x = torch.randn(B, T, I)
    out, h, gates = cell(x, return_gates=True)
    assert set(gates) == set(cls.gate_names) and all(g.shape == (B, T, H) for g in gates.values())
    assert (gates["candidate"] > 0).all(), "g(.) must be positive for the log-space scan"
    if cls is rnnkit.MinLSTM:
        _close(gates["forget"] + gates["input"], torch.ones(B, T, H), "f' + i' = 1")
    with pytest.raises(RnnkitError, match=f"torch.nn has no {cls.__name__}"):
        Recurrent(I, H, cell=cls.__name__.lower()).to_torch()


@pytest.mark.slow
def test_mingru_learns_to_recall_a_marked_input():
    """Input-only gates can still choose what to remember: recall the sign of the one marked
    value among 12 noisy steps (the marker says when to write). Loss must fall far below chance."""
    torch.manual_seed(0)
    model = Recurrent(2, 16, cell="mingru", num_layers=2)
    head = torch.nn.Linear(16, 1)
    opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=1e-2)
    losses = []
    for _ in range(200):
        values, marker = torch.randn(32, 12), torch.zeros(32, 12)
        where = torch.randint(0, 6, (32,))
        marker[torch.arange(32), where] = 1.0
        target = (values[torch.arange(32), where] > 0).float()
        out, _ = model(torch.stack([values, marker], dim=2))  # (32, 12, 16)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(out[:, -1]).squeeze(1), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    final = sum(losses[-10:]) / 10
    assert final < 0.3, f"loss {final:.3f} (chance is 0.693)"


@pytest.mark.parametrize("steps", [1, 10, 17], ids=["T1", "T10", "T17"])  # blocks that do not divide T
def test_blocked_scan_and_log_space_scan_equal_the_loop(steps):
    from rnnkit.cells.minimal import LinearScan, log_space_scan

    torch.manual_seed(0)
    double = dict(dtype=torch.float64, requires_grad=True)
    a, b, h0 = torch.rand(2, steps, 3, **double), torch.rand(2, steps, 3, **double), torch.randn(2, 3, **double)
    h, loop = h0, []
    for t in range(steps):
        h = a[:, t] * h + b[:, t]
        loop.append(h)
    loop = torch.stack(loop, dim=1)
    for scan in (LinearScan.apply(a, b, h0), log_space_scan(a.log(), b.log(), h0)):
        _close(scan, loop, "scan vs loop", atol=1e-10)
    weights = torch.randn(2, steps, 3, dtype=torch.float64)
    want = torch.autograd.grad((loop * weights).sum(), (a, b, h0))
    got = torch.autograd.grad((LinearScan.apply(a, b, h0) * weights).sum(), (a, b, h0))
    for x, y, name in zip(got, want, ("da", "db", "dh0")):
        _close(x, y, name, atol=1e-10)


@pytest.mark.slow
def test_compiled_streaming_kernel_equals_python_step(tmp_path, monkeypatch):
    """Builds the optional kernel (a C++ compiler needed; ~30 s of CPU) and checks it step for step."""
    import shutil

    from rnnkit.cells import kernels

    if shutil.which("c++") is None or shutil.which("ninja") is None:
        pytest.skip("no C++ compiler or ninja: the kernel is optional and the Python step runs")
    monkeypatch.setattr(kernels, "_loaded", {})
    kernels.build(names=["stream"])
    torch.manual_seed(0)
    layer = Recurrent(I, H, num_layers=3).eval()
    x = torch.randn(2, T, I)
    with torch.no_grad():
        out, (h, c) = layer(x)
        state, steps = None, []
        for t in range(T):
            y, state = layer.step(x[:, t], state)
            steps.append(y)
    assert kernels.stream_kernel() is not None
    _close(torch.stack(steps, 1), out, "kernel-stepped outputs")
    _close(state[0], h, "kernel h")
    _close(state[1], c, "kernel c")


def test_without_a_built_kernel_the_python_step_runs(monkeypatch, tmp_path, caplog):
    from rnnkit.cells import kernels

    monkeypatch.setenv("RNNKIT_CACHE", str(tmp_path))  # an empty cache: nothing built
    monkeypatch.setattr(kernels, "_loaded", {})
    layer = Recurrent(I, H, num_layers=2).eval()
    with caplog.at_level("INFO", logger="rnnkit"), torch.no_grad():
        y, _ = layer.step(torch.randn(1, I))
    assert kernels.stream_kernel() is None
    assert "not built" in caplog.text and y.shape == (1, H)


def test_a_kernel_build_is_keyed_by_every_header_it_includes_nested_too(monkeypatch, tmp_path):
    """Editing a header a kernel reaches only through another header must rebuild the kernel."""
    from rnnkit.cells import kernels

    for name in ("first.cpp", "outer.h", "inner.h"):
        (tmp_path / name).write_text({"first.cpp": '#include "outer.h"\n', "outer.h": '#include "inner.h"\n#include "inner.h"\n',
                                      "inner.h": "v1\n"}[name])
    monkeypatch.setattr(kernels, "__file__", str(tmp_path / "__init__.py"))
    monkeypatch.setitem(kernels.KERNELS, "toy", ("first.cpp", ("-O3",), "a test kernel"))
    before = kernels.build_directory("toy")
    (tmp_path / "inner.h").write_text("v2\n")
    assert kernels.build_directory("toy") != before
    assert kernels._source_and_headers("first.cpp").count(b"v2") == 1, "a header counted twice"

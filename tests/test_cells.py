"""The recurrent cells: both paths against torch.nn and against their own equations.

Every plain cell is run three ways on the same weights -- rnnkit's fused path, rnnkit's
reference equations and ``torch.nn``'s module -- and the three must agree in outputs,
final state and every gradient. The options the fused kernels cannot run (peepholes,
layer norm) are checked against an independent re-implementation of the docstring
equations written here, and by ``gradcheck`` in float64.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

import rnnkit
from rnnkit.errors import RnnkitError

ATOL = 1e-5  # float32, small shapes: the paths differ by rounding only
B, T, I, H = 3, 5, 4, 6

# (cell name, constructor keyword arguments) for every plain cell the fused kernel runs
KINDS = {
    "lstm": (rnnkit.LSTM, {}),
    "gru": (rnnkit.GRU, {}),
    "rnn_tanh": (rnnkit.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (rnnkit.RNN, {"nonlinearity": "relu"}),
}
TORCH_LAYER = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN, "rnn_relu": nn.RNN}
TORCH_CELL = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn_tanh": nn.RNNCell, "rnn_relu": nn.RNNCell}

kinds = pytest.mark.parametrize("kind", list(KINDS))
biases = pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
backends = pytest.mark.parametrize("backend", ["fused", "reference"])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make_cell(kind: str, *, bias: bool = True, backend: str = "auto", seed: int = 1, **options):
    """A cell whose parameters depend only on ``seed`` (so two backends share weights)."""
    cls, kwargs = KINDS[kind]
    torch.manual_seed(seed)
    return cls(I, H, bias=bias, backend=backend, **kwargs, **options)


def torch_layer(kind: str, cell) -> nn.Module:
    """``torch.nn.LSTM``/``GRU``/``RNN`` (batch_first) holding ``cell``'s weights."""
    kwargs = {"nonlinearity": KINDS[kind][1]["nonlinearity"]} if kind.startswith("rnn") else {}
    layer = TORCH_LAYER[kind](I, H, bias=cell.bias, batch_first=True, **kwargs)
    layer.load_state_dict({f"{name}_l0": p.detach().clone() for name, p in cell.named_parameters()})
    return layer


def random_state(kind: str, batch: int = B, dtype=torch.float32):
    """A non-zero initial state, as leaves that collect gradients: [h] or [h, c]."""
    n = 2 if kind == "lstm" else 1
    return [torch.randn(batch, H, dtype=dtype, requires_grad=True) for _ in range(n)]


def public(kind: str, states):
    return tuple(states) if kind == "lstm" else states[0]


def as_list(kind: str, state):
    return list(state) if kind == "lstm" else [state]


# ----------------------------------------------------------- fused == reference == torch.nn


def _run_and_grad(module, kind, x0, state0, is_torch: bool):
    """Outputs, final states and gradients w.r.t. input, initial state and parameters."""
    x = x0.detach().clone().requires_grad_(True)
    states = [s.detach().clone().requires_grad_(True) for s in state0]
    if is_torch:
        hx = tuple(s.unsqueeze(0) for s in states)  # (1, B, H): one layer, one direction
        out, final = module(x, hx if kind == "lstm" else hx[0])
        final = [f.squeeze(0) for f in as_list(kind, final)]
    else:
        out, final = module(x, public(kind, states))
        final = as_list(kind, final)
    # fixed random weights on every output, so every gradient path is exercised
    g = torch.Generator().manual_seed(123)
    loss = (out * torch.randn(out.shape, generator=g)).sum()
    for f in final:
        loss = loss + (f * torch.randn(f.shape, generator=g)).sum()
    module.zero_grad()
    loss.backward()
    grads = {name.removesuffix("_l0"): p.grad.clone() for name, p in module.named_parameters()}
    return out.detach(), [f.detach() for f in final], x.grad, [s.grad for s in states], grads


def _assert_close(a, b, what):
    diff = (a - b).abs().max().item()
    assert diff <= ATOL, f"{what}: max abs diff {diff:.3g} > {ATOL}"


@kinds
@biases
def test_fused_reference_and_torch_nn_agree_with_gradients(kind, bias):
    fused = make_cell(kind, bias=bias, backend="fused")
    reference = make_cell(kind, bias=bias, backend="reference")
    assert fused.uses_fused and not reference.uses_fused
    layer = torch_layer(kind, fused)
    x = torch.randn(B, T, I)
    state0 = random_state(kind)

    runs = {
        "fused": _run_and_grad(fused, kind, x, state0, is_torch=False),
        "reference": _run_and_grad(reference, kind, x, state0, is_torch=False),
    }
    expected = _run_and_grad(layer, kind, x, state0, is_torch=True)
    exp_out, exp_final, exp_gx, exp_gstate, exp_gparams = expected
    assert set(exp_gparams) == ({"weight_ih", "weight_hh"} | ({"bias_ih", "bias_hh"} if bias else set()))
    for path, (out, final, gx, gstate, gparams) in runs.items():
        _assert_close(out, exp_out, f"{path} outputs")
        for i, (f, e) in enumerate(zip(final, exp_final)):
            _assert_close(f, e, f"{path} final state[{i}]")
        _assert_close(gx, exp_gx, f"{path} grad input")
        for i, (g, e) in enumerate(zip(gstate, exp_gstate)):
            _assert_close(g, e, f"{path} grad initial state[{i}]")
        assert set(gparams) == set(exp_gparams)
        for name in exp_gparams:
            _assert_close(gparams[name], exp_gparams[name], f"{path} grad {name}")


@kinds
def test_zero_initial_state_matches_torch_nn(kind):
    cell = make_cell(kind)
    layer = torch_layer(kind, cell)
    x = torch.randn(B, T, I)
    out, state = cell(x)
    exp_out, exp_state = layer(x)
    _assert_close(out, exp_out, "outputs")
    for s, e in zip(as_list(kind, state), as_list(kind, exp_state)):
        _assert_close(s, e.squeeze(0), "final state")


# ------------------------------------------------------------------------ step == forward


@kinds
@backends
@biases
def test_step_by_step_equals_forward(kind, backend, bias):
    cell = make_cell(kind, bias=bias, backend=backend)
    x = torch.randn(B, T, I)
    state0 = public(kind, [s.detach() for s in random_state(kind)])
    with torch.no_grad():
        out, final = cell(x, state0)
        state, steps = state0, []
        for t in range(T):
            h_t, state = cell.step(x[:, t], state)
            steps.append(h_t)
    _assert_close(torch.stack(steps, dim=1), out, "stepped outputs")
    for s, e in zip(as_list(kind, state), as_list(kind, final)):
        _assert_close(s, e, "stepped final state")


@kinds
def test_step_from_no_state_starts_at_zero(kind):
    cell = make_cell(kind)
    x_t = torch.randn(B, I)
    h_none, _ = cell.step(x_t)
    h_zero, _ = cell.step(x_t, cell.initial_state(B, x_t))
    _assert_close(h_none, h_zero, "step from None vs zeros")


# ----------------------------------------------------------------------------- gate traces


@biases
def test_lstm_gate_traces_satisfy_the_equations(bias):
    cell = make_cell("lstm", bias=bias)
    x = torch.randn(B, T, I)
    h0, c0 = (s.detach() for s in random_state("lstm"))
    with torch.no_grad():
        out, (h, c), gates = cell(x, (h0, c0), return_gates=True)
        plain_out, _ = cell(x, (h0, c0))
    assert set(gates) == {"input", "forget", "output", "candidate", "cell"}
    assert all(g.shape == (B, T, H) for g in gates.values())
    i, f, o, g, cs = (gates[n] for n in ("input", "forget", "output", "candidate", "cell"))
    c_prev = torch.cat([c0.unsqueeze(1), cs[:, :-1]], dim=1)
    _assert_close(cs, f * c_prev + i * g, "c_t = f*c_(t-1) + i*g")
    _assert_close(out, o * torch.tanh(cs), "h_t = o*tanh(c_t)")
    _assert_close(cs[:, -1], c, "last traced c is the final c")
    _assert_close(out[:, -1], h, "last output is the final h")
    _assert_close(out, plain_out, "traced (reference) outputs vs fused outputs")
    for name in ("input", "forget", "output"):
        assert ((gates[name] > 0) & (gates[name] < 1)).all(), f"{name} gate outside (0, 1)"


@biases
def test_gru_gate_traces_satisfy_the_equations(bias):
    cell = make_cell("gru", bias=bias)
    x = torch.randn(B, T, I)
    h0 = random_state("gru")[0].detach()
    with torch.no_grad():
        out, h, gates = cell(x, h0, return_gates=True)
        plain_out, _ = cell(x, h0)
    assert set(gates) == {"reset", "update", "candidate"}
    z, n = gates["update"], gates["candidate"]
    h_prev = torch.cat([h0.unsqueeze(1), out[:, :-1]], dim=1)
    _assert_close(out, (1 - z) * n + z * h_prev, "h_t = (1-z)*n + z*h_(t-1)")
    _assert_close(out[:, -1], h, "last output is the final h")
    _assert_close(out, plain_out, "traced (reference) outputs vs fused outputs")


@pytest.mark.parametrize("kind", ["rnn_tanh", "rnn_relu"])
def test_rnn_preactivation_trace(kind):
    cell = make_cell(kind)
    x = torch.randn(B, T, I)
    with torch.no_grad():
        out, _, gates = cell(x, return_gates=True)
    phi = torch.tanh if kind == "rnn_tanh" else torch.relu
    _assert_close(out, phi(gates["preactivation"]), "h_t = phi(preactivation)")


# -------------------------------------------------------------- peephole and layer norm LSTM

OPTIONS = pytest.mark.parametrize(
    "options",
    [{"peephole": True}, {"layer_norm": True}, {"peephole": True, "layer_norm": True}],
    ids=["peephole", "layer_norm", "peephole+layer_norm"],
)


def make_option_lstm(options, *, bias=True, dtype=torch.float32, size=(I, H)):
    torch.manual_seed(2)
    cell = rnnkit.LSTM(*size, bias=bias, **options).to(dtype)
    # Give the layer norms non-trivial affine parameters, so they are really tested.
    with torch.no_grad():
        for name, p in cell.named_parameters():
            if name.startswith("ln_"):
                p.copy_(torch.empty_like(p).uniform_(0.5, 1.5) if name.endswith("weight")
                        else torch.empty_like(p).uniform_(-0.3, 0.3))
    return cell


def lstm_by_the_docstring(cell, x, h, c):
    """The LSTM equations of the docstring, one step at a time, written out independently."""
    Hs = cell.hidden_size
    W_i = {k: cell.weight_ih[j * Hs:(j + 1) * Hs] for j, k in enumerate("ifgo")}
    W_h = {k: cell.weight_hh[j * Hs:(j + 1) * Hs] for j, k in enumerate("ifgo")}
    if cell.bias:
        b = {k: cell.bias_ih[j * Hs:(j + 1) * Hs] + cell.bias_hh[j * Hs:(j + 1) * Hs]
             for j, k in enumerate("ifgo")}
    else:
        b = {k: 0.0 for k in "ifgo"}

    def ln(v, norm):
        return F.layer_norm(v, norm.normalized_shape, norm.weight, norm.bias, norm.eps)

    outputs = []
    for t in range(x.size(1)):
        x_t = x[:, t]
        if cell.layer_norm:
            # the input and recurrent halves are normalised separately over all 4H pre-activations
            zx = ln(x_t @ cell.weight_ih.T, cell.ln_ih)
            zh = ln(h @ cell.weight_hh.T, cell.ln_hh)
            pre = {k: zx[:, j * Hs:(j + 1) * Hs] + zh[:, j * Hs:(j + 1) * Hs] + b[k]
                   for j, k in enumerate("ifgo")}
        else:
            pre = {k: x_t @ W_i[k].T + h @ W_h[k].T + b[k] for k in "ifgo"}
        p_i = p_f = p_o = 0.0
        if cell.peephole:
            p_i, p_f, p_o = cell.weight_peephole
        i = torch.sigmoid(pre["i"] + p_i * c)
        f = torch.sigmoid(pre["f"] + p_f * c)
        g = torch.tanh(pre["g"])
        c = f * c + i * g
        o = torch.sigmoid(pre["o"] + p_o * c)
        h = o * torch.tanh(ln(c, cell.ln_cell) if cell.layer_norm else c)
        outputs.append(h)
    return torch.stack(outputs, dim=1), (h, c)


@OPTIONS
@biases
def test_option_lstm_matches_docstring_equations(options, bias):
    cell = make_option_lstm(options, bias=bias)
    assert cell.uses_fused  # rnnkit's own fused recurrence (cells/scan.py) against the docstring
    x = torch.randn(B, T, I)
    h0, c0 = (s.detach() for s in random_state("lstm"))
    with torch.no_grad():
        out, (h, c) = cell(x, (h0, c0))
        exp_out, (exp_h, exp_c) = lstm_by_the_docstring(cell, x, h0, c0)
    _assert_close(out, exp_out, "outputs")
    _assert_close(h, exp_h, "final h")
    _assert_close(c, exp_c, "final c")


@OPTIONS
def test_option_lstm_step_equals_forward(options):
    cell = make_option_lstm(options)
    x = torch.randn(B, T, I)
    state0 = tuple(s.detach() for s in random_state("lstm"))
    with torch.no_grad():
        out, (h, c) = cell(x, state0)
        state, steps = state0, []
        for t in range(T):
            h_t, state = cell.step(x[:, t], state)
            steps.append(h_t)
    _assert_close(torch.stack(steps, dim=1), out, "stepped outputs")
    _assert_close(state[0], h, "stepped h")
    _assert_close(state[1], c, "stepped c")


@OPTIONS
def test_option_lstm_gradcheck_float64(options):
    cell = make_option_lstm(options, dtype=torch.float64, size=(3, 2))
    names = [n for n, _ in cell.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for _, p in cell.named_parameters()]
    x = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    h0, c0 = (torch.randn(2, 2, dtype=torch.float64, requires_grad=True) for _ in range(2))

    def run(x, h0, c0, *ps):
        out, (h, c) = functional_call(cell, dict(zip(names, ps)), (x, (h0, c0)))
        return out, h, c

    assert torch.autograd.gradcheck(run, (x, h0, c0, *params), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("option", ["peephole", "layer_norm"])
def test_fused_backend_runs_options_torch_nn_lacks(option):
    cell = rnnkit.LSTM(I, H, backend="fused", **{option: True})
    assert cell.uses_fused
    assert option.replace("_", " ") in cell.torch_nn_unavailable_reason()
    assert rnnkit.LSTM(I, H, backend="reference", **{option: True}).uses_fused is False


# ------------------------------------------------------------------------ initialisation


def test_forget_gate_bias_starts_at_one():
    cell = rnnkit.LSTM(I, H)
    total = (cell.bias_ih + cell.bias_hh).detach()
    forget = total[H:2 * H]
    assert torch.equal(forget, torch.ones(H))
    assert not torch.allclose(total[:H], torch.ones(H))  # only the forget block
    custom = rnnkit.LSTM(I, H, forget_bias=2.5)
    assert torch.equal((custom.bias_ih + custom.bias_hh).detach()[H:2 * H], torch.full((H,), 2.5))


# -------------------------------------------------------------------------- variable lengths


@kinds
@backends
def test_padded_batch_equals_each_sequence_alone(kind, backend):
    cell = make_cell(kind, backend=backend)
    lengths = torch.tensor([T, 2, 1, 4])
    n = len(lengths)
    x = torch.randn(n, T, I) * 3  # garbage in the padding must not leak anywhere
    state0 = [s.detach() for s in random_state(kind, batch=n)]
    with torch.no_grad():
        out, final = cell(x, public(kind, state0), lengths=lengths)
        final = as_list(kind, final)
        for b, length in enumerate(lengths.tolist()):
            alone_out, alone_final = cell(x[b:b + 1, :length], public(kind, [s[b:b + 1] for s in state0]))
            _assert_close(out[b, :length], alone_out[0], f"sequence {b} valid outputs")
            for s, e in zip(final, as_list(kind, alone_final)):
                _assert_close(s[b], e[0], f"sequence {b} final state")
            assert torch.count_nonzero(out[b, length:]) == 0, f"sequence {b}: padding outputs not zero"


def test_padded_batch_fused_and_reference_gradients_agree():
    fused = make_cell("lstm", backend="fused")
    reference = make_cell("lstm", backend="reference")
    lengths = torch.tensor([T, 3, 1])
    x0 = torch.randn(3, T, I)
    grads = []
    for cell in (fused, reference):
        x = x0.clone().requires_grad_(True)
        out, (h, c) = cell(x, lengths=lengths)
        (out.square().sum() + h.sum() + c.sum()).backward()
        grads.append([x.grad] + [p.grad for p in cell.parameters()])
        assert torch.count_nonzero(x.grad[2, 1:]) == 0, "padding receives gradient"
    for a, b in zip(*grads):
        _assert_close(a, b, "padded-batch gradient")


# -------------------------------------------------------------------- torch.nn compatibility


@kinds
@biases
def test_state_dict_loads_into_torch_cell_unchanged(kind, bias):
    cell = make_cell(kind, bias=bias)
    kwargs = {"nonlinearity": KINDS[kind][1]["nonlinearity"]} if kind.startswith("rnn") else {}
    torch_cell = TORCH_CELL[kind](I, H, bias=bias, **kwargs)
    torch_cell.load_state_dict(cell.state_dict())  # strict: same names, same shapes
    x_t = torch.randn(B, I)
    state = public(kind, [s.detach() for s in random_state(kind)])
    with torch.no_grad():
        h, _ = cell.step(x_t, state)
        expected = torch_cell(x_t, state)
    _assert_close(h, expected[0] if kind == "lstm" else expected, "one step vs torch.nn cell")


# ---------------------------------------------------------------------------------- errors


@pytest.fixture
def lstm():
    return rnnkit.LSTM(I, H)


def test_wrong_feature_size_names_expected_and_got(lstm):
    with pytest.raises(RnnkitError, match=rf"expected {I} input features, got {I + 1}"):
        lstm(torch.randn(B, T, I + 1))


def test_two_dimensional_input(lstm):
    with pytest.raises(RnnkitError, match=r"\(batch, time, 4\).*2-D"):
        lstm(torch.randn(T, I))


def test_empty_batch(lstm):
    with pytest.raises(RnnkitError, match="empty input"):
        lstm(torch.randn(0, T, I))


def test_nan_input(lstm):
    x = torch.randn(B, T, I)
    x[1, 2, 3] = float("nan")
    with pytest.raises(RnnkitError, match="NaN"):
        lstm(x)


def test_wrong_state_shape(lstm):
    bad = (torch.zeros(B, H + 1), torch.zeros(B, H + 1))
    with pytest.raises(RnnkitError, match=rf"state.*\({B}, {H}\).*\({B}, {H + 1}\)"):
        lstm(torch.randn(B, T, I), bad)
    with pytest.raises(RnnkitError, match="state"):
        lstm(torch.randn(B, T, I), torch.zeros(B, H))  # h without c
    with pytest.raises(RnnkitError, match="state"):
        rnnkit.GRU(I, H)(torch.randn(B, T, I), torch.zeros(B + 1, H))


@pytest.mark.parametrize("lengths", [[0, 1, 2], [1, 2, T + 1]], ids=["zero", "too_long"])
def test_lengths_out_of_range(lstm, lengths):
    with pytest.raises(RnnkitError, match=rf"between 1 and .*{T}"):
        lstm(torch.randn(B, T, I), lengths=torch.tensor(lengths))


def test_lengths_wrong_shape(lstm):
    with pytest.raises(RnnkitError, match="lengths"):
        lstm(torch.randn(B, T, I), lengths=torch.tensor([1, 2]))


def test_invalid_backend():
    with pytest.raises(RnnkitError, match="backend.*'cudnn'"):
        rnnkit.GRU(I, H, backend="cudnn")


def test_invalid_nonlinearity():
    with pytest.raises(RnnkitError, match="nonlinearity.*'sigmoid'"):
        rnnkit.RNN(I, H, nonlinearity="sigmoid")


def test_step_wrong_shape(lstm):
    with pytest.raises(RnnkitError, match=rf"\(batch, {I}\)"):
        lstm.step(torch.randn(B, T, I))


def test_errors_are_value_errors():
    assert issubclass(RnnkitError, ValueError)

"""The recurrent stack (``rnnkit.layers.Recurrent``) against ``torch.nn`` and against itself.

Every cell family, both paths (``auto`` = fused kernels where possible, ``reference`` =
spelled-out equations), one or two layers, one or two directions: outputs, final state
and every gradient must equal those of the ``torch.nn`` module ``to_torch()`` builds from
the same weights, with and without variable lengths. Then the stack's own contract:
padding never leaks (in either direction), ``mask`` is ``lengths`` by another name, state
carries a stream across calls and through ``step``, dropout sits between layers in
training only, and ``torch.nn`` state dicts load unchanged.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rnnkit.cells import CELLS
from rnnkit.errors import RnnkitError
from rnnkit.layers import Recurrent

ATOL = 1e-5  # float32, small shapes: paths differ by rounding only
B, T, I, H = 4, 7, 5, 6
LENGTHS = [7, 3, 5, 1]  # unsorted, includes the full length and a single step

cells = pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
backends = pytest.mark.parametrize("backend", ["auto", "reference"])
stacks = pytest.mark.parametrize(
    "num_layers,bidirectional", [(1, False), (1, True), (2, False), (2, True)], ids=["L1", "L1bi", "L2", "L2bi"]
)


def make(cell="lstm", *, backend="auto", num_layers=1, bidirectional=False, seed=1, **options) -> Recurrent:
    torch.manual_seed(seed)
    return Recurrent(I, H, cell=cell, num_layers=num_layers, bidirectional=bidirectional, backend=backend, **options)


def as_list(state):
    """A layer state as a list of tensors: ``[h]`` or ``[h, c]``."""
    return [state] if isinstance(state, torch.Tensor) else list(state)


def public(states):
    return states[0] if len(states) == 1 else tuple(states)


def random_state(layer: Recurrent, batch: int = B, requires_grad=False):
    n = layer.num_layers * layer.num_directions
    return [torch.randn(n, batch, H, requires_grad=requires_grad) for _ in range(layer.num_states)]


def assert_close(a, b, what):
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    diff = (a - b).abs().max().item()
    assert diff <= ATOL, f"{what}: max abs diff {diff:.3g} > {ATOL}"


def native_name(layer: Recurrent, index: int, param: str) -> str:
    l, d = divmod(index, layer.num_directions)
    return f"{param}_l{l}" + ("_reverse" if d else "")


# ---------------------------------------------------------------------- equals torch.nn


def _run(module, x0, state0, lengths, is_torch):
    """Outputs, final state, and gradients w.r.t. input and initial state."""
    x = x0.detach().clone().requires_grad_(True)
    states = [s.detach().clone().requires_grad_(True) for s in state0]
    if is_torch:
        inputs = x if lengths is None else pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, final = module(inputs, public(states))
        if lengths is not None:
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
    else:
        out, final = module(x, public(states), lengths=lengths)
    final = as_list(final)
    g = torch.Generator().manual_seed(123)  # fixed random weights on every output
    loss = (out * torch.randn(out.shape, generator=g)).sum()
    for f in final:
        loss = loss + (f * torch.randn(f.shape, generator=g)).sum()
    module.zero_grad()
    loss.backward()
    return out.detach(), [f.detach() for f in final], x.grad, [s.grad for s in states]


@cells
@backends
@stacks
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "padded"])
def test_matches_torch_nn_with_gradients(cell, backend, num_layers, bidirectional, with_lengths):
    layer = make(cell, backend=backend, num_layers=num_layers, bidirectional=bidirectional)
    module = layer.to_torch()
    assert type(module) is {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell]
    assert (module.num_layers, module.bidirectional, module.batch_first) == (num_layers, bidirectional, True)
    lengths = torch.tensor(LENGTHS) if with_lengths else None
    x = torch.randn(B, T, I)
    state0 = random_state(layer)

    out, final, gx, gstate = _run(layer, x, state0, lengths, is_torch=False)
    e_out, e_final, e_gx, e_gstate = _run(module, x, state0, lengths, is_torch=True)

    assert out.shape == (B, T, layer.num_directions * H)
    assert_close(out, e_out, "outputs")
    assert len(final) == len(e_final) == layer.num_states
    for k, (f, e) in enumerate(zip(final, e_final)):
        assert_close(f, e, f"final state[{k}]")
    assert_close(gx, e_gx, "grad input")
    for k, (g, e) in enumerate(zip(gstate, e_gstate)):
        assert_close(g, e, f"grad initial state[{k}]")
    torch_params = dict(module.named_parameters())
    seen = set()
    for index, c in enumerate(layer.cells):
        for pname, p in c.named_parameters():
            name = native_name(layer, index, pname)
            seen.add(name)
            assert p.grad is not None, f"no gradient for {name}"
            assert_close(p.grad, torch_params[name].grad, f"grad {name}")
    assert seen == set(torch_params), "every torch.nn parameter has an rnnkit counterpart"


def test_to_torch_copies_weights_not_shares():
    layer = make("lstm", num_layers=2, bidirectional=True)
    module = layer.to_torch()
    with torch.no_grad():
        module.weight_ih_l0.zero_()
    assert layer.cells[0].weight_ih.abs().sum() > 0


def test_to_torch_refuses_options_torch_nn_lacks():
    with pytest.raises(RnnkitError, match="cannot convert to torch.nn"):
        make("lstm", peephole=True).to_torch()


# -------------------------------------------------------------------------- padding


@cells
@backends
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_padded_batch_equals_each_sequence_alone(cell, backend, bidirectional):
    layer = make(cell, backend=backend, num_layers=2, bidirectional=bidirectional)
    lengths = torch.tensor(LENGTHS)
    x = torch.randn(B, T, I) * 3  # large garbage in the padding must not leak anywhere
    state0 = random_state(layer)
    with torch.no_grad():
        out, final = layer(x, public(state0), lengths=lengths)
        final = as_list(final)
        for b, length in enumerate(LENGTHS):
            alone_out, alone_final = layer(x[b:b + 1, :length], public([s[:, b:b + 1] for s in state0]))
            assert_close(out[b, :length], alone_out[0], f"sequence {b} valid outputs")
            if bidirectional:  # the reverse half explicitly: it must start at the sequence's own last step
                assert_close(out[b, :length, H:], alone_out[0, :, H:], f"sequence {b} reverse outputs")
            for k, (s, e) in enumerate(zip(final, as_list(alone_final))):
                assert_close(s[:, b], e[:, 0], f"sequence {b} final state[{k}]")
            assert torch.count_nonzero(out[b, length:]) == 0, f"sequence {b}: padding outputs not zero"


@cells
@backends
def test_padding_values_do_not_matter(cell, backend):
    layer = make(cell, backend=backend, num_layers=2, bidirectional=True)
    lengths = torch.tensor(LENGTHS)
    x = torch.randn(B, T, I)
    x2 = x.clone()
    for b, length in enumerate(LENGTHS):
        x2[b, length:] = torch.randn(T - length, I) * 10
    assert not torch.equal(x, x2)
    with torch.no_grad():
        out1, s1 = layer(x, lengths=lengths)
        out2, s2 = layer(x2, lengths=lengths)
    assert torch.equal(out1, out2)
    for a, b in zip(as_list(s1), as_list(s2)):
        assert torch.equal(a, b)


@backends
def test_padding_gets_no_gradient(backend):
    layer = make("lstm", backend=backend, num_layers=2, bidirectional=True)
    lengths = torch.tensor(LENGTHS)
    x = torch.randn(B, T, I, requires_grad=True)
    out, (h, c) = layer(x, lengths=lengths)
    (out.square().sum() + h.sum() + c.sum()).backward()
    for b, length in enumerate(LENGTHS):
        assert torch.count_nonzero(x.grad[b, length:]) == 0, f"padding of sequence {b} receives gradient"
        assert torch.count_nonzero(x.grad[b, :length]) > 0


@backends
def test_mask_equals_lengths(backend):
    layer = make("gru", backend=backend, num_layers=2, bidirectional=True)
    lengths = torch.tensor(LENGTHS)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    x = torch.randn(B, T, I)
    with torch.no_grad():
        out_l, state_l = layer(x, lengths=lengths)
        out_m, state_m = layer(x, mask=mask)
        out_i, state_i = layer(x, mask=mask.int())  # 0/1 masks are accepted too
    assert torch.equal(out_l, out_m) and torch.equal(state_l, state_m)
    assert torch.equal(out_l, out_i) and torch.equal(state_l, state_i)
    # and it really is masking: without it the outputs differ
    assert not torch.equal(out_l, layer(x)[0])


def test_lengths_as_a_list_equal_lengths_as_a_tensor():
    layer = make("lstm", num_layers=2, bidirectional=True)
    x = torch.randn(B, T, I)
    with torch.no_grad():
        a, (ha, _) = layer(x, lengths=LENGTHS)
        b, (hb, _) = layer(x, lengths=torch.tensor(LENGTHS))
    assert torch.equal(a, b) and torch.equal(ha, hb)


def test_non_prefix_mask_raises():
    layer = make("lstm")
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 2] = False  # a hole inside sequence 1
    with pytest.raises(RnnkitError, match="prefix"):
        layer(torch.randn(B, T, I), mask=mask)
    left_padded = torch.ones(B, T, dtype=torch.bool)
    left_padded[0, :3] = False
    with pytest.raises(RnnkitError, match="prefix"):
        layer(torch.randn(B, T, I), mask=left_padded)


def test_mask_errors():
    layer = make("lstm")
    x = torch.randn(B, T, I)
    with pytest.raises(RnnkitError, match="not both"):
        layer(x, lengths=torch.tensor(LENGTHS), mask=torch.ones(B, T, dtype=torch.bool))
    with pytest.raises(RnnkitError, match=re.escape(f"({B}, {T})")):
        layer(x, mask=torch.ones(B, T + 1, dtype=torch.bool))
    empty = torch.ones(B, T, dtype=torch.bool)
    empty[2] = False  # a sequence with no valid step
    with pytest.raises(RnnkitError):
        layer(x, mask=empty)


def test_lengths_out_of_range_raise():
    layer = make("lstm")
    x = torch.randn(B, T, I)
    for bad in ([0, 1, 2, 3], [1, 2, 3, T + 1]):
        with pytest.raises(RnnkitError, match="between 1 and"):
            layer(x, lengths=torch.tensor(bad))


# ----------------------------------------------------------------- shapes and state


@cells
def test_shapes_stacked_bidirectional(cell):
    layer = Recurrent(I, H, cell=cell, num_layers=3, bidirectional=True)
    assert layer.output_size == 2 * H
    out, state = layer(torch.randn(B, T, I))
    assert out.shape == (B, T, 2 * H)
    states = as_list(state)
    assert len(states) == (2 if cell == "lstm" else 1)
    assert isinstance(state, tuple) == (cell == "lstm")
    for s in states:
        assert s.shape == (3 * 2, B, H)
    zero = as_list(layer.initial_state(B, out))
    assert [s.shape for s in zero] == [s.shape for s in states] and all(torch.count_nonzero(z) == 0 for z in zero)


def test_final_state_layout_is_torch_nn_order():
    """Index ``l*D + d``: the forward final is the last output, the reverse final the first."""
    layer = make("gru", num_layers=2, bidirectional=True)
    x = torch.randn(B, T, I)
    with torch.no_grad():
        out, h = layer(x)
    assert_close(h[2], out[:, -1, :H], "layer 1 forward final == last forward output")
    assert_close(h[3], out[:, 0, H:], "layer 1 reverse final == first reverse output")


@cells
@backends
def test_carried_state_continues_the_sequence(cell, backend):
    layer = make(cell, backend=backend, num_layers=2)
    x = torch.randn(B, 12, I)
    state0 = public(random_state(layer))
    with torch.no_grad():
        whole_out, whole_state = layer(x, state0)
        first_out, mid_state = layer(x[:, :5], state0)
        second_out, end_state = layer(x[:, 5:], mid_state)
    assert_close(torch.cat([first_out, second_out], dim=1), whole_out, "outputs in two pieces")
    for k, (a, b) in enumerate(zip(as_list(end_state), as_list(whole_state))):
        assert_close(a, b, f"final state[{k}]")
    # and the carried state matters: restarting from zeros gives something else
    restart_out, _ = layer(x[:, 5:])
    assert (restart_out - whole_out[:, 5:]).abs().max() > 1e-3


@cells
@backends
def test_step_equals_forward_for_a_two_layer_stack(cell, backend):
    layer = make(cell, backend=backend, num_layers=2)
    x = torch.randn(B, T, I)
    state0 = public(random_state(layer))
    with torch.no_grad():
        out, final = layer(x, state0)
        state, steps = state0, []
        for t in range(T):
            h_t, state = layer.step(x[:, t], state)
            assert h_t.shape == (B, H)
            steps.append(h_t)
    assert_close(torch.stack(steps, dim=1), out, "stepped outputs")
    for k, (a, b) in enumerate(zip(as_list(state), as_list(final))):
        assert_close(a, b, f"stepped final state[{k}]")


def test_step_from_no_state_equals_zero_state():
    layer = make("lstm", num_layers=2)
    x_t = torch.randn(B, I)
    with torch.no_grad():
        a, (ha, ca) = layer.step(x_t)
        b, (hb, cb) = layer.step(x_t, layer.initial_state(B, x_t))
    assert torch.equal(a, b) and torch.equal(ha, hb) and torch.equal(ca, cb)


def test_step_on_bidirectional_raises():
    layer = make("lstm", num_layers=2, bidirectional=True)
    with pytest.raises(RnnkitError, match="bidirectional"):
        layer.step(torch.randn(B, I))


def test_step_wrong_input_shape_raises():
    layer = make("gru", num_layers=2)
    with pytest.raises(RnnkitError, match=re.escape(f"(batch, {I})")):
        layer.step(torch.randn(B, 1, I))
    with pytest.raises(RnnkitError):
        layer.step(torch.randn(B, I + 1))


@cells
def test_wrong_state_shape_names_expected_shape(cell):
    layer = make(cell, num_layers=2, bidirectional=True)
    expected = re.escape(str((4, B, H)))
    x = torch.randn(B, T, I)
    bad = torch.randn(2, B, H)  # forgot the directions
    with pytest.raises(RnnkitError, match=expected):
        layer(x, (bad, bad) if cell == "lstm" else bad)
    wrong_batch = torch.randn(4, B + 1, H)
    with pytest.raises(RnnkitError, match=expected):
        layer(x, (wrong_batch, wrong_batch) if cell == "lstm" else wrong_batch)
    good = torch.randn(4, B, H)
    with pytest.raises(RnnkitError, match=expected):  # LSTM given only h / GRU given a pair
        layer(x, good if cell == "lstm" else (good, good))


def test_wrong_state_shape_in_step_names_expected_shape():
    layer = make("lstm", num_layers=2)
    bad = torch.randn(1, B, H)
    with pytest.raises(RnnkitError, match=re.escape(str((2, B, H)))):
        layer.step(torch.randn(B, I), (bad, bad))


# --------------------------------------------------------------------------- dropout


@backends
def test_dropout_between_layers_in_train_only(backend):
    torch.manual_seed(1)
    dropped = Recurrent(I, H, cell="lstm", num_layers=2, dropout=0.5, backend=backend)
    plain = Recurrent(I, H, cell="lstm", num_layers=2, dropout=0.0, backend=backend)
    plain.load_state_dict(dropped.state_dict())
    x = torch.randn(B, T, I)
    with torch.no_grad():
        expected, _ = plain(x)
        dropped.train()
        a, _ = dropped(x)
        b, _ = dropped(x)
        assert not torch.allclose(a, b), "train mode: two passes should drop different units"
        assert (a - expected).abs().max() > 1e-3, "train mode: dropout has no effect"
        dropped.eval()
        c, _ = dropped(x)
        d, _ = dropped(x)
    assert torch.equal(c, d)
    assert_close(c, expected, "eval mode equals no dropout")


def test_dropout_only_between_layers_not_after_last():
    """With one layer there is no 'between': training output equals eval output."""
    torch.manual_seed(1)
    layer = Recurrent(I, H, cell="gru", num_layers=1, dropout=0.9)
    x = torch.randn(B, T, I)
    with torch.no_grad():
        layer.train()
        a, ha = layer(x)
        layer.eval()
        b, hb = layer(x)
    assert_close(a, b, "single layer train vs eval")
    assert_close(ha, hb, "single layer state train vs eval")


def test_dropout_first_layer_untouched():
    """Dropout acts on layer 0's outputs as layer 1 reads them; layer 0's own final state is untouched."""
    torch.manual_seed(1)
    layer = Recurrent(I, H, cell="rnn", num_layers=2, dropout=0.5)
    x = torch.randn(B, T, I)
    with torch.no_grad():
        layer.train()
        _, h_train = layer(x)
        layer.eval()
        _, h_eval = layer(x)
    assert_close(h_train[0], h_eval[0], "layer 0 final state")
    assert (h_train[1] - h_eval[1]).abs().max() > 1e-3


# ------------------------------------------------------------------ native state dicts


@cells
@stacks
def test_load_native_state_dict_round_trip(cell, num_layers, bidirectional):
    torch.manual_seed(3)
    module = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell](
        I, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=True
    )
    layer = make(cell, num_layers=num_layers, bidirectional=bidirectional, seed=99)
    native = module.state_dict()
    assert set(layer.native_state_dict()) == set(native), "same names as torch.nn"
    layer.load_native_state_dict(native)
    for name, tensor in layer.native_state_dict().items():
        assert torch.equal(tensor, native[name]), name
    x = torch.randn(B, T, I)
    with torch.no_grad():
        out, state = layer(x)
        e_out, e_state = module(x)
    assert_close(out, e_out, "outputs after loading torch.nn weights")
    for a, b in zip(as_list(state), as_list(e_state)):
        assert_close(a, b, "state after loading torch.nn weights")
    # and back: to_torch() of the loaded layer has exactly the original weights
    back = layer.to_torch().state_dict()
    assert set(back) == set(native)
    assert all(torch.equal(back[k], native[k]) for k in native)


def test_load_native_state_dict_missing_key_raises():
    layer = make("lstm", num_layers=2)
    native = layer.native_state_dict()
    del native["weight_hh_l1"]
    with pytest.raises(KeyError):
        layer.load_native_state_dict(native)


def test_rnn_relu_and_no_bias_convert():
    layer = make("rnn", num_layers=2, bidirectional=True, nonlinearity="relu", bias=False)
    module = layer.to_torch()
    assert module.nonlinearity == "relu" and module.bias is False
    x = torch.randn(B, T, I)
    with torch.no_grad():
        assert_close(layer(x)[0], module(x)[0], "relu, no bias")


# ---------------------------------------------------------------------- gate traces


@cells
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_return_gates_keys_and_shapes(cell, bidirectional):
    layer = make(cell, num_layers=2, bidirectional=bidirectional)
    x = torch.randn(B, T, I)
    with torch.no_grad():
        out, state, gates = layer(x, return_gates=True)
        plain_out, plain_state = layer(x)
    expected = ["l0", "l0_reverse", "l1", "l1_reverse"] if bidirectional else ["l0", "l1"]
    assert sorted(gates) == expected
    for key, traces in gates.items():
        assert set(traces) == set(CELLS[cell].gate_names), key
        for name, trace in traces.items():
            assert trace.shape == (B, T, H), f"{key}.{name}"
    assert_close(out, plain_out, "outputs with and without gate traces")
    for a, b in zip(as_list(state), as_list(plain_state)):
        assert_close(a, b, "state with and without gate traces")


def test_reverse_gate_traces_are_aligned_with_input_time():
    """For an RNN, h_t = tanh(preactivation_t) in each direction, at the input's time index."""
    layer = make("rnn", num_layers=2, bidirectional=True)
    lengths = torch.tensor(LENGTHS)
    x = torch.randn(B, T, I)
    with torch.no_grad():
        out, _, gates = layer(x, lengths=lengths, return_gates=True)
    valid = (torch.arange(T)[None, :] < lengths[:, None])[:, :, None]
    last = out  # layer 1's outputs
    assert_close(torch.tanh(gates["l1"]["preactivation"]) * valid, last[..., :H], "forward traces")
    assert_close(torch.tanh(gates["l1_reverse"]["preactivation"]) * valid, last[..., H:], "reverse traces")
    for key, traces in gates.items():
        trace = traces["preactivation"]
        assert torch.count_nonzero(trace * ~valid) == 0, f"{key}: traces on padding"


# --------------------------------------------------------------------- construction


def test_unknown_cell_raises():
    with pytest.raises(RnnkitError, match="unknown cell 'transformer'"):
        Recurrent(I, H, cell="transformer")


@pytest.mark.parametrize("kwargs", [{"num_layers": 0}, {"num_layers": 1.5}, {"dropout": 1.0}, {"dropout": -0.1}])
def test_bad_construction_arguments_raise(kwargs):
    with pytest.raises(RnnkitError):
        Recurrent(I, H, cell="lstm", **kwargs)


def test_layer_input_sizes_follow_torch_nn():
    layer = Recurrent(I, H, cell="lstm", num_layers=3, bidirectional=True)
    assert len(layer.cells) == 6
    assert [c.input_size for c in layer.cells] == [I, I, 2 * H, 2 * H, 2 * H, 2 * H]


def test_wrong_input_raises():
    layer = make("lstm", num_layers=2)
    with pytest.raises(RnnkitError, match=f"expected {I} input features"):
        layer(torch.randn(B, T, I + 1))
    with pytest.raises(RnnkitError):
        layer(torch.randn(T, I))

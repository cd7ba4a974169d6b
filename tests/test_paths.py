"""The path selector (``cells/paths.py``): which path a step and a forward take, and why; and
``explain`` / ``rnnkit info``, which report it for every recurrent layer of a model.

The selector's answers are checked against what then runs (the compiled stack cached or not,
the autograd node of a forward), so a selector that says one thing while another runs fails."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from rnnkit.cells import GRU, LSTM, MinGRU, kernels, paths
from rnnkit.cli import app
from rnnkit.errors import RnnkitError
from rnnkit.layers import Recurrent, explain, set_backend


@pytest.fixture
def no_kernels(monkeypatch):
    """Every compiled kernel off, as with ``RNNKIT_KERNELS=0``."""
    monkeypatch.setenv("RNNKIT_KERNELS", "0")
    monkeypatch.setattr(kernels, "_loaded", {})
    monkeypatch.setattr(kernels, "_why_off", {})


@pytest.fixture
def fake_stream_kernel(monkeypatch):
    """A stream kernel that 'is built' for a 16-lane CPU with the bfloat16 GEMM: for decisions
    only (nothing may step on it)."""
    fake = types.SimpleNamespace(LANES=16, HAS_BF16_GEMM=True)
    monkeypatch.setattr(kernels, "_loaded", {"stream": fake})
    monkeypatch.setattr(paths, "cpu_multiplies_bf16", lambda: True)
    return fake


def test_reference_backend_is_forced_for_step_and_forward_and_nothing_compiled_runs(fake_stream_kernel):
    layer = Recurrent(4, 8, num_layers=2, backend="reference").eval()
    step, forward = layer.paths()
    assert step.name == forward.name == "reference"
    assert "backend='reference'" in step.reason and "backend='reference'" in forward.reason
    with torch.no_grad():  # the fake kernel would fail if anything reached it
        _, state = layer.step(torch.randn(1, 4))
        layer.step(torch.randn(1, 4), state)
    assert layer.path_cache.stack is None


def test_a_plain_stack_without_gradients_takes_the_compiled_step_by_batch_and_precision(fake_stream_kernel):
    layer = Recurrent(4, 8, num_layers=2).eval()
    assert layer.paths().step.name == "compiled-stack-step"
    assert "batch 1 <= 256" in layer.paths().step.reason
    above = "compiled-mkl-stack-step" if paths.HAS_MKL_PACKED else "compiled-addmm-stack-step"
    assert layer.paths(batch=257).step.name == above
    assert layer.paths(precision="bf16").step.name == "compiled-stack-step-bf16"
    gemm = layer.paths(paths.BF16_GEMM_FROM_BATCH, precision="bf16").step
    assert gemm.name == "compiled-bf16-gemm-step" and "multiplies bfloat16" in gemm.reason
    assert layer.paths().forward.name == "aten-lstm"


def test_gradients_float64_and_options_send_the_step_to_aten_or_the_equations(fake_stream_kernel):
    layer = Recurrent(4, 8, num_layers=2)
    step = layer.paths(training=True).step
    assert step.name == "aten-lstm-cell" and "gradients" in step.reason
    frozen = Recurrent(4, 8).requires_grad_(False)
    assert frozen.paths(training=True).step.name == "compiled-stack-step"  # nothing to differentiate
    step = layer.double().paths().step
    assert step.name == "aten-lstm-cell" and "float32" in step.reason
    step = Recurrent(4, 8, layer_norm=True).paths().step
    assert step.name == "reference" and "layer normalisation" in step.reason
    assert Recurrent(4, 8, bidirectional=True).paths().step.name == "not-steppable"
    assert Recurrent(4, 8, cell="gru").paths().step.name == "aten-gru-cell-colmajor"  # one stream, no gradients
    assert Recurrent(4, 8, cell="gru").paths(batch=2).step.name == "aten-gru-cell"
    assert Recurrent(4, 8, cell="gru").paths(training=True).step.name == "aten-gru-cell"
    assert LSTM(4, 8).paths().step.name == "aten-lstm-cell"  # a lone cell: ATen's cell, never the stack


@pytest.mark.parametrize("env", ["RNNKIT_KERNELS=0", "RNNKIT_BUILD_KERNELS=0"])
def test_without_the_kernel_the_step_is_aten_and_says_why(monkeypatch, tmp_path, env):
    monkeypatch.setattr(kernels, "_loaded", {})
    monkeypatch.setattr(kernels, "_why_off", {})
    monkeypatch.setenv("RNNKIT_CACHE", str(tmp_path))  # nothing built there
    monkeypatch.setenv(*env.split("="))
    step = Recurrent(4, 8, num_layers=2).paths().step
    assert step.name == "aten-lstm-cell-colmajor" and "column-major" in step.reason
    assert ("RNNKIT_KERNELS=0" if env.startswith("RNNKIT_KERNELS") else "not built") in step.reason
    step = Recurrent(4, 8, num_layers=2).paths(batch=2).step
    assert step.name == "aten-lstm-cell"
    assert ("RNNKIT_KERNELS=0" if env.startswith("RNNKIT_KERNELS") else "not built") in step.reason


def test_forward_paths_name_what_then_runs(no_kernels):
    gru = GRU(3, 6)
    chosen = gru.paths(training=True).forward
    assert chosen.name == "gru-scan" and "RNNKIT_KERNELS=0" in chosen.reason
    out, _ = gru(torch.randn(2, 5, 3))
    assert type(out.grad_fn).__name__ == "GRUScanBackward"
    assert gru.paths().forward.name == "aten-gru"  # inference: ATen's kernel
    with torch.no_grad():
        assert gru(torch.randn(2, 5, 3))[0].grad_fn is None
    lengths_path = paths.forward_path(MinGRU(3, 6), lengths=True)
    assert lengths_path.name == "min-scan-blocked" and "variable lengths" in lengths_path.reason
    gates = paths.forward_path(LSTM(3, 6), return_gates=True)
    assert gates.name == "reference" and "gate traces" in gates.reason


def test_the_step_that_runs_is_the_one_chosen(no_kernels):
    """Without the kernel the selector says aten-lstm-cell for two streams: the step must then
    equal ATen's cell per layer and cache no compiled stack; for one stream aten-lstm-cell-colmajor,
    the same cell over column-major weight copies (equal up to the product's rounding), and the
    step remembers the path chosen."""
    layer = Recurrent(3, 5, num_layers=2).eval()
    for batch, name in [(2, "aten-lstm-cell"), (1, "aten-lstm-cell-colmajor")]:
        assert layer.paths(batch=batch).step.name == name
        x = torch.randn(batch, 3)
        with torch.no_grad():
            y, _ = layer.step(x)
            want = x
            for cell in layer.cells:
                zeros = torch.zeros(batch, 5)
                want, _ = torch.lstm_cell(want, (zeros, zeros), cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
        assert torch.equal(y, want) if batch > 1 else torch.allclose(y, want, atol=1e-6, rtol=0)
        assert layer.path_cache.stack is None
    assert (layer.path_cache.colmajor is not None) and layer.path_cache.steps == {}  # no state given: not remembered
    with torch.no_grad():
        layer.step(x, layer.initial_state(1, x))
    assert [path.name for path in layer.path_cache.steps.values()] == ["aten-lstm-cell-colmajor"]


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = Recurrent(3, 8, cell="gru", bidirectional=True)
        self.decoder = Recurrent(16, 8, num_layers=2)
        self.peep = LSTM(8, 4, peephole=True)
        self.head = nn.Linear(4, 2)


def test_explain_lists_every_recurrent_layer_once_with_its_paths(no_kernels):
    found = explain(_Model())
    assert [entry.name for entry in found] == ["encoder", "decoder", "peep"]  # not the cells inside layers
    encoder, decoder, peep = found
    assert "bidirectional" in encoder.layer and encoder.step.name == "not-steppable"
    assert encoder.forward.name == "aten-gru"
    assert decoder.layer == "Recurrent(lstm, 2 layers, 16 -> 8)" and decoder.step.name == "aten-lstm-cell-colmajor"
    assert peep.step.name == "reference" and peep.forward.name == "lstm-scan"
    assert explain(_Model(), training=True)[0].forward.name == "gru-scan"
    assert explain(nn.Linear(2, 2)) == []
    with pytest.raises(RnnkitError, match="precision"):
        explain(_Model(), precision="fp16")


def test_rnnkit_info_prints_the_execution_paths_of_a_bundle(no_kernels, tmp_path: Path):
    from rnnkit import TextGenerator

    lm = TextGenerator(hidden_size=8, num_layers=2, seq_len=4, batch_size=2, epochs=1, minutes=None, progress=False)
    bundle = lm.fit("abc abd abe\n" * 4).save(tmp_path / "lm.rnnkit")
    result = CliRunner().invoke(app, ["info", str(bundle)])
    assert result.exit_code == 0, result.output
    assert "execution paths" in result.stdout
    assert "aten-lstm-cell" in result.stdout and "aten-lstm " in result.stdout
    assert "RNNKIT_KERNELS=0" in result.stdout  # the reason, not only the name


def test_set_backend_forces_the_reference_path_on_a_built_model_and_keeps_its_numbers(no_kernels):
    model = _Model().eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        before, _ = model.decoder(x)
        model.decoder.step(x[:, 0])
    assert set_backend(model, "reference") is model
    assert {e.step.name for e in explain(model)} == {"reference", "not-steppable"}
    assert {e.forward.name for e in explain(model)} == {"reference"}
    with torch.no_grad():
        after, _ = model.decoder(x)
    assert torch.allclose(before, after, atol=1e-6) and model.decoder.path_cache.stack is None
    with pytest.raises(RnnkitError, match="backend must be"):
        set_backend(model, "fast")


@pytest.mark.slow
def test_with_the_built_kernel_the_chosen_compiled_step_is_what_runs(built_kernel, monkeypatch):
    built = built_kernel
    monkeypatch.setattr(kernels, "_loaded", {"stream": built})
    layer = Recurrent(6, 16, num_layers=2).eval()
    assert layer.paths().step.name == "compiled-stack-step"
    with torch.no_grad():
        layer.step(torch.randn(1, 6))
    assert layer.path_cache.stack is not None and layer.path_cache.stack.has_weights(False)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer.paths(precision="bf16").step.name == "compiled-stack-step-bf16"
        layer.step(torch.randn(1, 6))
    assert layer.path_cache.stack.has_weights(True)
    big = layer.paths(batch=paths.BLOCKED_MAX_BATCH[built.LANES] + 1).step
    with torch.no_grad():
        layer.step(torch.randn(paths.BLOCKED_MAX_BATCH[built.LANES] + 1, 6))
    assert big.name.startswith("compiled-") and big.name.endswith("-stack-step") and layer.path_cache.packed

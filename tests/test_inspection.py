"""Inspection: gradient flow through time, gate traces, feature cells, and `rnnkit inspect` / `rnnkit lab`."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import rnnkit
from rnnkit.bundle import register, save_bundle
from rnnkit.cli import app
from rnnkit.errors import DataError, RnnkitError
from rnnkit.inspection import (best_cells, gate_traces, hidden_gradient_norms, parse_series, parse_values,
                               plot_gates, plot_gradient_flow, recurrent_of)
from rnnkit.layers import Recurrent
from rnnkit.tasks.memory import MemoryLab

runner = CliRunner()


def _scalar_rnn(w_ih: float, w_hh: float) -> Recurrent:
    recurrent = Recurrent(1, 1, cell="rnn")
    cell = recurrent.cells[0]
    with torch.no_grad():
        cell.weight_ih.fill_(w_ih), cell.weight_hh.fill_(w_hh), cell.bias_ih.zero_(), cell.bias_hh.zero_()
    return recurrent


@pytest.mark.parametrize("read", ["last", "every"])
def test_gradient_flow_matches_the_hand_computed_chain_rule(read):
    # h_t = tanh(a x_t + w h_{t-1}); dh_{t+1}/dh_t = w (1 - h_{t+1}^2).
    a, w = 0.7, 0.9
    recurrent = _scalar_rnn(a, w)
    x = torch.tensor([0.5, -1.0, 0.3, 0.8, -0.2, 1.0]).view(1, 6, 1)
    h, previous = [], 0.0
    for value in x.flatten().tolist():
        previous = math.tanh(a * value + w * previous)
        h.append(previous)
    direct = [0.0] * 5 + [1.0] if read == "last" else [1.0] * 6  # dL/dh_t through the output at t alone
    expected = [0.0] * 6
    expected[5] = direct[5]
    for t in range(4, -1, -1):
        expected[t] = direct[t] + expected[t + 1] * w * (1 - h[t + 1] ** 2)

    def loss():
        outputs, _ = recurrent(x)
        return outputs[0, -1, 0] if read == "last" else outputs.sum()

    norms = hidden_gradient_norms(recurrent, loss, recurrent=recurrent)
    assert list(norms) == ["l0"]
    assert torch.allclose(norms["l0"], torch.tensor([abs(e) for e in expected]), atol=1e-6)


def test_gradient_flow_leaves_the_model_as_it_was():
    model = rnnkit.topologies.ManyToOne(3, 1, 8, cell="lstm", num_layers=2, bidirectional=True)
    x = torch.randn(4, 12, 3)
    before = model(x).detach()
    model.head.weight.grad = torch.ones_like(model.head.weight)
    norms = hidden_gradient_norms(model, lambda: model(x).pow(2).mean())
    assert set(norms) == {"l0", "l0_reverse", "l1", "l1_reverse"}
    assert all(n.shape == (12,) and (n >= 0).all() for n in norms.values())
    assert norms["l1"][-1] > 0 and norms["l1_reverse"][0] > 0  # each direction's last step feeds the head
    assert torch.equal(model.head.weight.grad, torch.ones_like(model.head.weight))  # .grad untouched
    assert all(cell.uses_fused for cell in model.recurrent.cells)  # back on the fused path
    assert torch.allclose(model(x), before)


def test_vanilla_rnn_gradient_fades_faster_than_lstm():
    torch.manual_seed(0)
    curves = {}
    for cell in ("rnn", "lstm"):
        model = rnnkit.topologies.ManyToOne(2, 1, 32, cell=cell)
        x = torch.rand(16, 60, 2)
        curves[cell] = hidden_gradient_norms(model, lambda: model(x).pow(2).mean())["l0"]
    ratio = {cell: float(c[0] / c[-1]) for cell, c in curves.items()}
    assert ratio["rnn"] < 1e-3 * ratio["lstm"]


def test_gradient_flow_needs_a_scalar_loss_that_runs_the_model():
    recurrent = _scalar_rnn(1.0, 0.5)
    with pytest.raises(RnnkitError, match="loss\\(\\) must return a scalar tensor"):
        hidden_gradient_norms(recurrent, lambda: recurrent(torch.ones(1, 3, 1))[0], recurrent=recurrent)
    with pytest.raises(RnnkitError, match="never ran the model's recurrent stack"):
        hidden_gradient_norms(recurrent, lambda: torch.ones((), requires_grad=True) * 2, recurrent=recurrent)


def test_lstm_gate_traces_equal_the_cells_own_recomputation():
    torch.manual_seed(1)
    recurrent = Recurrent(3, 5, cell="lstm", num_layers=2)
    x = torch.randn(1, 9, 3)
    traces = gate_traces(recurrent, x)
    for layer, layer_input in (("l0", x[0]), ("l1", torch.as_tensor(traces["l0"]["hidden"]))):
        cell = recurrent.cells[int(layer[1])]
        W_ih, W_hh = cell.weight_ih.detach(), cell.weight_hh.detach()
        b = (cell.bias_ih + cell.bias_hh).detach()
        h, c = torch.zeros(5), torch.zeros(5)
        for t in range(9):
            z = W_ih @ layer_input[t] + W_hh @ h + b
            i, f, g, o = torch.sigmoid(z[:5]), torch.sigmoid(z[5:10]), torch.tanh(z[10:15]), torch.sigmoid(z[15:])
            c = f * c + i * g
            h = o * torch.tanh(c)
            trace = {k: torch.as_tensor(v[t]) for k, v in traces[layer].items()}
            for name, mine in (("input", i), ("forget", f), ("candidate", g), ("output", o), ("cell", c),
                               ("hidden", h)):
                assert torch.allclose(trace[name], mine, atol=1e-6), (layer, t, name)
    fused, _ = recurrent(x)  # the fused kernel's outputs: the last layer's h_t
    assert torch.allclose(torch.as_tensor(traces["l1"]["hidden"]), fused[0], atol=1e-6)


def test_gru_and_reverse_traces_line_up_with_the_input():
    torch.manual_seed(2)
    recurrent = Recurrent(2, 4, cell="gru", bidirectional=True)
    x = torch.randn(1, 7, 2)
    traces = gate_traces(recurrent, x)
    outputs, _ = recurrent(x)  # (1, 7, 8): forward units, then reverse units
    assert torch.allclose(torch.as_tensor(traces["l0"]["hidden"]), outputs[0, :, :4], atol=1e-6)
    assert torch.allclose(torch.as_tensor(traces["l0_reverse"]["hidden"]), outputs[0, :, 4:], atol=1e-6)
    cell = recurrent.cells[0]
    z = torch.sigmoid(cell.weight_ih[4:8] @ x[0, 0] + cell.bias_ih[4:8] + cell.bias_hh[4:8])  # h_0 = 0
    assert torch.allclose(torch.as_tensor(traces["l0"]["update"][0]), z.detach(), atol=1e-6)
    with pytest.raises(DataError, match="expects one sequence"):
        gate_traces(recurrent, torch.randn(2, 7, 2))


def test_best_cells_find_the_unit_that_tracks_a_feature():
    rng = np.random.default_rng(0)
    feature = np.cumsum(rng.random(50))
    trace = rng.normal(size=(50, 10))
    trace[:, 7] = -0.3 * feature + 0.01 * rng.normal(size=50)
    unit, r = best_cells(trace, feature, k=1)[0]
    assert unit == 7 and r < -0.99
    assert best_cells(np.ones((50, 3)), feature, k=3)[0][1] == 0.0  # constant units score 0


def test_value_parsing_says_what_form_is_expected():
    assert parse_values("1, 2\n3 4", 2).tolist() == [[1, 2], [3, 4]]
    assert parse_series("date,value\n2020-01-01,5\n2020-02-01,6.5\n").tolist() == [5, 6.5]
    assert parse_series("unique_id,ds,y\na,2020,1\na,2021,2\n").tolist() == [1, 2]
    with pytest.raises(DataError, match="must be numbers separated by commas or newlines, found 'abc'"):
        parse_values("1,abc,3")
    with pytest.raises(DataError, match="needs 2 numbers per step, got 3"):
        parse_values("1,2,3", 2)


@pytest.mark.slow
def test_plots_are_written_as_png(tmp_path):
    traces = gate_traces(Recurrent(2, 30, cell="lstm"), torch.randn(1, 12, 2))
    path = plot_gates(traces, list("hello world!"), tmp_path / "gates.png", units=8)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    flow = plot_gradient_flow({"lstm": np.linspace(1, 0.1, 20), "rnn": np.zeros(20)}, tmp_path / "flow.png")
    assert flow.stat().st_size > 1000
    with pytest.raises(RnnkitError, match="name the file \\*.png"):
        plot_gradient_flow({"x": np.ones(3)}, tmp_path / "flow.jpg")
    assert not (tmp_path / "flow.jpg").exists()


@pytest.fixture(scope="module")
def order_bundle(tmp_path_factory):
    torch.manual_seed(0)
    lab = MemoryLab(task="order", length=12, max_steps=5, train_size=64, test_size=32, progress=False).fit()
    return lab.save(tmp_path_factory.mktemp("lab") / "order.rnnkit")


@pytest.mark.slow
def test_inspect_plots_gates_and_names_feature_cells(order_bundle, tmp_path):
    result = runner.invoke(app, ["inspect", str(order_bundle), "--input", "BacXdbcYdaE", "--plot",
                                 str(tmp_path / "gates.png"), "--units", "10"])
    assert result.exit_code == 0, result.output
    assert "11 steps through LSTM l0" in result.output
    assert "cells tracking seen_relevant (cell state): unit" in result.output
    assert (tmp_path / "gates.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_inspect_refuses_input_in_the_wrong_form(order_bundle, tmp_path):
    result = runner.invoke(app, ["inspect", str(order_bundle), "--input", "BacXdzcYdaE", "--plot",
                                 str(tmp_path / "g.png")])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: the order task reads only the characters 'abcdXYBE', got 'z' at "
                                     "position 5; e.g. --input BacXdbcYdaE")
    assert not (tmp_path / "g.png").exists()
    result = runner.invoke(app, ["inspect", str(order_bundle), "--input", "BacXE", "--layer", "l3"])
    assert result.exit_code == 2 and "--layer 'l3' is not in this model; choose one of l0" in result.output


class _NotRecurrent:
    """A loaded model without a recurrent stack (stands in for, e.g., a feed-forward task)."""


@register("test_feedforward")
def _load_feedforward(bundle):
    return _NotRecurrent()


def test_inspect_refuses_a_bundle_without_a_recurrent_cell(tmp_path):
    path = save_bundle(tmp_path / "ff.rnnkit", model_type="test_feedforward", config={},
                       model=torch.nn.Linear(2, 1))
    result = runner.invoke(app, ["inspect", str(path), "--input", "1,2,3"])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: a _NotRecurrent model has no recurrent cell rnnkit can inspect (it "
                                     "lacks inspection_recurrent/inspection_input); inspect a bundle of a "
                                     "recurrent task model")
    with pytest.raises(RnnkitError, match="not an rnnkit Recurrent"):
        recurrent_of(type("Odd", (), {"inspection_recurrent": lambda self: torch.nn.LSTM(1, 1),
                                      "inspection_input": lambda self, s: None})())


@pytest.mark.slow
def test_inspect_reads_a_forecaster_bundle_and_a_series_csv(tmp_path):
    y = 10 + np.sin(np.arange(60) / 3)
    frame = pd.DataFrame({"unique_id": "s", "ds": pd.date_range("2000-01-01", periods=60, freq="MS"), "y": y})
    rnnkit.Forecaster(horizon=3, lookback=9, hidden_size=8, ensemble=1, max_steps=5, progress=False).fit(frame).save(
        tmp_path / "fc.rnnkit")
    csv = tmp_path / "series.csv"
    frame[["ds", "y"]].rename(columns={"ds": "date", "y": "value"}).to_csv(csv, index=False)
    result = runner.invoke(app, ["inspect", str(tmp_path / "fc.rnnkit"), "--input", str(csv), "--plot",
                                 str(tmp_path / "fc.png")])
    assert result.exit_code == 0, result.output
    assert "60 steps through LSTM l0 (8 units)" in result.output and "cells tracking value" in result.output
    bad = runner.invoke(app, ["inspect", str(tmp_path / "fc.rnnkit"), "--input", "1,2,x"])
    assert bad.exit_code == 2 and "forecaster input must be numbers" in bad.output


@pytest.mark.slow
def test_lab_prints_the_error_next_to_the_baseline_and_saves_a_bundle(tmp_path):
    result = runner.invoke(app, ["lab", "adding", "--cell", "rnn", "--length", "10", "--max-steps", "20",
                                 "--no-progress", "--out", str(tmp_path / "add.rnnkit")])
    assert result.exit_code == 0, result.output
    assert "RNN with 130 units" in result.output and "baseline: always predict 1" in result.output
    assert "not solved: test MSE" in result.output
    assert rnnkit.read_bundle(tmp_path / "add.rnnkit").metrics["task"] == "adding"
    rows = tmp_path / "steps.csv"
    rows.write_text("value,marker\n0.5,0\n0.25,1\n0.75,1\n")
    shown = runner.invoke(app, ["inspect", str(tmp_path / "add.rnnkit"), "--input", str(rows), "--plot",
                                str(tmp_path / "a.png")])
    assert shown.exit_code == 0 and "cells tracking marked_sum (hidden state)" in shown.output
    bad = runner.invoke(app, ["lab", "sum"])
    assert bad.exit_code == 2 and "unknown lab task 'sum'; choose one of adding, copy, order" in bad.output


def test_demo_part_shows_the_rnn_gradient_vanishing_first(tmp_path, capsys):
    from rnnkit.cli.demo import memory_gradient_flow

    memory_gradient_flow(tmp_path, length=40)
    shown = capsys.readouterr().out
    assert "Memory: gradient flow through time" in shown and "│ RNN  │   130 │" in shown
    assert (tmp_path / "memory_gradient_flow.png").read_bytes()[:4] == b"\x89PNG"

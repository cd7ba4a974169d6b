"""The memory lab: task generators, parameter budgets, chrono init, training and scoring."""

import json

import pytest
import torch

import rnnkit

from rnnkit.data.memory import (COPY_DELIMITER, ORDER_ALPHABET, adding_problem, copy_task, order_text,
                                temporal_order)
from rnnkit.errors import DataError, RnnkitError
from rnnkit.tasks.memory import (TASKS, LabConfig, MemoryLab, build_model, chrono_init, hidden_for_budget,
                                 parameter_count, score)
from rnnkit.layers import Recurrent


def test_adding_problem_targets_are_the_sum_of_the_two_marked_values():
    x, y = adding_problem(500, 30, seed=3)
    assert x.shape == (500, 30, 2) and y.shape == (500,)
    markers = x[:, :, 1]
    assert torch.equal(markers.sum(1), torch.full((500,), 2.0))
    first, second = (markers > 0).nonzero()[:, 1].view(500, 2).unbind(1)
    assert (first < 15).all() and (second >= 15).all()  # one marker per half
    for i in range(0, 500, 37):
        values = x[i, :, 0]
        assert y[i] == pytest.approx(float(values[first[i]] + values[second[i]]))
    assert ((x[:, :, 0] >= 0) & (x[:, :, 0] <= 1)).all()


def test_adding_baseline_is_about_one_sixth_and_the_seed_fixes_the_data():
    _, y = adding_problem(20_000, 10, seed=0)
    assert ((y - 1) ** 2).mean().item() == pytest.approx(1 / 6, abs=0.006)
    a, b = adding_problem(5, 10, seed=7), adding_problem(5, 10, seed=7)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], adding_problem(5, 10, seed=8)[0])


def test_copy_task_asks_for_the_first_symbols_after_the_delimiter():
    x, y = copy_task(64, 25, symbols=10, seed=1)
    assert x.shape == (64, 45, 10) and y.shape == (64, 45)
    ids = x.argmax(-1)
    assert torch.equal(y[:, -10:], ids[:, :10])  # the recall window repeats the memory
    assert ((ids[:, :10] >= 1) & (ids[:, :10] <= 8)).all()
    assert (ids[:, 34] == COPY_DELIMITER).all()  # after T - 1 = 24 blanks
    assert (ids[:, 10:34] == 0).all() and (ids[:, 35:] == 0).all()
    assert (y[:, :-10] == 0).all()


def test_temporal_order_class_is_the_order_of_x_and_y():
    x, y = temporal_order(300, 100, seed=2)
    assert x.shape == (300, 100, 8)
    for i in range(300):
        text = order_text(x[i])
        assert text[0] == "B" and text[-1] == "E"
        positions = [t for t, ch in enumerate(text) if ch in "XY"]
        assert len(positions) == 2
        assert 10 <= positions[0] <= 20 and 50 <= positions[1] <= 60
        pair = text[positions[0]] + text[positions[1]]
        assert ["XX", "XY", "YX", "YY"][int(y[i])] == pair
        assert set(text[1:-1]) <= set(ORDER_ALPHABET[:6])


def test_generators_refuse_bad_sizes():
    with pytest.raises(DataError, match="length must be an integer >= 2, got 1"):
        adding_problem(4, 1)
    with pytest.raises(DataError, match="n must be an integer >= 1"):
        copy_task(0, 5)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "mingru", "minlstm"])
def test_hidden_for_budget_matches_the_real_parameter_count(cell):
    for task, spec in TASKS.items():
        width = hidden_for_budget(cell, spec.input_size, spec.output_size, 17_500)
        model = build_model(LabConfig(task=task, cell=cell, length=20))
        real = sum(p.numel() for p in model.parameters())
        assert model.recurrent.hidden_size == width
        assert real == parameter_count(cell, spec.input_size, spec.output_size, width)
        assert abs(real - 17_500) / 17_500 < 0.02  # equal budgets across cells


def test_an_lstm_unit_costs_four_rnn_units():
    lstm = hidden_for_budget("lstm", 2, 1, 17_500)
    rnn = hidden_for_budget("rnn", 2, 1, 17_500)
    assert lstm == 64 and 2.0 < rnn / lstm < 2.1  # 4x the weights per unit: about 2x fewer units


def test_chrono_init_spreads_gate_time_scales_up_to_the_span():
    recurrent = Recurrent(2, 32, cell="lstm")
    chrono_init(recurrent, 100)
    cell = recurrent.cells[0]
    forget = cell.bias_ih[32:64] + cell.bias_hh[32:64]
    assert (forget >= 0).all() and (forget <= torch.log(torch.tensor(99.0))).all()
    assert torch.allclose(cell.bias_ih[:32], -forget)
    gru = Recurrent(2, 16, cell="gru")
    chrono_init(gru, 50)
    assert (gru.cells[0].bias_ih[16:32] > 0).all() and (gru.cells[0].bias_hh == 0).all()


def test_chrono_init_sets_the_memory_gates_of_mingru_and_minlstm():
    span = torch.log(torch.tensor(99.0))
    minlstm = Recurrent(2, 16, cell="minlstm")  # no bias_hh: chrono init used to crash on it
    chrono_init(minlstm, 100)
    forget, write = minlstm.cells[0].bias_ih[:16], minlstm.cells[0].bias_ih[16:32]
    assert (forget >= 0).all() and (forget <= span).all() and forget.std() > 0.3
    assert torch.equal(write, -forget)
    mingru = Recurrent(2, 16, cell="mingru")
    chrono_init(mingru, 100)
    update = mingru.cells[0].bias_ih[:16]  # z writes, so a long memory needs z near 0
    assert (update <= 0).all() and (update >= -span).all() and update.std() > 0.3
    model = build_model(LabConfig(task="adding", cell="mingru", length=20))  # the lab builds it too
    assert (model.recurrent.cells[0].bias_ih[:model.recurrent.hidden_size] <= 0).all()


def test_a_scan_cell_gets_the_width_its_parameters_allow():
    # minGRU has no H x H matrix: 2 (H I + H) + O (H + 1) parameters, so far more units than a GRU's
    assert parameter_count("mingru", 2, 1, 10) == 2 * (10 * 2 + 10) + 11
    assert hidden_for_budget("mingru", 2, 1, 17_500) > 10 * hidden_for_budget("gru", 2, 1, 17_500)


def test_score_compares_with_the_trivial_baseline():
    class Constant(torch.nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value = torch.nn.Parameter(torch.tensor(value))

        def forward(self, x):
            return self.value.expand(len(x), 1)

    x, y = adding_problem(1000, 10, seed=0)
    scores = score("adding", Constant(1.0), x, y)
    assert scores["error"] == pytest.approx(scores["baseline"])  # predicting 1 *is* the baseline
    assert score("adding", Constant(3.0), x, y)["error"] > scores["baseline"]


def test_lab_config_refuses_unknown_tasks_and_cells():
    with pytest.raises(RnnkitError, match="unknown lab task 'sum'; choose one of adding, copy, order"):
        LabConfig(task="sum")
    with pytest.raises(RnnkitError, match="unknown cell 'tcn'"):
        LabConfig(cell="tcn")
    config = LabConfig(task="copy", length=30, cell="gru")
    assert LabConfig.from_dict(config.to_dict()) == config
    with pytest.raises(RnnkitError, match=r"^LabConfig.train_size must be a positive integer, got 0$"):
        LabConfig(train_size=0)


def test_a_lab_bundle_from_before_the_task_contract_loads(tmp_path):
    lab = MemoryLab(task="adding", length=5, max_steps=2, train_size=16, test_size=8, progress=False).fit()
    path = lab.save(tmp_path / "old.rnnkit")
    header = json.loads((path / "config.json").read_text())
    config = header["config"]
    config["steps"] = config.pop("max_steps")  # how bundles spelled it before
    for shared in ("epochs", "clock", "precision", "patience"):
        del config[shared]
    (path / "config.json").write_text(json.dumps(header))
    again = rnnkit.load(path)
    assert again.config.max_steps == 2 and again.config.epochs == LabConfig().epochs
    answer = again.predict_checked({"input": "0.5,1\n0.2,0\n0.25,1\n0.9,0\n0.1,0"})["answer"]
    with torch.no_grad():
        expected = float(lab.model(torch.tensor([[[0.5, 1], [0.2, 0], [0.25, 1], [0.9, 0], [0.1, 0]]])))
    assert answer == pytest.approx(expected)


def test_predict_json_answers_in_the_task_s_terms():
    torch.manual_seed(0)
    lab = MemoryLab(task="order", length=10)
    lab.model = lab.build_model().eval()
    answer = lab.predict_checked({"input": "BacXdbYcaE"})["answer"]
    assert answer == ["XX", "XY", "YX", "YY"][int(lab.model(lab.inspection_input("BacXdbYcaE").x).argmax())]
    with pytest.raises(RnnkitError, match=r"^request has unknown key\(s\) 'text'"):
        lab.predict_checked({"input": "BaE", "text": "x"})
    with pytest.raises(RnnkitError, match="the order task reads only the characters 'abcdXYBE', got 'z'"):
        lab.predict_checked({"input": "Baz"})


@pytest.mark.slow
def test_lstm_learns_the_temporal_order_task_and_the_bundle_round_trips(tmp_path):
    lab = MemoryLab(task="order", cell="lstm", length=20, max_steps=250, train_size=2000, test_size=400,
                    progress=False).fit()
    assert lab.metrics["error"] < 0.1 < lab.metrics["baseline"]
    path = lab.save(tmp_path / "order.rnnkit")
    again = MemoryLab.from_bundle(__import__("rnnkit").read_bundle(path))
    x, y = lab.test_data()
    assert score("order", again.model, x, y) == score("order", lab.model, x, y)
    assert again.metrics["error"] == lab.metrics["error"]

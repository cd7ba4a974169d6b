"""The one trainer (``rnnkit.training``): schedule, config, learning, batching, stopping, checkpoints.

The central promise is the last test: a run killed with SIGKILL mid-way and resumed from its
checkpoint ends with weights bit-identical to a run that was never interrupted, with dropout
on (so the RNG is really restored) and truncated BPTT (so checkpoints fall mid-batch).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from rnnkit import LSTM, RnnkitError
from rnnkit.training.batching import epoch_order
from rnnkit.training import CLOCKS, TrainConfig, budget_fill, budget_shares, evaluate, fit, lr_at

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(autouse=True)
def _one_thread():
    # determinism across processes, and no oversubscription on a shared 2-core machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Tagger(nn.Module):
    """An LSTM and a linear head at every step; takes and returns the state ``(h, c)``."""

    def __init__(self, hidden: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.cell = LSTM(1, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x, state=None):
        out, state = self.cell(self.drop(x), state)  # out (B, T, H)
        return self.head(self.drop(out)), state  # (B, T, 1)


def mse(model, batch, state):
    x, y = batch[0], batch[1]
    pred, state = model(x, state)
    return nn.functional.mse_loss(pred, y), state


def delayed_copy(n: int, steps: int = 12, delay: int = 2, seed: int = 0):
    """``y_t = x_{t-delay}`` with ``x ~ N(0, 1)``: learnable only by remembering."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, steps, 1, generator=g)
    y = torch.zeros_like(x)
    y[:, delay:] = x[:, :-delay]
    return x, y


def quiet(**kw) -> TrainConfig:
    return TrainConfig(progress=False, **kw)


# ---------------------------------------------------------------------------- schedule


def test_lr_at_warmup_then_cosine_to_a_tenth():
    c = TrainConfig(lr=1.0, warmup_steps=4)
    assert [lr_at(s, c, 104) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lr_at(4, c, 104) == pytest.approx(1.0)  # the cosine starts at lr
    assert lr_at(54, c, 104) == pytest.approx(0.55)  # halfway: the mean of lr and lr/10
    assert lr_at(104, c, 104) == pytest.approx(0.1)
    assert lr_at(500, c, 104) == pytest.approx(0.1)  # flat past the plan
    assert lr_at(0, TrainConfig(lr=2.0), 10) == 2.0  # no warmup: full lr at once


def test_lr_at_constant():
    c = TrainConfig(lr=0.5, schedule="constant", warmup_steps=2)
    assert [lr_at(s, c, 10) for s in (0, 1, 2, 9, 50)] == pytest.approx([0.25, 0.5, 0.5, 0.5, 0.5])


# ------------------------------------------------------------------------------ config


@pytest.mark.parametrize("kwargs,message", [
    (dict(epochs=0), "TrainConfig.epochs must be an integer >= 1, got 0"),
    (dict(epochs=True), "TrainConfig.epochs must be an integer >= 1, got True"),
    (dict(batch_size=2.5), "TrainConfig.batch_size must be an integer >= 1, got 2.5"),
    (dict(max_steps=0), "TrainConfig.max_steps must be None or an integer >= 1, got 0"),
    (dict(lr=-1), "TrainConfig.lr must be a number > 0, got -1"),
    (dict(lr=float("nan")), "TrainConfig.lr must be a number > 0, got nan"),
    (dict(weight_decay=-0.1), "TrainConfig.weight_decay must be a number >= 0, got -0.1"),
    (dict(clip_norm=0), "TrainConfig.clip_norm must be None or a number > 0, got 0"),
    (dict(minutes="5"), "TrainConfig.minutes must be None or a number > 0, got '5'"),
    (dict(clock="gpu"), "TrainConfig.clock must be 'wall' or 'cpu', got 'gpu'"),
    (dict(schedule="linear"), "TrainConfig.schedule must be 'cosine', 'constant' or 'slanted', got 'linear'"),
    (dict(tbptt=0), "TrainConfig.tbptt must be None or an integer >= 1, got 0"),
    (dict(stateful="yes"), "TrainConfig.stateful must be True or False, got 'yes'"),
    (dict(seed=-1), "TrainConfig.seed must be an integer >= 0, got -1"),
    (dict(device="gpu0"), "TrainConfig.device must be 'auto' or a torch device such as 'cpu' or 'cuda:0', got 'gpu0'"),
])
def test_config_rejects_bad_values_naming_the_field(kwargs, message):
    with pytest.raises(RnnkitError) as info:
        TrainConfig(**kwargs)
    assert str(info.value) == message


def test_config_round_trips_through_json():
    c = TrainConfig(epochs=3, max_steps=10, minutes=0.5, batch_size=8, lr=1e-3, weight_decay=0.0,
                    clip_norm=None, schedule="constant", warmup_steps=5, tbptt=7, stateful=True,
                    eval_every=4, patience=2, checkpoint_every=6, seed=3, progress=False, device="cpu")
    d = c.to_dict()
    assert TrainConfig.from_dict(json.loads(json.dumps(d))) == c
    assert TrainConfig.from_dict(d).to_dict() == d
    assert TrainConfig.from_dict({}) == TrainConfig()
    assert TrainConfig(lr=1).lr == 1.0 and isinstance(TrainConfig(lr=1).lr, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.lr = 1.0  # type: ignore[misc]
    with pytest.raises(RnnkitError, match=r"unknown TrainConfig option\(s\): lrr; known options: epochs"):
        TrainConfig.from_dict({"lrr": 0.1})
    with pytest.raises(TypeError):
        TrainConfig(20)  # type: ignore[misc]  # keyword-only


# ------------------------------------------------------------------------------ training


def test_lstm_learns_delayed_copy_and_keeps_its_best_weights():
    torch.manual_seed(0)
    model = Tagger(hidden=16)
    train, val = delayed_copy(256), delayed_copy(64, seed=1)
    before = evaluate(model, mse, val, quiet())
    result = fit(model, mse, train, val, quiet(epochs=20, lr=1e-2))
    assert before > 0.7  # the variance of x, roughly: nothing learned yet
    assert result.best_val_loss < 0.05  # 0.013 when written: the delayed copy is learned
    assert evaluate(model, mse, val, quiet()) == result.best_val_loss  # the best weights are in the model
    assert (result.stopped, result.steps, result.epochs_completed) == ("completed", 20 * 8, 20)
    assert [row["step"] for row in result.history] == [8 * (e + 1) for e in range(20)]
    assert set(result.history[0]) == {"step", "epoch", "train_loss", "val_loss", "lr", "elapsed_s"}
    assert model.training  # fit leaves the model in training mode, evaluate restores it


def test_progress_bar_runs(capsys):
    fit(Tagger(hidden=4), mse, delayed_copy(64), config=TrainConfig(epochs=2))
    assert "train" in capsys.readouterr().out


def test_evaluate_weights_by_samples_and_time():
    x = torch.arange(10.0).reshape(5, 2, 1)  # 5 samples, 2 steps
    model = nn.Linear(1, 1)
    model.train()

    def mean_of_x(model, batch, state):
        assert not model.training  # evaluate switches dropout off
        return batch[0].mean(), state

    assert evaluate(model, mean_of_x, (x,), quiet(batch_size=2)) == pytest.approx(4.5)  # batches 2, 2, 1
    assert evaluate(model, mean_of_x, (x,), quiet(batch_size=2, tbptt=1)) == pytest.approx(4.5)
    assert model.training


def test_tbptt_cuts_time_into_steps_and_carries_detached_state():
    calls = []

    def recording(model, batch, state):
        x, y, label = batch
        calls.append((x.size(1), label.shape, state))
        return mse(model, (x, y), state)

    x, y = delayed_copy(64, steps=22)
    labels = torch.arange(64)  # 1-D: goes whole with every piece
    result = fit(Tagger(hidden=4), recording, (x, y, labels), config=quiet(epochs=2, tbptt=5))
    assert result.steps == 2 * 2 * 5  # epochs x batches x ceil(22 / 5)
    assert [c[0] for c in calls[:5]] == [5, 5, 5, 5, 2]
    assert all(c[1] == (32,) for c in calls)
    for i, (_, _, state) in enumerate(calls):
        if i % 5 == 0:
            assert state is None  # each batch starts afresh
        else:
            h, c = state
            assert h.shape == (32, 4) and not h.requires_grad and not c.requires_grad


def test_stateful_takes_batches_in_order_and_carries_state_across_them():
    seen = []

    def recording(model, batch, state):
        x, y, ids = batch
        seen.append((ids.tolist(), state is None))
        return mse(model, (x, y), state)

    x, y = delayed_copy(100)
    fit(Tagger(hidden=4), recording, (x, y, torch.arange(100)), config=quiet(epochs=2, stateful=True))
    expected = [(list(range(b * 32, b * 32 + 32)), b == 0) for b in range(3)]  # the partial batch dropped
    assert seen == expected * 2  # the state restarts with each epoch


def test_shuffled_batches_follow_the_seeded_permutation_and_keep_the_last_partial_batch():
    seen = []

    def recording(model, batch, state):
        seen.append(batch[2].tolist())
        return mse(model, batch[:2], state)

    x, y = delayed_copy(70)
    fit(Tagger(hidden=4), recording, (x, y, torch.arange(70)), config=quiet(epochs=2, seed=5))
    for epoch in range(2):
        order = torch.randperm(70, generator=torch.Generator().manual_seed(5 + epoch)).tolist()
        assert seen[3 * epoch:3 * epoch + 3] == [order[:32], order[32:64], order[64:]]


def test_length_grouping_keeps_every_sample_once_and_packs_batches_of_near_equal_length():
    lengths = torch.randint(1, 200, (1000,), generator=torch.Generator().manual_seed(0))
    order = epoch_order(1000, 8, seed=3, lengths=lengths)
    assert sorted(order.tolist()) == list(range(1000))
    assert torch.equal(order, epoch_order(1000, 8, seed=3, lengths=lengths))  # a resumed run rebuilds it
    assert not torch.equal(order, epoch_order(1000, 8, seed=4, lengths=lengths))
    batches = order.split(8)
    spread = torch.stack([lengths[b].max() - lengths[b].min() for b in batches]).float().mean()
    random_spread = torch.stack([lengths[b].max() - lengths[b].min() for b in torch.randperm(1000).split(8)])
    assert spread < random_spread.float().mean() / 5  # padding to the longest costs little
    first = [int(lengths[b].max()) for b in batches[:20]]
    assert first != sorted(first, reverse=True)  # batches still come in random order


def test_length_grouping_keeps_the_partial_batch_last_and_reaches_the_loss_fn():
    lengths = torch.arange(70) % 13
    order = epoch_order(70, 32, seed=0, lengths=lengths)
    assert lengths[order[64:]].max() <= lengths[order[:64]].min()  # the shortest samples fill the partial batch
    seen = []

    def recording(model, batch, state):
        seen.append(batch[2].tolist())
        return mse(model, batch[:2], state)

    x, y = delayed_copy(70)
    fit(Tagger(hidden=4), recording, (x, y, torch.arange(70)), config=quiet(epochs=2, seed=5), lengths=lengths)
    for epoch in range(2):
        expected = epoch_order(70, 32, 5 + epoch, lengths).tolist()
        assert seen[3 * epoch:3 * epoch + 3] == [expected[:32], expected[32:64], expected[64:]]


def test_length_grouping_errors_are_clear():
    x, y = delayed_copy(8)
    with pytest.raises(RnnkitError, match=r"lengths must be a tensor of one length per training sample, "
                                          r"shape \(8,\), got \(7,\)"):
        fit(Tagger(hidden=4), mse, (x, y), config=quiet(), lengths=torch.ones(7))
    with pytest.raises(RnnkitError, match="stateful=True keeps batches in order"):
        fit(Tagger(hidden=4), mse, (x, y), config=quiet(stateful=True, batch_size=4), lengths=torch.ones(8))


# ------------------------------------------------------------------------------ stopping


def scripted_val(losses):
    """A loss_fn whose validation loss follows ``losses``; records the weights at each validation."""
    snapshots = []

    def loss_fn(model, batch, state):
        if model.training:
            return mse(model, batch, state)
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return torch.tensor(float(losses[len(snapshots) - 1])), state

    return loss_fn, snapshots


def test_early_stopping_stops_after_patience_validations_without_improvement():
    loss_fn, _ = scripted_val([5.0, 4.0, 4.5, 4.0, 6.0] + [1.0] * 50)
    result = fit(Tagger(hidden=4), loss_fn, delayed_copy(64), delayed_copy(16), quiet(epochs=50, patience=3,
                                                                                       batch_size=64))
    assert result.stopped == "early_stopping"
    assert [row["val_loss"] for row in result.history] == [5.0, 4.0, 4.5, 4.0, 6.0]  # 4.0 again is no gain
    assert (result.steps, result.epochs_completed, result.best_val_loss) == (5, 5, 4.0)


def test_best_weights_are_restored():
    loss_fn, snapshots = scripted_val([3.0, 1.0, 2.0, 4.0])
    model = Tagger(hidden=4)
    result = fit(model, loss_fn, delayed_copy(64), delayed_copy(16), quiet(epochs=4, batch_size=16))
    assert result.best_val_loss == 1.0 and len(snapshots) == 4
    final = model.state_dict()
    assert all(torch.equal(final[k], snapshots[1][k]) for k in final)
    assert not all(torch.equal(final[k], snapshots[3][k]) for k in final)


def test_max_steps_caps_the_run_across_epochs():
    result = fit(Tagger(hidden=4), mse, delayed_copy(64), config=quiet(epochs=10, max_steps=5))
    assert (result.stopped, result.steps, result.epochs_completed) == ("max_steps", 5, 2)
    assert result.history[-1]["step"] == 5  # a closing row for the steps after the last epoch's


def test_time_budget_stops_cleanly_and_keeps_the_best_weights():
    model = Tagger(hidden=4)
    result = fit(model, mse, delayed_copy(64), delayed_copy(16),
                 quiet(epochs=100_000, minutes=0.2 / 60, batch_size=8, eval_every=5))
    assert result.stopped == "time_budget"
    assert 0 < result.steps < 100_000 * 8 and result.elapsed_s < 10
    assert result.history[-1]["step"] == result.steps
    assert evaluate(model, mse, delayed_copy(16), quiet(batch_size=8)) == result.best_val_loss


# --------------------------------------------------------------------------- checkpoints


def test_a_cpu_clock_budget_does_not_count_time_spent_waiting():
    def sleepy(model, batch, state):
        time.sleep(0.05)  # what a busy machine does to a wall-clock budget
        return mse(model, batch, state)

    budget = dict(epochs=1, batch_size=8, minutes=0.005)  # 0.3 s; eight steps sleep 0.4 s
    wall = fit(Tagger(hidden=4), sleepy, delayed_copy(64), config=quiet(**budget))
    cpu = fit(Tagger(hidden=4), sleepy, delayed_copy(64), config=quiet(clock="cpu", **budget))
    assert wall.stopped == "time_budget" and wall.steps < 8
    assert cpu.stopped == "completed" and cpu.steps == 8


def test_checkpoint_files_are_complete_and_no_temporary_is_left(tmp_path):
    result = fit(Tagger(hidden=4), mse, delayed_copy(64), delayed_copy(16),
                 quiet(epochs=2, tbptt=4, checkpoint_every=3), checkpoint_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.json", "checkpoint.safetensors", "history.csv", "history.json"]
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    assert (meta["step"], meta["done"], meta["config"]["tbptt"]) == (12, [1, 1, 2], 4)
    with safe_open(str(tmp_path / "checkpoint.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["checkpoint"]) == meta  # the header carries the same state
        keys = set(f.keys())
    assert {"model.head.weight", "best.head.weight", "optim.state.0.exp_avg", "optim.state.0.step",
            "rng.torch", "run.loss_sum", "carry.0", "carry.1"} <= keys
    tensors = load_file(tmp_path / "checkpoint.safetensors")
    assert tensors["rng.torch"].dtype == torch.uint8
    assert "params" not in meta["optimizer"]["param_groups"][0]
    assert json.loads((tmp_path / "history.json").read_text()) == result.history
    rows = (tmp_path / "history.csv").read_text().splitlines()
    assert rows[0] == "step,epoch,train_loss,val_loss,lr,elapsed_s" and len(rows) == 1 + len(result.history)


def test_a_failed_write_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    data = delayed_copy(32)
    fit(Tagger(hidden=4), mse, data, config=quiet(epochs=1), checkpoint_dir=tmp_path)
    before = (tmp_path / "checkpoint.safetensors").read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        fit(Tagger(hidden=4), mse, data, config=quiet(epochs=3, checkpoint_every=1), checkpoint_dir=tmp_path)
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_resume_errors_are_clear(tmp_path):
    data = delayed_copy(32)
    with pytest.raises(RnnkitError, match=r"resume=True but there is no checkpoint in .*; start a fresh run"):
        fit(Tagger(hidden=4), mse, data, config=quiet(), checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(RnnkitError, match=r"resume=True needs checkpoint_dir"):
        fit(Tagger(hidden=4), mse, data, config=quiet(), resume=True)
    with pytest.raises(RnnkitError, match=r"checkpoint_every=5 needs checkpoint_dir"):
        fit(Tagger(hidden=4), mse, data, config=quiet(checkpoint_every=5))
    with pytest.raises(RnnkitError, match=r"patience=2 needs validation data"):
        fit(Tagger(hidden=4), mse, data, config=quiet(patience=2))
    fit(Tagger(hidden=4), mse, data, config=quiet(epochs=1), checkpoint_dir=tmp_path)
    with pytest.raises(RnnkitError, match=r"cannot resume from .*: lr=0.003 there, 0.001 here"):
        fit(Tagger(hidden=4), mse, data, config=quiet(epochs=1, lr=1e-3), checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(RnnkitError, match=r"does not fit this model"):
        fit(Tagger(hidden=5), mse, data, config=quiet(epochs=1), checkpoint_dir=tmp_path, resume=True)


def test_data_errors_are_clear():
    x, y = delayed_copy(8)
    shapes = r"\[\(8, 12, 1\), \(7, 12, 1\)\]"
    with pytest.raises(RnnkitError, match=r"train tensors must share a non-empty first .*" + shapes):
        fit(Tagger(hidden=4), mse, (x, y[:7]), config=quiet())
    with pytest.raises(RnnkitError, match=r"stateful=True uses only full batches, but train has 8 samples"):
        fit(Tagger(hidden=4), mse, (x, y), config=quiet(stateful=True))
    with pytest.raises(RnnkitError, match=r"tbptt cuts every val tensor .* differ: \[3, 12\]"):
        fit(Tagger(hidden=4), mse, (x, y), (x, y[:, :3]), config=quiet(tbptt=2))


class Crash(Exception):
    pass


def test_resume_in_process_is_bit_identical(tmp_path):
    config = quiet(epochs=3, batch_size=16, tbptt=5, eval_every=1, checkpoint_every=7, lr=1e-2)
    train, val = delayed_copy(48), delayed_copy(16, seed=1)

    def run(checkpoint_dir, resume=False, crash_at=None):
        torch.manual_seed(1)
        model = Tagger(hidden=8, dropout=0.2)

        def crash(row):
            if row["step"] == crash_at:
                raise Crash

        result = fit(model, mse, train, val, config, checkpoint_dir=checkpoint_dir, resume=resume,
                     callbacks=[crash])
        return model.state_dict(), result

    reference, expected = run(tmp_path / "reference")
    with pytest.raises(Crash):
        run(tmp_path / "crashed", crash_at=17)  # the last checkpoint is at step 14, mid-batch
    assert json.loads((tmp_path / "crashed" / "checkpoint.json").read_text())["step"] == 14
    resumed, result = run(tmp_path / "crashed", resume=True)
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    strip = lambda history: [{k: v for k, v in row.items() if k != "elapsed_s"} for row in history]  # noqa
    assert strip(result.history) == strip(expected.history)
    assert (result.steps, result.best_val_loss, result.stopped) == (expected.steps, expected.best_val_loss, "completed")


# ------------------------------------------------------------- the SIGKILL resume, for real

SCRIPT = '''
import json, sys, time
import torch
from safetensors.torch import save_file
sys.path.insert(0, {tests!r})
from test_training import Tagger, delayed_copy, mse
from rnnkit.training import TrainConfig, fit

torch.set_num_threads(1)
out, checkpoint_dir, resume, slow = sys.argv[1], sys.argv[2], sys.argv[3] == "resume", sys.argv[4] == "slow"
torch.manual_seed(1)
model = Tagger(hidden=8, dropout=0.25)

def loss_fn(model, batch, state):
    if slow:
        time.sleep(0.01)  # leaves the parent time to kill mid-run; changes no number
    return mse(model, batch, state)

config = TrainConfig(epochs=6, batch_size=16, tbptt=4, lr=1e-2, eval_every=7, checkpoint_every=5, progress=False)
result = fit(model, loss_fn, delayed_copy(96, steps=16), delayed_copy(32, steps=16, seed=1), config,
             checkpoint_dir=checkpoint_dir, resume=resume)
save_file({{k: v.contiguous() for k, v in model.state_dict().items()}}, out)
print(json.dumps(dict(steps=result.steps, stopped=result.stopped, best=result.best_val_loss,
                      history=[[r["step"], r["train_loss"], r["val_loss"], r["lr"]] for r in result.history])))
'''


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_gives_bit_identical_weights(tmp_path):
    script = tmp_path / "train_run.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))

    def launch(name, mode, speed):
        args = [sys.executable, str(script), str(tmp_path / f"{name}.safetensors"), str(tmp_path / name), mode, speed]
        return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    reference = launch("reference", "fresh", "fast")
    victim = launch("victim", "fresh", "slow")
    checkpoint = tmp_path / "victim" / "checkpoint.safetensors"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # let it run on, and maybe die in the middle of the next checkpoint
    victim.send_signal(signal.SIGKILL)
    _, err = victim.communicate()
    assert victim.returncode == -signal.SIGKILL, err
    with safe_open(str(checkpoint), framework="pt") as f:  # the header's JSON is what resume reads
        killed_at = json.loads(f.metadata()["checkpoint"])["step"]
    assert 0 < killed_at < 6 * 6 * 4  # killed mid-run: epochs x batches x pieces

    resumed = launch("victim", "resume", "fast")
    outputs = [p.communicate(timeout=300) for p in (reference, resumed)]
    assert [p.returncode for p in (reference, resumed)] == [0, 0], [o[1] for o in outputs]
    expected, got = (json.loads(o[0]) for o in outputs)
    assert got == expected  # steps, stop reason, best val loss and every history row
    a, b = load_file(tmp_path / "reference.safetensors"), load_file(tmp_path / "victim.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not [p for p in (tmp_path / "victim").iterdir() if p.name.startswith(".tmp")]


class FakeClock:
    """A clock that moves only when told: what a run of known length looks like to a budget."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("run_seconds,budgets", [(10, [60, 50, 40, 30, 20]), (25, [60, 35]), (70, [60])])
def test_budget_fill_gives_each_run_what_is_left_while_it_fits_what_the_last_took(
        monkeypatch, run_seconds: float, budgets: list[float]) -> None:
    clock = FakeClock()
    monkeypatch.setitem(CLOCKS, "wall", clock)
    given = []
    for minutes in budget_fill(1.0, 5):
        given.append(round(minutes * 60))
        clock.now += min(run_seconds, minutes * 60)  # a run stops early, or at its budget
    assert given == budgets
    assert list(budget_fill(None, 5)) == [None]  # no budget: one run


def test_budget_shares_split_what_is_left_evenly_among_the_runs_to_come(monkeypatch) -> None:
    clock = FakeClock()
    monkeypatch.setitem(CLOCKS, "wall", clock)
    given = []
    for minutes in budget_shares(1.0, 3):
        given.append(round(minutes * 60))
        clock.now += 10  # each run stops early, leaving time to the next
    assert given == [20, 25, 40]

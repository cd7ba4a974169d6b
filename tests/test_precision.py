"""Mixed precision (``rnnkit.precision``): bfloat16 autocast around the forward pass and loss, float32 weights."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from rnnkit import RnnkitError
from rnnkit.precision import autocast, check_precision, linear_at_best_precision, native_bf16
from rnnkit.tasks import base, classify, forecast, memory, textgen, translate
from rnnkit.training import TrainConfig, evaluate, fit
from test_training import Tagger, delayed_copy  # the trainer's own test model and task

CPU = torch.device("cpu")
needs_bf16 = pytest.mark.skipif(not native_bf16(CPU), reason="this CPU has no native bfloat16 (AVX-512 BF16 or AMX)")


class RecordingLoss:
    """An MSE loss_fn that notes the autocast dtype each call ran under (None: no autocast)."""

    def __init__(self) -> None:
        self.seen: set = set()

    def __call__(self, model, batch, state):
        self.seen.add(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return nn.functional.mse_loss(model(batch[0])[0], batch[1]), None


def _quiet(**kw) -> TrainConfig:
    return TrainConfig(progress=False, device="cpu", **kw)


@needs_bf16
def test_bf16_trains_under_autocast_keeps_float32_weights_and_learns():
    torch.manual_seed(0)
    model, loss = Tagger(), RecordingLoss()
    result = fit(model, loss, delayed_copy(256), delayed_copy(64, seed=1), _quiet(epochs=20, lr=1e-2, precision="bf16"))
    assert loss.seen == {torch.bfloat16}  # every training and validation call
    assert result.best_val_loss < 0.05  # the delayed copy is learned (fp32 reaches 0.013)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())


def test_fp32_runs_without_autocast():
    loss = RecordingLoss()
    fit(Tagger(), loss, delayed_copy(32), delayed_copy(8), _quiet(epochs=1))
    assert loss.seen == {None}


@needs_bf16
def test_bf16_loss_is_close_to_fp32_but_not_equal():
    torch.manual_seed(0)
    model, val = Tagger(hidden=64), delayed_copy(128, seed=2)
    full, low = evaluate(model, RecordingLoss(), val, _quiet()), evaluate(model, RecordingLoss(), val, _quiet(precision="bf16"))
    assert low != full  # the products really ran in bfloat16 ...
    assert low == pytest.approx(full, rel=0.02)  # ... and cost little (bfloat16 keeps ~3 significant digits)


def test_bf16_without_native_support_is_a_clear_error_and_trains_nothing(monkeypatch, tmp_path):
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    model = Tagger()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RnnkitError, match=r"^precision 'bf16' would run slower than 'fp32' here: this CPU has "
                                          r"neither AVX-512 BF16 nor AMX; use precision 'fp32'$"):
        fit(model, RecordingLoss(), delayed_copy(32), config=_quiet(precision="bf16"), checkpoint_dir=tmp_path / "run")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not (tmp_path / "run").exists()  # no checkpoint directory left behind


def test_unknown_precision_is_rejected_by_name():
    with pytest.raises(RnnkitError, match=r"^TrainConfig.precision must be 'fp32' or 'bf16', got 'fp16'$"):
        TrainConfig(precision="fp16")
    with pytest.raises(RnnkitError, match=r"^precision must be 'fp32' or 'bf16', got 'half'$"):
        check_precision("half")
    for config in (textgen.TextGeneratorConfig, classify.SequenceClassifierConfig, translate.TranslatorConfig):
        with pytest.raises(RnnkitError, match="precision must be 'fp32' or 'bf16'"):
            config(precision="float16")
    assert TrainConfig.from_dict({}).precision == "fp32"  # configs saved before the option load as float32


def test_autocast_context_follows_the_precision():
    with autocast("bf16", CPU):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast("fp32", CPU):
        assert not torch.is_autocast_enabled("cpu")


class _Stop(Exception):
    pass


@pytest.mark.parametrize("module,make", [
    (textgen, lambda: textgen.TextGenerator(textgen.TextGeneratorConfig(precision="bf16", hidden_size=8, progress=False))
     .fit("the cat sat on the mat. " * 40)),
    (classify, lambda: classify.SequenceClassifier(classify.SequenceClassifierConfig(precision="bf16", hidden_size=8,
                                                                                    progress=False))
     .fit(["good film", "bad film", "great plot", "awful plot"] * 5, ["pos", "neg", "pos", "neg"] * 5)),
    (translate, lambda: translate.Translator(translate.TranslatorConfig(precision="bf16", hidden_size=8, embedding_size=8,
                                                                       tokenizer="word", progress=False))
     .fit([("a b", "b a"), ("c d", "d c")] * 10)),
    (forecast, lambda: forecast.Forecaster(precision="bf16", horizon=2, hidden_size=8, ensemble=1, progress=False)
     .fit(pd.DataFrame({"unique_id": "s", "ds": pd.date_range("2000-01-01", periods=40, freq="MS"),
                        "y": [float(i % 12) for i in range(40)]}))),
    (memory, lambda: memory.MemoryLab(precision="bf16", length=5, train_size=16, test_size=8, progress=False).fit()),
])
def test_each_task_hands_its_precision_to_the_trainer(monkeypatch, module, make):
    seen = []

    def fake_fit(model, loss_fn, train, val=None, config=TrainConfig(), **kw):
        seen.append(config.precision)
        raise _Stop

    monkeypatch.setattr(base, "fit", fake_fit)  # every task trains through Task.train
    with pytest.raises(_Stop):
        make()
    assert seen == ["bf16"]


def test_a_small_product_skips_bfloat16_and_a_large_one_keeps_it():
    torch.manual_seed(0)
    small, large = nn.Linear(64, 10), nn.Linear(256, 4000)  # 640 and ~1M multiply-adds a row
    x_small, x_large = torch.randn(2, 64), torch.randn(1, 256)
    with autocast("bf16", CPU):
        out_small, out_large = linear_at_best_precision(small, x_small), linear_at_best_precision(large, x_large)
        bf16_in = linear_at_best_precision(small, x_small.bfloat16())  # a bfloat16 input is widened
    assert out_small.dtype == torch.float32 and torch.equal(out_small, small(x_small))
    assert bf16_in.dtype == torch.float32
    assert out_large.dtype == torch.bfloat16  # big enough for bfloat16 to pay: autocast as usual
    assert torch.equal(linear_at_best_precision(small, x_small), small(x_small))  # no autocast: the layer

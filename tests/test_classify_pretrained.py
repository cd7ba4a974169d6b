"""Transfer from a language model to the classifier (ULMFiT): the trainer's slanted schedule,
discriminative rates and gradual unfreezing; a classifier seeded from a text generator; refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from rnnkit import SequenceClassifier, TextGenerator
from rnnkit.cli import app
from rnnkit.errors import RnnkitError
from rnnkit.tasks.classify import SequenceClassifierConfig
from rnnkit.training import TrainConfig, fit, layer_groups_at, lr_at
from test_text import toy_reviews

runner = CliRunner()
QUIET = dict(progress=False, device="cpu")


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# ------------------------------------------------------------------------------ the trainer


def test_slanted_schedule_rises_for_a_tenth_of_the_run_then_falls_to_a_32nd() -> None:
    config = TrainConfig(lr=3.2, schedule="slanted", **QUIET)
    rates = [lr_at(step, config, 100) for step in range(101)]
    assert rates[0] == pytest.approx(0.1) and rates[10] == pytest.approx(3.2) and rates[100] == pytest.approx(0.1)
    assert max(rates) == rates[10]
    assert all(a < b for a, b in zip(rates[:10], rates[1:11])) and all(a > b for a, b in zip(rates[10:], rates[11:]))


def test_gradual_unfreezing_adds_one_group_from_the_top_every_n_epochs() -> None:
    every_two = TrainConfig(unfreeze_every=2, **QUIET)
    assert [layer_groups_at(epoch, 3, every_two) for epoch in range(7)] == [1, 1, 2, 2, 3, 3, 3]
    assert [layer_groups_at(epoch, 3, TrainConfig(**QUIET)) for epoch in range(3)] == [3, 3, 3]


def _stack() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))


def _regression() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    return x, x.sum(1, keepdim=True)


def _changed(model: nn.Sequential, before: dict[str, torch.Tensor]) -> list[bool]:
    return [not torch.equal(model[i].weight, before[f"{i}.weight"]) for i in (0, 2, 4)]


@pytest.mark.parametrize("epochs, trained", [(1, [False, False, True]), (2, [False, True, True]),
                                             (3, [True, True, True])])
def test_fit_unfreezes_the_layer_groups_on_schedule(epochs: int, trained: list[bool]) -> None:
    model = _stack()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = lambda m, batch, state: (nn.functional.mse_loss(m(batch[0]), batch[1]), None)  # noqa: E731
    groups = [list(model[0].parameters()), list(model[2].parameters())]  # the head joins the top group
    config = TrainConfig(epochs=epochs, batch_size=8, unfreeze_every=1, schedule="constant", **QUIET)
    fit(model, loss, _regression(), config=config, layer_groups=groups + [[]])
    assert _changed(model, before) == trained
    assert all(p.requires_grad for p in model.parameters())  # trainable again afterwards


def test_layer_lr_decay_divides_the_rate_of_each_group_below_the_top() -> None:
    model = _stack()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = lambda m, batch, state: (nn.functional.mse_loss(m(batch[0]), batch[1]), None)  # noqa: E731
    config = TrainConfig(max_steps=1, batch_size=32, lr=1e-2, layer_lr_decay=4.0, weight_decay=0.0,
                         schedule="constant", clip_norm=None, **QUIET)
    fit(model, loss, _regression(), config=config, layer_groups=[list(model[0].parameters()),
                                                                  list(model[2].parameters()), []])
    # Adam's first step moves every weight with a gradient by about the rate itself.
    steps = [(model[i].weight - before[f"{i}.weight"]).abs().max().item() for i in (0, 2, 4)]
    assert steps == pytest.approx([1e-2 / 16, 1e-2 / 4, 1e-2], rel=1e-3)


# ------------------------------------------------------------------------------ the classifier


@pytest.fixture(scope="module")
def word_lm() -> TextGenerator:
    texts, _ = toy_reviews(96)
    torch.manual_seed(0)
    return TextGenerator(tokenizer="word", hidden_size=16, seq_len=8, batch_size=4, max_steps=20, minutes=None,
                         progress=False).fit(" . ".join(texts))


def _encoder(clf: SequenceClassifier) -> dict[str, torch.Tensor]:
    body = clf.model.members[0].body
    return {**{f"embedding.{k}": v for k, v in body.embedding.state_dict().items()},
            **{f"recurrent.{k}": v for k, v in body.recurrent.state_dict().items()}}


def test_a_classifier_seeded_from_a_language_model_starts_from_its_weights(word_lm: TextGenerator) -> None:
    # Unfrozen only after 1000 epochs: the encoder stays as the language model left it, the head learns.
    config = SequenceClassifierConfig.matching(word_lm, epochs=2, minutes=None, unfreeze_every=1000, progress=False,
                                               min_count=1, batch_size=16)
    assert (config.cell, config.hidden_size, config.embedding_size, config.bidirectional) == ("lstm", 16, 16, False)
    clf = SequenceClassifier(config).fit(*toy_reviews(), pretrained=word_lm)
    lm_weights = {**{f"embedding.{k}": v for k, v in word_lm.model.embedding.state_dict().items()},
                  **{f"recurrent.{k}": v for k, v in word_lm.model.recurrent.state_dict().items()}}
    encoder = _encoder(clf)
    assert encoder.keys() == lm_weights.keys()
    assert all(torch.equal(encoder[k], lm_weights[k]) for k in lm_weights)
    assert clf.tokenizer.tokens == word_lm.tokenizer.tokens
    # Unfrozen from the start, the same fit moves the encoder away from the language model's weights.
    thawed = SequenceClassifier(SequenceClassifierConfig(**{**config.to_dict(), "unfreeze_every": None}))
    thawed.fit(*toy_reviews(), pretrained=word_lm)
    assert not torch.equal(_encoder(thawed)["recurrent.cells.0.weight_hh"], lm_weights["recurrent.cells.0.weight_hh"])


def test_pretrain_minutes_fine_tunes_a_language_model_on_the_texts_first(tmp_path: Path) -> None:
    clf = SequenceClassifier(embedding_size=16, hidden_size=16, bidirectional=False, pooling="concat", min_count=1,
                             epochs=3, minutes=None, batch_size=16, pretrain_minutes=0.02, progress=False)
    clf.fit(*toy_reviews(), unlabelled=["the film was really great", "awful plot and cast"] * 4)
    assert clf.metrics["pretrain"]["steps"] > 0 and clf.metrics["pretrain"]["texts"] > 38
    loaded = SequenceClassifier.load(clf.save(tmp_path / "clf"))  # an ordinary classifier bundle
    assert loaded.predict(["great"]) == clf.predict(["great"])
    with pytest.raises(RnnkitError, match="reads left to right: set bidirectional=False"):
        SequenceClassifier(pretrain_minutes=1.0)


def test_a_language_model_of_other_sizes_or_another_tokenizer_is_refused(word_lm: TextGenerator) -> None:
    with pytest.raises(RnnkitError, match=r"does not fit this model: hidden_size 128 \(the language model's: 16\)"):
        SequenceClassifier(bidirectional=False, embedding_size=16).fit(*toy_reviews(), pretrained=word_lm)
    with pytest.raises(RnnkitError, match=r"tokenizer 'char' \(the language model's: 'word'\)"):
        SequenceClassifierConfig.matching(word_lm, tokenizer="char")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, word_lm: TextGenerator) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pretrained")
    texts, labels = toy_reviews()
    import pandas as pd

    pd.DataFrame({"review": texts, "label": labels}).to_csv(root / "reviews.csv", index=False)
    clf = SequenceClassifier(embedding_size=8, hidden_size=8, epochs=1, minutes=None, progress=False).fit(texts, labels)
    return {"lm": word_lm.save(root / "lm"), "clf": clf.save(root / "clf"), "data": root / "reviews.csv",
            "out": root / "out"}


def _train(bundles: dict[str, Path], *options: str):
    return runner.invoke(app, ["classify", "train", str(bundles["data"]), "--text-col", "review", "--label-col",
                               "label", "--out", str(bundles["out"]), "--epochs", "2", "--no-progress", *options])


def test_classify_train_takes_a_pretrained_language_model(bundles: dict[str, Path]) -> None:
    result = _train(bundles, "--pretrained", str(bundles["lm"]), "--pretrain-minutes", "0.02")
    assert result.exit_code == 0, result.output
    clf = SequenceClassifier.load(bundles["out"])
    assert (clf.config.hidden_size, clf.config.bidirectional) == (16, False)
    assert clf.metrics["pretrained"] == str(bundles["lm"]) and clf.metrics["pretrain"]["steps"] > 0


@pytest.mark.parametrize("options, message", [
    (["--pretrained", "{clf}"], "holds a 'sequence_classifier' model, not a language model; pass a bundle written "
                                "by `rnnkit textgen train`"),
    (["--pretrained", "{lm}", "--hidden-size", "32"], "does not fit this model: hidden_size 32 (the language "
                                                       "model's: 16); leave those options unset"),
    (["--pretrained", "{lm}", "--tokenizer", "char"], "tokenizer 'char' (the language model's: 'word')"),
    (["--pretrained", "{lm}", "--bidirectional"], "bidirectional True (the language model's: False)"),
])
def test_classify_train_refuses_a_bundle_that_does_not_fit_in_one_line(bundles: dict[str, Path], options: list[str],
                                                                       message: str) -> None:
    result = _train(bundles, *[o.format(**{k: str(v) for k, v in bundles.items()}) for o in options])
    assert result.exit_code != 0 and message in _one_error_line(result.stderr)

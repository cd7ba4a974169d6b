"""The classifier's wide part (rnnkit.tasks.ngrams.NgramBag): its sum, its masking of padding,
old bundles without it, and what it lets the classifier learn."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import rnnkit
from rnnkit.tasks.classify import SequenceClassifier, SequenceClassifierConfig, classifier_model, pad_ids
from rnnkit.errors import RnnkitError
from rnnkit.tasks.ngrams import NgramBag


def test_the_bag_sums_word_and_pair_rows_over_the_root_of_their_count() -> None:
    bag = NgramBag(vocab_size=10, buckets=7, num_classes=2)
    torch.nn.init.normal_(bag.weight.weight)
    w = bag.weight.weight.detach()
    text = [3, 5, 4]
    pairs = [10 + (a * NgramBag.PRIME + b) % 7 for a, b in zip(text, text[1:])]
    expected = (w[text].sum(0) + w[pairs].sum(0)) / math.sqrt(len(text) + len(pairs))
    torch.testing.assert_close(bag(torch.tensor([text]))[0], expected)


def test_padding_never_reaches_the_bag_so_a_text_scores_the_same_in_any_batch() -> None:
    config = SequenceClassifierConfig(embedding_size=8, hidden_size=8, ngram_buckets=64)
    model = classifier_model(config, 20, 3).eval()
    for member in model.members:
        torch.nn.init.normal_(member.ngrams.weight.weight)  # zeros at the start would hide a leak
    sequences = [[5, 6, 7, 8, 9], [4, 5], [7], [7, 8, 9]]
    ids, lengths = pad_ids(sequences, 10)
    alone = torch.cat([model(torch.tensor([s])) for s in sequences])
    torch.testing.assert_close(model(ids, lengths=lengths), alone, atol=1e-5, rtol=1e-5)


def test_the_bag_starts_at_zero_so_the_classifier_starts_as_its_recurrent_part() -> None:
    def model(buckets: int) -> torch.nn.Module:
        torch.manual_seed(0)
        config = SequenceClassifierConfig(embedding_size=8, hidden_size=8, ngram_buckets=buckets, ensemble=1)
        return classifier_model(config, 20, 3).eval()

    wide, deep = model(64), model(0)
    ids, lengths = pad_ids([[5, 6, 7], [4]], 10)
    torch.testing.assert_close(wide(ids, lengths=lengths), deep(ids, lengths=lengths))


def test_a_bundle_saved_before_the_bag_loads_without_it(tmp_path: Path) -> None:
    texts = ["good film", "bad film", "good plot", "bad plot"] * 6
    labels = ["pos", "neg", "pos", "neg"] * 6
    clf = SequenceClassifier(embedding_size=8, hidden_size=8, ngram_buckets=0, epochs=1, minutes=None,
                             progress=False, min_count=1).fit(texts, labels)
    path = clf.save(tmp_path / "old.rnnkit")
    written = json.loads((path / "config.json").read_text())
    del written["config"]["ngram_buckets"]  # as rnnkit wrote it before the bag
    (path / "config.json").write_text(json.dumps(written))
    again = rnnkit.load(path)
    assert again.config.ngram_buckets == 0 and again.model.members[0].ngrams is None
    np.testing.assert_allclose(again.probabilities(texts), clf.probabilities(texts), rtol=1e-6)


@pytest.mark.parametrize("buckets", [0, 1024])
def test_word_order_is_learned_with_the_bag_alone_in_a_few_epochs(buckets: int) -> None:
    # "not good" and "good not" hold the same words: only the pair tells them apart, and a linear
    # model over words alone cannot. The recurrent part is starved (one unit, one epoch's worth of
    # steps), so what separates the classes is the bag's pairs.
    rng = np.random.default_rng(0)
    filler = ["the", "film", "was", "plot", "acting", "so"]
    texts, labels = [], []
    for i in range(240):
        words = list(rng.choice(filler, 3))
        first, label = (["not", "good"], "neg") if i % 2 else (["good", "not"], "pos")
        at = int(rng.integers(0, 4))
        texts.append(" ".join(words[:at] + first + words[at:]))
        labels.append(label)
    clf = SequenceClassifier(embedding_size=2, hidden_size=1, bidirectional=False, pooling="last",
                             ngram_buckets=buckets, ensemble=1, dropout=0.0, lr=5e-2, batch_size=16, epochs=6, minutes=None,
                             patience=None, progress=False, min_count=1, val_fraction=0.2, seed=0).fit(texts, labels)
    accuracy = clf.evaluate(texts, labels)["accuracy"]
    assert accuracy > 0.95 if buckets else accuracy < 0.9


@pytest.mark.parametrize("buckets", [-1, 2.5, True])
def test_a_bad_bucket_count_is_refused_in_one_line(buckets) -> None:
    with pytest.raises(RnnkitError, match="ngram_buckets must be 0 .no word bag. or a positive integer"):
        SequenceClassifierConfig(ngram_buckets=buckets)

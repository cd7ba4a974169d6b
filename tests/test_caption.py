"""Image captioning: composed digit data, number words, a captioner that learns, bundles, bad input, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import rnnkit
from rnnkit.cli import app
from rnnkit.data.digits import (HEIGHT, MAX_WIDTH, compose, digit_composites, load_digit_images, number_to_words,
                                split_indices)
from rnnkit.errors import DataError
from rnnkit.tasks.caption import Captioner, CaptionerConfig


@pytest.fixture(scope="module")
def digits():
    return load_digit_images()


@pytest.mark.parametrize("number, words", [
    (0, "zero"), (7, "seven"), (10, "ten"), (13, "thirteen"), (19, "nineteen"), (20, "twenty"), (61, "sixty one"),
    (100, "one hundred"), (105, "one hundred and five"), (110, "one hundred and ten"),
    (342, "three hundred and forty two"), (1000, "one thousand"), (1010, "one thousand and ten"),
    (1200, "one thousand two hundred"), (2019, "two thousand and nineteen"), (7005, "seven thousand and five"),
    (9999, "nine thousand nine hundred and ninety nine")])
def test_number_to_words(number, words):
    assert number_to_words(number) == words


def test_number_to_words_refuses_what_it_cannot_say():
    for bad in (-1, 10_000, 3.0, True):
        with pytest.raises(DataError, match="0..9999"):
            number_to_words(bad)


def test_composites_are_real_digits_side_by_side_and_splits_share_no_source(digits):
    images, labels = digits
    splits = split_indices(len(images))
    assert sum(map(len, splits.values())) == len(images) == 1797
    assert not set(splits["train"]) & set(splits["test"]) and not set(splits["validation"]) & set(splits["test"])
    for name in ("train", "test"):
        data = digit_composites(name, 200, data=digits)
        used = {i for sources in data.sources for i in sources}
        assert used <= set(splits[name])
        for image, number, caption, sources, places in zip(data.images, data.numbers, data.captions, data.sources,
                                                           data.offsets):
            assert 10 <= number <= 9999 and caption == number_to_words(number)
            assert image.dtype == np.float32 and image.shape[0] == HEIGHT and 16 <= image.shape[1] <= MAX_WIDTH
            assert [int(labels[s]) for s in sources] == [int(d) for d in str(number)]
            for source, (top, left) in zip(sources, places):  # each digit is a load_digits image, placed as said
                np.testing.assert_array_equal(image[top:top + 8, left:left + 8], images[source])
    assert len({len(str(n)) for n in data.numbers}) == 3  # 2, 3 and 4 digits


def test_compose_refuses_bad_digit_counts(digits):
    with pytest.raises(DataError, match="min_digits"):
        compose(*digits, np.arange(100), 5, min_digits=3, max_digits=2)


@pytest.fixture(scope="module")
def trained(digits):
    """Two-digit numbers, a small model, a fixed number of steps (one thread: module fixtures run
    before conftest's per-test setting)."""
    torch.set_num_threads(1)
    images, labels = digits
    splits = split_indices(len(images))
    train = compose(images, labels, splits["train"], 1500, seed=1, max_digits=2)
    test = compose(images, labels, splits["test"], 150, seed=2, max_digits=2)
    config = CaptionerConfig(hidden_size=64, embedding_size=32, channels=8, max_steps=800, minutes=None,
                             progress=False, lr=1e-2, seed=0)
    return Captioner(config).fit(train.images, train.captions), test


def test_a_small_captioner_learns_two_digit_numbers(trained, digits):
    captioner, test = trained
    scores = captioner.evaluate(test.images, test.captions)
    torch.manual_seed(0)
    untrained = Captioner(captioner.config)
    untrained.tokenizer, untrained.model = captioner.tokenizer, captioner.build_model().eval()
    before = untrained.evaluate(test.images, test.captions)
    assert before["exact"] < 0.05  # ~90 two-digit numbers: guessing one is right 1 time in 90
    assert scores["exact"] > 0.4, (scores, before)  # exact only: BLEU's 4-grams need longer captions
    beam = captioner.evaluate(test.images, test.captions, beam=3)
    assert beam["exact"] > 0.4


def test_predict_json_answers_with_attention_per_word_and_bundles_round_trip(trained, tmp_path):
    captioner, test = trained
    request = {"image": test.images[0].tolist()}
    answer = captioner.predict_checked(request)
    assert answer["words"][-1] == "<eos>" and " ".join(answer["words"][:-1]) == answer["caption"]
    weights = np.array(answer["attention"])
    assert weights.shape == (len(answer["words"]), test.images[0].shape[1])
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-4)
    captioner.save(tmp_path / "cap.rnnkit")
    loaded = rnnkit.load(tmp_path / "cap.rnnkit")
    assert isinstance(loaded, Captioner)
    assert loaded.predict_checked({**request, "beam": 2}) == captioner.predict_checked({**request, "beam": 2})
    assert loaded.predict_checked(request) == answer
    assert loaded.config == captioner.config


def test_a_served_captioner_is_listed_and_answers_over_http(trained):
    from fastapi.testclient import TestClient

    from rnnkit.server import create_app

    captioner, test = trained
    client = TestClient(create_app({"cap": captioner}))
    listed = client.get("/v1/models")
    assert listed.status_code == 200 and listed.json()["models"][0]["task"] == "caption"
    answer = client.post("/v1/cap/predict", json={"image": test.images[0].tolist()})
    assert answer.status_code == 200 and answer.json()["caption"] == captioner.caption(test.images[0])


@pytest.mark.parametrize("request_, message", [
    ({}, "image"),
    ({"image": [[1.0] * 20] * 9}, "must be 10 rows of 1..144 pixels, got shape (9, 20)"),
    ({"image": [[1.0] * 20] * 9 + [[1.0] * 19]}, "all rows as wide"),
    ({"image": [[float("nan")] * 20] * 10}, "got nan"),
    ({"image": [[17.0] * 20] * 10}, "outside 0..16"),
    ({"image": [["a"] * 20] * 10}, "must be number"),
    ({"image": [[1.0] * 20] * 10, "beam": 0}, "beam"),
])
def test_bad_requests_are_refused_in_one_line(trained, request_, message):
    captioner, _ = trained
    with pytest.raises(DataError) as caught:
        captioner.predict_checked(request_)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_describe_refuses_nan_and_ragged_arrays_in_one_line(trained):
    captioner, test = trained
    image = test.images[0].copy()
    image[3, 4] = np.nan
    with pytest.raises(DataError, match="NaN or infinite pixels"):
        captioner.describe_images([image])
    with pytest.raises(DataError, match="all rows as wide"):
        captioner.caption([[1.0, 2.0], [1.0]])


def test_cli_dataset_train_and_describe(tmp_path, digits):
    runner = CliRunner()
    done = runner.invoke(app, ["caption", "dataset", "--examples", "2"])
    assert done.exit_code == 0, done.output
    assert "1797 real 8x8 digit images" in done.output and "train 1257" in done.output
    bundle = tmp_path / "cap.rnnkit"
    done = runner.invoke(app, ["caption", "train", "--out", str(bundle), "--max-steps", "3", "--composites", "60",
                               "--test-count", "5", "--no-progress", "--hidden-size", "32"])
    assert done.exit_code == 0, done.output
    assert "test (5 composites of held-out digits): exact" in done.output
    assert "exact" in json.loads((bundle / "metrics.json").read_text())["test"]
    done = runner.invoke(app, ["caption", "describe", str(bundle), "--examples", "2", "--plot",
                               str(tmp_path / "c.png"), "--beam", "2"])
    assert done.exit_code == 0, done.output
    assert done.output.count("(reference: ") == 2 and (tmp_path / "c.png").stat().st_size > 5000
    image = tmp_path / "image.json"
    image.write_text(json.dumps({"image": digit_composites("test", 1, data=digits).images[0].tolist()}))
    done = runner.invoke(app, ["caption", "describe", str(bundle), "--image", str(image)])
    assert done.exit_code == 0 and done.output.count("\n") == 1, done.output
    image.write_text("[[1, 2]]")
    done = runner.invoke(app, ["caption", "describe", str(bundle), "--image", str(image)])
    assert done.exit_code == 2 and "error: image 0 must be 10 rows" in done.output
    done = runner.invoke(app, ["predict", str(bundle), '{"image": [[1, 2]]}'])
    assert done.exit_code == 2 and "must be 10 rows" in done.output


def test_the_shared_encoder_decoder_options_reach_the_captioner(digits, tmp_path):
    """The captioner is an EncoderDecoder: its options (layers, direction, input feeding, scheduled
    sampling) shape its model, and a config saved before it had them reads as their defaults."""
    images, labels = digits
    data = compose(images, labels, split_indices(len(images))["train"], 30, seed=3, max_digits=2)
    config = CaptionerConfig(hidden_size=16, embedding_size=8, channels=2, encoder_layers=2, bidirectional=False,
                             input_feeding=True, sampling_rate=0.2, max_steps=2, minutes=None, progress=False)
    captioner = Captioner(config).fit(data.images, data.captions)
    assert captioner.model.encoder.num_layers == 2 and captioner.model.encoder.num_directions == 1
    answer = captioner.predict_checked({"image": data.images[0].tolist()})
    assert rnnkit.load(captioner.save(tmp_path / "cap.rnnkit")).predict_checked(
        {"image": data.images[0].tolist()}) == answer
    shared = ("encoder_layers", "decoder_layers", "bidirectional", "input_feeding", "sampling_rate", "label_smoothing")
    older = {k: v for k, v in CaptionerConfig().to_dict().items() if k not in shared}
    assert CaptionerConfig.from_dict(older) == CaptionerConfig()

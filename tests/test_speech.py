"""Speech recognition on synthetic espeak-ng speech: features, CTC decoding, a model that learns
words in voices it never heard, bundles, streaming, bad input and the CLI."""

from __future__ import annotations

import base64
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import rnnkit
from rnnkit import metrics
from rnnkit.cli import app
from rnnkit.data import speech as data
from rnnkit.errors import DataError, RnnkitError
from rnnkit.tasks.speech import ALPHABET, SpeechRecognizer, encode_text, greedy_decode

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason=f"espeak-ng is not installed: {data.ESPEAK_INSTALL}")
WORDS = ("yes", "no", "stop")


def test_log_mel_shapes_and_filterbank():
    features = data.Features()
    audio = torch.randn(data.SAMPLE_RATE) * 0.1  # one second
    mel = features(audio)
    assert mel.shape == (features.frames(len(audio)), 40) and mel.shape[0] == 1 + (22050 - 512) // 220
    assert torch.isfinite(mel).all()
    assert features(torch.zeros(100)).shape == (1, 40)  # shorter than a window: one frame
    bank = data.mel_filterbank(40, 512, data.SAMPLE_RATE)
    assert bank.shape == (257, 40) and (bank >= 0).all() and (bank.max(0).values > 0.5).all()
    centres = bank.argmax(0)
    assert (centres[1:] >= centres[:-1]).all()  # bands rise in frequency


def test_frames_never_look_ahead():
    """A frame reads only samples before its end: the features of a prefix are a prefix of the features."""
    features, audio = data.Features(), torch.randn(8000)
    whole, prefix = features(audio), features(audio[:5000])
    torch.testing.assert_close(whole[:len(prefix)], prefix)


def test_resample():
    tone = torch.sin(torch.arange(44100) * 2 * np.pi * 440 / 44100)
    assert len(data.resample(tone, 44100)) == 22050
    assert len(data.resample(tone[:16000], 16000)) == 22050
    assert data.resample(tone, 22050) is tone


def test_greedy_ctc_decode_merges_repeats_and_drops_blanks():
    a, b = ALPHABET.index("a") + 1, ALPHABET.index("b") + 1
    assert [s for s, _ in greedy_decode([0, a, a, 0, a, b, b, 0])] == [a, a, b]
    assert [step for _, step in greedy_decode([0, a, a, 0, a, b, b, 0])] == [1, 4, 5]
    assert greedy_decode([a, a], previous=a) == []  # a repeat across a chunk boundary is merged
    assert encode_text("Don't") == [ALPHABET.index(c) + 1 for c in "don't"]
    with pytest.raises(DataError, match="cannot write"):
        encode_text("route 66")


def test_error_rates():
    assert metrics.edit_distance("kitten", "sitting") == 3
    assert metrics.error_rate(["one two"], ["one two"]) == 0.0
    assert metrics.error_rate(["one too"], ["one two"], "word") == 0.5
    assert metrics.error_rate(["", "ab"], ["ab", "ab"], "char") == 0.5  # corpus totals, not a mean of rates


def test_missing_espeak_is_one_line(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(DataError, match="apt-get install -y espeak-ng"):
        data.synthesize("one", "en-gb")


def _words_corpus(variants=("m1", "m2", "m3", "f1", "f2", "m6")) -> data.Corpus:
    """Three words in five training voices and one held-out voice (m6), two speeds each."""
    rows = [(w, f"en-gb+{v}", s, "val" if v == "m6" else "train") for v in variants for w in WORDS for s in (140, 180)]
    return data.Corpus([data.synthesize(w, voice, s) for w, voice, s, _ in rows], [r[0] for r in rows],
                       [r[1] for r in rows], [r[3] for r in rows])


@pytest.fixture(scope="module")
def corpus():
    if shutil.which("espeak-ng") is None:
        pytest.skip(f"espeak-ng is not installed: {data.ESPEAK_INSTALL}")
    return _words_corpus()


@pytest.fixture(scope="module")
def trained(corpus):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before conftest's one-thread fixture: two spin-wait here
    options = dict(max_steps=150, minutes=None, progress=False, hidden_size=48, num_layers=1, lr=1e-2,
                   batch_size=8, dropout=0.0)
    try:
        return SpeechRecognizer(**options).fit(corpus)
    finally:
        torch.set_num_threads(threads)


@needs_espeak
def test_synthesis_is_audio():
    audio = data.synthesize("seven", "en-gb+f2", 150)
    assert audio.dtype == np.float32 and 0.2 * data.SAMPLE_RATE < len(audio) < 2 * data.SAMPLE_RATE
    assert 0.05 < np.abs(audio).max() <= 1.0
    with pytest.raises(DataError, match="could not speak"):
        data.synthesize("one", "nosuchvoice")


@needs_espeak
def test_corpus_splits_are_speaker_disjoint_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNKIT_CACHE", str(tmp_path))
    corpus = data.spoken_corpus(1, accents=("en-gb", "en-us"))
    assert len(corpus) == 2 * len(data.SPLITS)
    voices = {s: {v for v, split in zip(corpus.speakers, corpus.splits) if split == s} for s in ("train", "val", "test")}
    assert not voices["train"] & voices["test"] and not voices["train"] & voices["val"]
    assert {v.split("+")[1] for v in voices["test"]} == {"m7", "f5"}
    again = data.spoken_corpus(1, accents=("en-gb", "en-us"))  # from the cache
    assert again.texts == corpus.texts and np.allclose(again.audio[3], corpus.audio[3], atol=1e-4)
    assert data.corpus_cache_path(data.plan(1, accents=("en-gb", "en-us"))).exists()


def test_an_untrained_model_cannot_transcribe(corpus):
    untrained = SpeechRecognizer(max_steps=1, minutes=None, progress=False, hidden_size=48, num_layers=1, lr=1e-9)
    untrained.fit(corpus)
    assert untrained.evaluate(corpus.subset("val"))["cer"] > 0.6


def test_learns_words_in_a_voice_it_never_heard(trained, corpus):
    val = corpus.subset("val")
    assert trained.evaluate(val)["cer"] < 0.2
    assert trained.metrics["val_cer"] < 0.2 and trained.metrics["steps"] == 150


def test_save_load_roundtrip_and_json(trained, corpus, tmp_path):
    val = corpus.subset("val")
    loaded = rnnkit.load(trained.save(tmp_path / "asr.rnnkit"))
    assert isinstance(loaded, SpeechRecognizer)
    assert loaded.transcribe(val.audio) == trained.transcribe(val.audio)
    answer = loaded.predict_checked({"audio": val.audio[0].tolist(), "sample_rate": data.SAMPLE_RATE})
    assert answer["text"] == trained.transcribe(val.audio[:1])[0]
    for word in answer["words"]:
        assert 0 <= word["start"] < word["end"] <= len(val.audio[0]) / data.SAMPLE_RATE + 0.1
    twice = np.repeat(val.audio[0], 2)  # the same audio at 44.1 kHz
    assert loaded.predict_checked({"audio": twice.tolist(), "sample_rate": 44100})["text"] == answer["text"]


@pytest.mark.parametrize("request_, message", [
    ({"audio": []}, "audio"),
    ({"audio": [0.0] * 100}, "too short"),
    ({"audio": [0.0, float("nan")] * 600}, "(?i)nan"),
    ({"audio": [0.5] * 2000, "sample_rate": 4000}, "sample_rate must be"),
    ({"audio": [300.0] * 2000}, r"\[-1, 1\]"),
    ({"audio": "UklGRg=="}, "audio"),
    ({}, "exactly one of wav"),
    ({"wav": "not base64!"}, "not base64"),
    ({"wav": "aGVsbG8gd29ybGQ="}, "not a WAV file"),
    ({"wav": "UklGRg==", "audio": [0.1] * 2000}, "exactly one of wav"),
])
def test_bad_requests_are_one_line(trained, request_, message):
    with pytest.raises(RnnkitError, match=message) as info:
        trained.predict_checked(request_)
    assert "\n" not in str(info.value)


def test_a_bidirectional_model_refuses_to_stream(trained):
    with pytest.raises(RnnkitError, match="bidirectional"):
        list(trained.stream_checked({"audio": [0.0] * 4000}))


def test_streaming_ends_with_the_whole_utterance_transcript(corpus):
    asr = SpeechRecognizer(max_steps=3, minutes=None, progress=False, hidden_size=16, num_layers=1,
                           bidirectional=False).fit(corpus)
    audio = corpus.subset("val").audio[0]
    pieces = list(asr.stream_checked({"audio": audio.tolist(), "chunk_ms": 100}))
    assert len(pieces) > 3 and [p["final"] for p in pieces] == [False] * (len(pieces) - 1) + [True]
    assert pieces[-1]["text"] == asr.predict_checked({"audio": audio.tolist()})["text"]


def test_cli_train_say_transcribe(tmp_path, monkeypatch):
    if shutil.which("espeak-ng") is None:
        pytest.skip(f"espeak-ng is not installed: {data.ESPEAK_INSTALL}")
    monkeypatch.setenv("RNNKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["speech", "train", "--out", "asr.rnnkit", "--per-speaker", "2", "--accents",
                                 "en-gb", "--max-steps", "3", "--hidden-size", "16", "--num-layers", "1",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "validation voices: CER" in result.stderr
    assert runner.invoke(app, ["speech", "say", "three one four", "--out", "t.wav"]).exit_code == 0
    audio, rate = data.read_wav(tmp_path / "t.wav")
    assert rate == data.SAMPLE_RATE and len(audio) > 10_000
    result = runner.invoke(app, ["speech", "transcribe", "asr.rnnkit", "t.wav", "--timing"])
    assert result.exit_code == 0 and result.stdout.count("\n") == 1, result.output
    (tmp_path / "bad.wav").write_bytes(b"not a wav at all")
    result = runner.invoke(app, ["speech", "transcribe", "asr.rnnkit", "bad.wav"])
    assert result.exit_code == 2 and "is not a WAV file" in result.stderr and "Traceback" not in result.output
    result = runner.invoke(app, ["info", "asr.rnnkit"])
    assert result.exit_code == 0 and "speech_recognizer" in result.stdout


def test_served_by_the_generic_server(corpus, tmp_path):
    """`rnnkit serve` needs nothing of its own for speech: predict and a streamed transcript over HTTP."""
    from fastapi.testclient import TestClient

    from rnnkit.server.app import create_app

    asr = SpeechRecognizer(max_steps=2, minutes=None, progress=False, hidden_size=16, num_layers=1,
                           bidirectional=False).fit(corpus)
    client = TestClient(create_app({"asr": asr.save(tmp_path / "asr")}))
    request = {"wav": base64.b64encode(data.wav_bytes(corpus.audio[0])).decode()}
    answer = client.post("/v1/asr/predict", json=request)
    assert answer.status_code == 200 and answer.json()["text"] == asr.predict_json(request)["text"]
    streamed = client.post("/v1/asr/generate", json={**request, "chunk_ms": 100})
    assert streamed.status_code == 200 and streamed.text.count('"final"') > 1
    bad = client.post("/v1/asr/predict", json={"wav": "aGVsbG8gd29ybGQ="})
    assert bad.status_code == 422 and "not a WAV file" in bad.json()["error"]

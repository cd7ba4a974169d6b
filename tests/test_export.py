"""``rnnkit export --format onnx``: onnxruntime answers as PyTorch does, at sizes the export never saw.

Each task trains a tiny model (seconds), exports it through the CLI, and the graphs run in
onnxruntime on batch sizes and lengths other than the traced example's (3 x 6), compared with
the task's own model in PyTorch (its fused path) within 1e-5. End to end, the sidecars' recipe
(tokenizer, scaler, specials, greedy loop) reproduces what the task's predict gives.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import rnnkit as rk
from rnnkit.bundle import save_bundle
from rnnkit.cli import app
from rnnkit.data.series import calendar_features, future_dates
from rnnkit.data.tokenizers import BOS, EOS, SPECIALS, tokenizer_from_dict
from rnnkit.export import export_bundle
from rnnkit.export.runtime import session

pytest.importorskip("onnxruntime")
runner = CliRunner()
TOL = dict(atol=1e-5, rtol=1e-5)

TEXTS = ["good film", "great movie", "bad film", "awful movie", "good great fun", "bad awful plot"] * 8
LABELS = ["pos", "pos", "neg", "neg", "pos", "neg"] * 8
PAIRS = [("one two", "uno dos"), ("two three", "dos tres"), ("three one", "tres uno"), ("one", "uno")] * 8


def export(bundle: Path, out: Path) -> dict:
    result = runner.invoke(app, ["export", str(bundle), "--format", "onnx", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads((out / "export.json").read_text())


def sidecar(out: Path, name: str) -> dict:
    return json.loads((out / f"{name}.json").read_text())


def run(out: Path, name: str, **inputs) -> list[np.ndarray]:
    return session(out / f"{name}.onnx").run(None, {k: np.asarray(v) for k, v in inputs.items()})


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("classify")
    clf = rk.SequenceClassifier(hidden_size=8, embedding_size=8, epochs=3, min_count=1, ensemble=2,
                                progress=False, minutes=None).fit(TEXTS, LABELS)
    clf.save(root / "clf.rnnkit")
    return clf, root / "onnx", export(root / "clf.rnnkit", root / "onnx")


@pytest.mark.slow
def test_classifier_matches_pytorch_at_other_sizes(classifier) -> None:
    clf, out, manifest = classifier
    assert manifest["model_type"] == "sequence_classifier" and manifest["graphs"] == ["classify"]
    ports = sidecar(out, "classify")
    assert [p["shape"] for p in ports["inputs"]] == [["batch", "time"], ["batch"]]
    for batch, steps in ((1, 3), (5, 17)):
        ids = torch.randint(len(SPECIALS), clf.tokenizer.vocab_size, (batch, steps))
        lengths = torch.tensor([steps - (i * 3) % steps for i in range(batch)])  # full, and shorter rows
        with torch.no_grad():
            expected = clf.model(ids, lengths=lengths).numpy()  # the fused, packed path
        (got,) = run(out, "classify", ids=ids, lengths=lengths)
        np.testing.assert_allclose(got, expected, **TOL)


@pytest.mark.slow
def test_classifier_sidecar_recipe_gives_predict_proba(classifier) -> None:
    clf, out, _ = classifier
    pre = json.loads((out / "preprocessing.json").read_text())
    tokenizer, classes = tokenizer_from_dict(pre["tokenizer"]), pre["classes"]
    texts = ["good fun", "awful awful film plot", "great"]
    rows = [tokenizer.encode(t) or [1] for t in texts]
    ids = np.zeros((len(rows), max(map(len, rows))), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
    (log_probs,) = run(out, "classify", ids=ids, lengths=np.array([len(r) for r in rows]))
    expected = clf.predict_proba(texts)
    np.testing.assert_allclose(np.exp(log_probs), expected[[f"prob_{c}" for c in classes]].to_numpy(), **TOL)
    assert [classes[i] for i in log_probs.argmax(1)] == expected["label"].tolist()


@pytest.fixture(scope="module")
def language_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("textgen")
    lm = rk.TextGenerator(cell="gru", hidden_size=16, num_layers=2, tokenizer="char", seq_len=16, epochs=2,
                          progress=False, minutes=None).fit("the cat sat on the mat.\n" * 40)
    lm.save(root / "lm.rnnkit")
    return lm, root / "onnx", export(root / "lm.rnnkit", root / "onnx")


@pytest.mark.slow
def test_lm_step_carries_the_state_as_pytorch_does(language_model) -> None:
    lm, out, manifest = language_model
    assert manifest["graphs"] == ["lm_step"]
    assert [p["name"] for p in sidecar(out, "lm_step")["inputs"]] == ["token", "h"]  # a GRU: no cell state
    ids = torch.randint(len(SPECIALS), lm.tokenizer.vocab_size, (4, 9))  # batch 4, 9 steps
    with torch.no_grad():
        logits, h = lm.model(ids)  # the whole sequence at once, fused
    state = np.zeros((2, 4, 16), dtype=np.float32)
    sess = session(out / "lm_step.onnx")
    for t in range(ids.size(1)):
        step_logits, state = sess.run(None, {"token": ids[:, t].numpy(), "h": state})
        np.testing.assert_allclose(step_logits, logits[:, t].numpy(), **TOL)
    np.testing.assert_allclose(state, h.numpy(), **TOL)


@pytest.mark.slow
def test_lm_step_greedy_generation_matches_generate(language_model) -> None:
    lm, out, _ = language_model
    tokenizer = tokenizer_from_dict(json.loads((out / "preprocessing.json").read_text())["tokenizer"])
    sess, state, produced = session(out / "lm_step.onnx"), np.zeros((2, 1, 16), dtype=np.float32), []
    for token in tokenizer.encode("the c"):
        logits, state = sess.run(None, {"token": np.array([token]), "h": state})
    for _ in range(12):
        logits[:, :len(SPECIALS)] = -np.inf  # the sidecar's rule: never a special token
        token = int(logits.argmax(1)[0])
        produced.append(token)
        logits, state = sess.run(None, {"token": np.array([token]), "h": state})
    assert "the c" + tokenizer.decode(produced) == lm.generate("the c", max_tokens=12, temperature=0)


@pytest.fixture(scope="module", params=[("lstm", "luong"), ("gru", "bahdanau")], ids=["lstm-luong", "gru-bahdanau"])
def translator(request, tmp_path_factory):
    cell, attention = request.param
    root = tmp_path_factory.mktemp(f"translate-{cell}")
    tr = rk.Translator(cell=cell, attention=attention, hidden_size=16, embedding_size=8, tokenizer="word",
                       epochs=20, progress=False, minutes=None).fit(PAIRS)
    tr.save(root / "tr.rnnkit")
    return tr, root / "onnx", export(root / "tr.rnnkit", root / "onnx")


@pytest.mark.slow
def test_translator_encoder_matches_pytorch_at_other_sizes(translator) -> None:
    tr, out, manifest = translator
    assert manifest["graphs"] == ["encoder", "decoder_step"]
    src = torch.randint(len(SPECIALS), tr.source_tokenizer.vocab_size, (5, 13))
    lengths = torch.tensor([13, 1, 7, 13, 4])
    with torch.no_grad():
        enc, state = tr.model.encode(src, lengths)
    parts = (state,) if isinstance(state, torch.Tensor) else state
    got = run(out, "encoder", src=src, src_lengths=lengths)
    for want, have in zip([*enc, *parts], got):
        if want.dtype == torch.bool:
            assert (want.numpy() == have).all()
        else:
            np.testing.assert_allclose(have, want.numpy(), **TOL)


@pytest.mark.slow
def test_translator_greedy_loop_matches_translate(translator) -> None:
    tr, out, _ = translator
    texts = ["one two", "three one", "two three one"]
    encoded = [tr.source_tokenizer.encode(t) for t in texts]
    src = np.zeros((3, max(map(len, encoded))), dtype=np.int64)
    for i, row in enumerate(encoded):
        src[i, :len(row)] = row
    enc_out = run(out, "encoder", src=src, src_lengths=np.array([len(r) for r in encoded]))
    names = [p["name"] for p in sidecar(out, "encoder")["outputs"]]
    values = dict(zip(names, enc_out))
    decoder = sidecar(out, "decoder_step")
    if "feed" in [p["name"] for p in decoder["inputs"]]:
        values["feed"] = np.zeros((3, 16), dtype=np.float32)
    values["y_prev"], tokens = np.full(3, BOS), []
    sess = session(out / "decoder_step.onnx")
    for _ in range(min(tr.config.max_length + 1, 2 * src.shape[1] + 10)):  # the sidecar's limit
        outputs = dict(zip([p["name"] for p in decoder["outputs"]],
                           sess.run(None, {p["name"]: values[p["name"]] for p in decoder["inputs"]})))
        values.update({k[:-4]: v for k, v in outputs.items() if k.endswith("_out")})
        values["y_prev"] = outputs["logits"].argmax(1)
        tokens.append(values["y_prev"])
        if all(EOS in column for column in np.stack(tokens, 1)):
            break
    rows = [list(row) for row in np.stack(tokens, 1)]
    ours = [tr.target_tokenizer.decode(row[:row.index(EOS)] if EOS in row else row) for row in rows]
    assert ours == tr.translate(texts)


@pytest.fixture(scope="module")
def forecaster(tmp_path_factory):
    root = tmp_path_factory.mktemp("forecast")
    dates = pd.date_range("2000-01-01", periods=72, freq="MS")
    frame = pd.concat([pd.DataFrame({"unique_id": uid, "ds": dates, "y": level + np.sin(np.arange(72) * np.pi / 6)})
                       for uid, level in (("a", 5.0), ("b", 50.0))])
    fc = rk.Forecaster(horizon=4, hidden_size=8, ensemble=2, max_steps=20, progress=False, minutes=None).fit(frame)
    fc.save(root / "fc.rnnkit")
    return fc, root / "onnx", export(root / "fc.rnnkit", root / "onnx")


@pytest.mark.slow
def test_forecaster_matches_pytorch_at_other_batch_sizes(forecaster) -> None:
    fc, out, manifest = forecaster
    past, known = fc.num_features
    lookback, horizon = fc.config.lookback, fc.config.horizon
    assert [p["shape"] for p in sidecar(out, "forecast")["inputs"]] == [
        ["batch", lookback], ["batch", lookback, past], ["batch", lookback + horizon, known]]
    for batch in (1, 7):
        y, p, k = torch.randn(batch, lookback), torch.randn(batch, lookback, past), torch.randn(batch, lookback + horizon, known)
        with torch.no_grad():
            expected = fc.model(y, p, k).numpy()  # the ensemble with cummax, on the fused path
        (got,) = run(out, "forecast", y=y, past=p, known=k)
        np.testing.assert_allclose(got, expected, **TOL)


@pytest.mark.slow
def test_forecaster_sidecar_recipe_gives_predict(forecaster) -> None:
    """Scale, window-normalise, add calendar features, run, undo both scalings: fc.predict()'s numbers."""
    fc, out, _ = forecaster
    pre, cfg = json.loads((out / "preprocessing.json").read_text()), fc.config
    expected = fc.predict()
    for uid, info in pre["series"].items():
        mean, std = pre["scaler"][uid]
        z = (np.asarray(info["y"][-cfg.lookback:]) - mean) / std
        level, scale = z[-1], max(np.std(z, ddof=1), 0.1)
        dates = pd.date_range(end=pd.Timestamp(info["last_ds"]), periods=cfg.lookback, freq=pre["freq"])
        dates = dates.append(future_dates(dates[-1], pre["freq"], cfg.horizon))
        (quantiles,) = run(out, "forecast", y=((z - level) / scale)[None].astype(np.float32),
                           past=np.ones((1, cfg.lookback, 1), dtype=np.float32),
                           known=calendar_features(dates, pre["freq"])[None].astype(np.float32))
        values = (quantiles[0] * scale + level) * std + mean  # (H, Q)
        rows = expected[expected["unique_id"] == uid]
        np.testing.assert_allclose(values, rows[["y_hat_q10", "y_hat", "y_hat_q90"]].to_numpy(), rtol=1e-4)


# ------------------------------------------------------------------ bad input

def _one_error_line(result) -> str:
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_export_refuses_a_path_that_is_not_a_bundle(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    result = runner.invoke(app, ["export", str(tmp_path / "notes"), "--out", str(tmp_path / "out")])
    assert "is not an rnnkit bundle" in _one_error_line(result)
    assert not (tmp_path / "out").exists()


def test_export_refuses_an_unknown_format(tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", str(tmp_path), "--format", "tflite", "--out", str(tmp_path / "out")])
    assert "unknown export format 'tflite'; choose one of: onnx" in _one_error_line(result)
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_model_it_cannot_export(tmp_path: Path) -> None:
    save_bundle(tmp_path / "lab.rnnkit", model_type="memory_lab", config={}, model=nn.Linear(2, 2))
    result = runner.invoke(app, ["export", str(tmp_path / "lab.rnnkit"), "--out", str(tmp_path / "out")])
    assert "a 'memory_lab' model cannot be exported to ONNX; the exportable ones are: forecaster" in _one_error_line(result)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_export_refuses_a_foreign_directory_and_replaces_its_own(language_model, tmp_path: Path) -> None:
    lm, _, _ = language_model
    lm.save(tmp_path / "lm.rnnkit")
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff\xd8")
    result = runner.invoke(app, ["export", str(tmp_path / "lm.rnnkit"), "--out", str(foreign)])
    assert "non-empty directory that is not an rnnkit export" in _one_error_line(result)
    assert sorted(p.name for p in foreign.iterdir()) == ["cat.jpg"]
    export(tmp_path / "lm.rnnkit", tmp_path / "onnx")
    (tmp_path / "onnx" / "stale.onnx").write_bytes(b"")
    export(tmp_path / "lm.rnnkit", tmp_path / "onnx")  # an earlier export is replaced whole
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == [
        "export.json", "lm_step.json", "lm_step.onnx", "preprocessing.json"]


@pytest.mark.slow
def test_a_failed_export_leaves_nothing_behind(language_model, tmp_path: Path, monkeypatch) -> None:
    lm, _, _ = language_model
    lm.save(tmp_path / "lm.rnnkit")

    def disagree(graph, path):
        raise rk.RnnkitError(f"the exported {graph.name} graph disagrees with PyTorch")
    monkeypatch.setattr("rnnkit.export.verify", disagree)
    with pytest.raises(rk.RnnkitError, match="disagrees"):
        export_bundle(tmp_path / "lm.rnnkit", tmp_path / "onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm.rnnkit"]  # no out, no temporary directory

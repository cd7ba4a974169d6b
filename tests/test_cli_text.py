"""`rnnkit textgen train | sample` and `rnnkit classify train | predict` through Typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from rnnkit.cli import app

runner = CliRunner()
SMALL = ["--minutes", "0.05", "--no-progress"]


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


@pytest.fixture(scope="module")
def lm_bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("textgen")
    corpus = root / "corpus.txt"
    corpus.write_text("the cat sat on the mat. the dog sat on the log.\n" * 30)
    out = root / "lm.rnnkit"
    result = runner.invoke(app, ["textgen", "train", str(corpus), "--out", str(out), "--hidden-size", "16",
                                 "--seq-len", "8", "--batch-size", "4", *SMALL])
    assert result.exit_code == 0, result.output
    return out


def test_textgen_train_writes_held_out_bits_per_character(lm_bundle: Path) -> None:
    metrics = json.loads((lm_bundle / "metrics.json").read_text())
    assert 0 < metrics["val_bpc"] < 8 and metrics["steps"] >= 1


def test_textgen_sample_prints_the_prime_and_its_continuation(lm_bundle: Path) -> None:
    args = ["textgen", "sample", str(lm_bundle), "--prime", "the c", "--max-tokens", "25", "--temperature", "0.7",
            "--seed", "1"]
    first, second = runner.invoke(app, args), runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert first.stdout == second.stdout and first.stdout.startswith("the c") and len(first.stdout) == 5 + 25 + 1
    many = runner.invoke(app, [*args, "--num-samples", "2"])
    assert many.exit_code == 0 and many.stdout.count("--- sample") == 2


def test_textgen_sample_in_bf16_steps_the_model_under_autocast(lm_bundle: Path, monkeypatch) -> None:
    from rnnkit.precision import native_bf16
    from rnnkit.topologies import ManyToMany

    if not native_bf16(torch.device("cpu")):
        pytest.skip("this CPU has no native bfloat16 (AVX-512 BF16 or AMX)")
    seen, step = set(), ManyToMany.step

    def recording_step(self, *args, **kwargs):
        seen.add(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(ManyToMany, "step", recording_step)
    args = ["textgen", "sample", str(lm_bundle), "--prime", "the c", "--max-tokens", "25", "--seed", "1"]
    result = runner.invoke(app, [*args, "--precision", "bf16"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("the c") and len(result.stdout) == 5 + 25 + 1
    assert seen == {torch.bfloat16}
    result = runner.invoke(app, [*args, "--precision", "half"])
    assert result.exit_code == 2
    assert _one_error_line(result.stderr) == "error: precision must be 'fp32' or 'bf16', got 'half'"


def test_textgen_errors_are_one_line(lm_bundle: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["textgen", "sample", str(lm_bundle), "--prime", "Ωmega"])
    assert result.exit_code == 2 and "the model never saw: 'Ω'" in _one_error_line(result.stderr)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("naïve text".encode("latin-1"))
    result = runner.invoke(app, ["textgen", "train", str(latin), "--out", str(tmp_path / "x"), *SMALL])
    assert result.exit_code == 2 and "is not valid utf-8 text" in _one_error_line(result.stderr)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    result = runner.invoke(app, ["textgen", "train", str(empty), "--out", str(tmp_path / "x"), *SMALL])
    assert result.exit_code == 2 and "is empty" in _one_error_line(result.stderr)
    result = runner.invoke(app, ["textgen", "train", str(latin), "--out", str(tmp_path / "x"), "--precision", "fp16"])
    assert result.exit_code == 2
    assert _one_error_line(result.stderr) == "error: TextGeneratorConfig.precision must be 'fp32' or 'bf16', got 'fp16'"
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def clf_bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("classify")
    rows = [(f"{word} {filler}", label) for word, label in (("great", "pos"), ("awful", "neg"))
            for filler in ("film", "plot", "cast", "day", "song", "car", "trip", "meal", "book", "show")]
    pd.DataFrame(rows, columns=["review", "sentiment"]).to_csv(root / "reviews.csv", index=False)
    out = root / "clf.rnnkit"
    result = runner.invoke(app, ["classify", "train", str(root / "reviews.csv"), "--text-col", "review",
                                 "--label-col", "sentiment", "--out", str(out), "--hidden-size", "8",
                                 "--plot", str(root / "confusion.png"), *SMALL])
    assert result.exit_code == 0, result.output
    assert (root / "confusion.png").stat().st_size > 0
    return out


def test_classify_predict_one_text_and_a_csv_in_order(clf_bundle: Path, tmp_path: Path) -> None:
    one = runner.invoke(app, ["classify", "predict", str(clf_bundle), "great film"])
    assert one.exit_code == 0, one.output
    assert one.stdout.split()[0] in ("neg", "pos") and "neg=" in one.stdout and "pos=" in one.stdout
    texts = pd.DataFrame({"text": ["awful day", "", "great song", "plot"]})
    texts.to_csv(tmp_path / "new.csv", index=False)
    result = runner.invoke(app, ["classify", "predict", str(clf_bundle), "--data", str(tmp_path / "new.csv"),
                                 "--out", str(tmp_path / "pred.csv")])
    assert result.exit_code == 0, result.output
    predictions = pd.read_csv(tmp_path / "pred.csv")
    assert list(predictions.columns) == ["label", "prob_neg", "prob_pos"] and len(predictions) == 4
    again = runner.invoke(app, ["classify", "predict", str(clf_bundle), "great song"])
    assert again.stdout.split()[0] == predictions["label"][2]  # row order kept


def test_classify_errors_are_one_line(clf_bundle: Path, tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_text("text,label\na,x\nb,y\n")
    result = runner.invoke(app, ["classify", "train", str(data), "--text-col", "review", "--label-col", "label",
                                 "--out", str(tmp_path / "m"), *SMALL])
    assert result.exit_code == 2
    assert "has no column 'review' (--text-col); its columns are 'text', 'label'" in _one_error_line(result.stderr)
    result = runner.invoke(app, ["classify", "predict", str(clf_bundle)])
    assert result.exit_code == 2 and "give either a TEXT" in _one_error_line(result.stderr)
    result = runner.invoke(app, ["textgen", "sample", str(clf_bundle)])
    assert result.exit_code == 2 and "not a 'text_generator' one" in _one_error_line(result.stderr)

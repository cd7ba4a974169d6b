"""`rnnkit textgen train | sample` and `rnnkit classify train | predict` through Typer's CliRunner."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
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


CORPUS = "the cat sat on the mat. the dog sat on the log.\n" * 30  # 15 symbols, each line the same


def _bits_per_symbol(text: str) -> tuple[float, float]:
    """log2(vocabulary), what a uniform guess costs, and the unigram entropy, what a model that
    learnt only how often each symbol occurs (and no context) can reach at best."""
    counts = np.unique(list(text), return_counts=True)[1]
    p = counts / counts.sum()
    return math.log2(len(counts)), float(-(p * np.log2(p)).sum())


@pytest.fixture(scope="module")
def lm_bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("textgen")
    corpus = root / "corpus.txt"
    corpus.write_text(CORPUS)
    out = root / "lm.rnnkit"
    # --minutes is a generous cap, not the budget: the 10 epochs (430 steps) end first, in about a
    # second on an idle machine and within the cap on a busy one (where the learning rate, which
    # decays over the budget's clock, is then a little lower).
    result = runner.invoke(app, ["textgen", "train", str(corpus), "--out", str(out), "--hidden-size", "16",
                                 "--seq-len", "8", "--batch-size", "4", "--lr", "0.02", "--minutes", "5",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    return out


def test_textgen_train_learns_the_corpus_and_writes_held_out_bits_per_character(lm_bundle: Path) -> None:
    """Held-out bits per character far below what a model without context can reach: uniform
    guessing costs log2(15) = 3.9 bits and symbol frequencies alone 3.5; the corpus repeats one
    line, so a model that reads the context gets most characters right."""
    metrics = json.loads((lm_bundle / "metrics.json").read_text())
    uniform, unigram = _bits_per_symbol(CORPUS)
    assert unigram < uniform < 4
    assert (metrics["stopped"], metrics["steps"]) == ("completed", 430)
    assert 0 < metrics["val_bpc"] < 1.0 < unigram / 3, metrics["val_bpc"]


def test_textgen_sample_prints_the_prime_and_its_continuation(lm_bundle: Path) -> None:
    args = ["textgen", "sample", str(lm_bundle), "--prime", "the c", "--max-tokens", "25", "--temperature", "0.7",
            "--seed", "1"]
    first, second = runner.invoke(app, args), runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert first.stdout == second.stdout and first.stdout.startswith("the c") and len(first.stdout) == 5 + 25 + 1
    many = runner.invoke(app, [*args, "--num-samples", "2"])
    assert many.exit_code == 0 and many.stdout.count("--- sample") == 2
    greedy = runner.invoke(app, [*args[:-4], "--max-tokens", "14", "--temperature", "0"])
    assert greedy.stdout == "the cat sat on the \n"  # the trained model continues the corpus


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


ASKED = ["great film", "awful day", "great song", "the plot was dull"]  # predicted below, never trained on


def _reviews(n: int = 400) -> pd.DataFrame:
    """Short reviews whose label is carried by one word (great/loved/superb or awful/hated/dull)
    among neutral ones; "great film" and "awful day", asked below, are never among them."""
    rng = np.random.default_rng(0)
    neutral = ["the", "film", "was", "really", "quite", "a", "plot", "and", "cast", "day", "song", "this", "show"]
    markers = {"pos": ["great", "loved", "superb"], "neg": ["awful", "hated", "dull"]}
    rows = []
    for i in range(n):
        label = ("pos", "neg")[i % 2]
        words = list(rng.choice(neutral, size=int(rng.integers(1, 7))))
        words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(markers[label])))
        rows.append((" ".join(words), label))
    frame = pd.DataFrame(rows, columns=["review", "sentiment"])
    return frame[~frame["review"].isin(ASKED)]


@pytest.fixture(scope="module")
def clf_bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("classify")
    _reviews().to_csv(root / "reviews.csv", index=False)
    out = root / "clf.rnnkit"
    # --minutes is a generous cap, not the budget: the 20 epochs (60 steps) or early stopping end first.
    result = runner.invoke(app, ["classify", "train", str(root / "reviews.csv"), "--text-col", "review",
                                 "--label-col", "sentiment", "--out", str(out), "--hidden-size", "16",
                                 "--plot", str(root / "confusion.png"), "--minutes", "5", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (root / "confusion.png").stat().st_size > 0
    return out


def test_classify_predicts_unseen_texts_right_one_text_and_a_csv_in_order(clf_bundle: Path, tmp_path: Path) -> None:
    one = runner.invoke(app, ["classify", "predict", str(clf_bundle), ASKED[0]])
    assert one.exit_code == 0, one.output
    label, neg, pos = re.fullmatch(r"(\w+)  \(neg=([\d.]+)  pos=([\d.]+)\)\n", one.stdout).groups()
    assert label == "pos" and float(pos) > 0.9 and float(neg) + float(pos) == pytest.approx(1, abs=2e-3)
    texts = pd.DataFrame({"text": [ASKED[1], "", ASKED[2], ASKED[3]]})
    texts.to_csv(tmp_path / "new.csv", index=False)
    result = runner.invoke(app, ["classify", "predict", str(clf_bundle), "--data", str(tmp_path / "new.csv"),
                                 "--out", str(tmp_path / "pred.csv")])
    assert result.exit_code == 0, result.output
    predictions = pd.read_csv(tmp_path / "pred.csv")
    assert list(predictions.columns) == ["label", "prob_neg", "prob_pos"] and len(predictions) == 4
    assert predictions["label"][[0, 2, 3]].tolist() == ["neg", "pos", "neg"]  # row order kept
    assert (predictions.loc[[0, 2, 3], ["prob_neg", "prob_pos"]].max(axis=1) > 0.9).all()
    np.testing.assert_allclose(predictions[["prob_neg", "prob_pos"]].sum(axis=1), 1, rtol=1e-5)


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

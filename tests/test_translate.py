"""Translation: pair files, dates and Bible data, the Translator estimator, bundles, the CLI."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import rnnkit
from rnnkit import metrics
from rnnkit.cli import app
from rnnkit.data import parallel
from rnnkit.data.parallel import bible_available, date_pairs, read_pairs
from rnnkit.errors import DataError, RnnkitError
from rnnkit.tasks.translate import Translator, TranslatorConfig

runner = CliRunner()
WORDS = ["cat", "dog", "sun", "moon", "tree", "river", "stone", "bird", "fish", "star"]


def _toy_pairs(n: int = 300, seed: int = 0) -> list[tuple[str, str]]:
    """Two words -> the same two words swapped and upper-cased: needs the whole source."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        a, b = rng.sample(WORDS, 2)
        pairs.append((f"{a} {b}", f"{b.upper()} {a.upper()}"))
    return pairs


def _tiny(**options) -> Translator:
    defaults = dict(tokenizer="char", hidden_size=16, embedding_size=8, epochs=2, minutes=None, patience=None,
                    progress=False, max_length=20)
    return Translator(**{**defaults, **options})


@pytest.fixture(scope="module")
def fitted() -> Translator:
    torch.manual_seed(0)
    return _tiny().fit(_toy_pairs())


# ------------------------------------------------------------------------ pair files


def test_read_pairs_skips_blank_lines_and_ignores_extra_columns(tmp_path: Path) -> None:
    path = tmp_path / "pairs.tsv"
    path.write_text("Hello\tHola\n\n  \nGood night\tBuenas noches\tCC-BY attribution\n", encoding="utf-8")
    assert read_pairs(path) == [("Hello", "Hola"), ("Good night", "Buenas noches")]


@pytest.mark.parametrize("content, message", [
    ("Hello\tHola\nno tab here\n", "line 2 of .* has no tab: expected 'source<TAB>target'"),
    ("", "holds no pairs"),
    ("\n\n", "holds no pairs"),
    ("Hello\t \n", "line 1 of .* has an empty target"),
])
def test_read_pairs_errors_name_the_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "pairs.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_pairs(path)


def test_read_pairs_refuses_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.tsv"
    path.write_bytes("año\taño\n".encode("latin-1"))
    with pytest.raises(DataError, match="is not UTF-8 text"):
        read_pairs(path)


def test_date_pairs_are_iso_and_test_dates_never_train() -> None:
    train, test = date_pairs(500), date_pairs(200, test=True)
    for _, iso in train + test:
        assert dt.date.fromisoformat(iso).isoformat() == iso
    assert {iso for _, iso in train}.isdisjoint({iso for _, iso in test})
    assert all(dt.date.fromisoformat(iso).toordinal() % 10 == 0 for _, iso in test)
    assert len({text for text, _ in train}) > 400  # many locales and formats, not one template


@pytest.mark.slow
@pytest.mark.skipif(not bible_available(), reason=f"needs the SWORD Bible modules: {parallel.BIBLE_INSTALL}")
def test_bible_pairs_align_all_verses_and_split_by_the_fixed_rule() -> None:
    pairs = parallel.bible_pairs()
    assert len(pairs) == 31084
    assert pairs[0] == ("In the beginning God created the heaven and the earth.",
                        "EN el principio crió Dios los cielos y la tierra.")
    assert not any("<G" in target or "<H" in target for _, target in pairs)  # Strong's numbers removed
    train, test = parallel.bible_split(pairs)
    assert (len(train), len(test)) == (31084 - 621, 621) and test[0] == pairs[49]


def test_metrics_bleu_chrf_exact() -> None:
    refs = ["the cat sat on the mat", "a dog barked"]
    assert metrics.bleu(refs, refs) == pytest.approx(100.0)
    assert metrics.chrf(refs, refs) == pytest.approx(100.0)
    assert metrics.bleu(["x y z", "q"], refs) < 5
    assert metrics.exact_match(["the cat sat on the mat", "a dog"], refs) == 0.5


# --------------------------------------------------------------------- the estimator


def test_config_round_trip_and_validation() -> None:
    config = TranslatorConfig(attention="bahdanau", cell="gru", joint_vocab=True, minutes=None)
    assert TranslatorConfig.from_dict(config.to_dict()) == config
    with pytest.raises(RnnkitError, match="attention must be one of"):
        TranslatorConfig(attention="dot")
    with pytest.raises(RnnkitError, match="unknown translator option"):
        TranslatorConfig.from_dict({"beam": 5})


def test_bundle_round_trip_gives_identical_translations(fitted: Translator, tmp_path: Path) -> None:
    path = fitted.save(tmp_path / "toy.rnnkit")
    loaded = rnnkit.load(path)
    assert isinstance(loaded, Translator) and loaded.config == fitted.config
    sources = [s for s, _ in _toy_pairs(20, seed=1)]
    assert loaded.translate(sources) == fitted.translate(sources)
    assert loaded.translate(sources, beam=3) == fitted.translate(sources, beam=3)


def test_joint_vocabulary_is_shared_and_survives_the_bundle(tmp_path: Path) -> None:
    translator = _tiny(joint_vocab=True, epochs=1).fit(_toy_pairs(60))
    assert translator.source_tokenizer is translator.target_tokenizer
    loaded = rnnkit.load(translator.save(tmp_path / "joint.rnnkit"))
    assert loaded.source_tokenizer is loaded.target_tokenizer


def test_over_long_input_is_refused_and_long_training_pairs_skipped(fitted: Translator) -> None:
    with pytest.raises(DataError, match=r"input 2 has 39 tokens; this model reads at most 20 \(max_length\)"):
        fitted.translate(["cat dog", "x" * 39])
    with pytest.raises(DataError, match="input 1 is empty"):
        fitted.translate("   ")
    translator = _tiny(epochs=1).fit(_toy_pairs(60) + [("cat " * 10, "CAT")])
    assert translator.skipped == 1
    with pytest.raises(DataError, match="every training pair is longer than max_length=3"):
        _tiny(max_length=3).fit(_toy_pairs(30))


def test_bad_pairs_are_refused() -> None:
    with pytest.raises(DataError, match="pairs is empty"):
        _tiny().fit([])
    with pytest.raises(DataError, match=r"pairs\[1\] must be a \(source, target\) pair"):
        _tiny().fit([("a", "b"), ("only one",)])


def test_translate_detailed_attention_is_a_distribution(fitted: Translator) -> None:
    detail = fitted.translate_detailed(["sun moon"], beam=2)[0]
    weights = detail["attention"]
    assert weights.shape == (len(detail["target_tokens"]), len(detail["source_tokens"]))
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(weights.size(0)))


@pytest.mark.slow
def test_translator_learns_a_toy_task() -> None:
    torch.manual_seed(0)
    translator = _tiny(hidden_size=48, embedding_size=16, epochs=12, lr=1e-2).fit(_toy_pairs(800))
    scores = translator.evaluate(_toy_pairs(100, seed=7), beam=3)
    assert scores["exact"] > 0.9 and scores["chrf"] > 95, scores


# --------------------------------------------------------------------------- the CLI


def _write_pairs(path: Path, pairs) -> Path:
    path.write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    return path


def test_cli_train_run_stdin_and_attention_plot(tmp_path: Path) -> None:
    data = _write_pairs(tmp_path / "toy.tsv", _toy_pairs(80))
    bundle = tmp_path / "toy.rnnkit"
    result = runner.invoke(app, ["translate", "train", str(data), "--out", str(bundle), "--tokenizer", "char",
                                 "--hidden-size", "16", "--embedding-size", "8", "--minutes", "0.05",
                                 "--max-length", "20", "--no-progress"])
    assert result.exit_code == 0, result.stderr
    assert "bundle:" in result.stderr and (bundle / "config.json").exists()
    expected = rnnkit.load(bundle).translate(["cat dog", "sun moon"])

    plot = tmp_path / "attention.png"
    result = runner.invoke(app, ["translate", "run", str(bundle), "cat dog", "--attention-plot", str(plot)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == expected[0] + "\n"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    result = runner.invoke(app, ["translate", "run", str(bundle), "--beam", "1"], input="cat dog\n\nsun moon\n")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split("\n") == [expected[0], "", expected[1], ""]  # one line out per line in


@pytest.mark.parametrize("content, message", [
    ("cat dog\tDOG CAT\nno tab\n", "line 2 of .* has no tab"),
    ("", "holds no pairs"),
])
def test_cli_train_bad_file_is_one_error_line(tmp_path: Path, content: str, message: str) -> None:
    data = tmp_path / "bad.tsv"
    data.write_text(content, encoding="utf-8")
    out = tmp_path / "never.rnnkit"
    result = runner.invoke(app, ["translate", "train", str(data), "--out", str(out)])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr
    import re

    assert re.search(message, lines[0]) and not out.exists()


def test_cli_run_over_long_input_and_wrong_bundle(fitted: Translator, tmp_path: Path) -> None:
    bundle = fitted.save(tmp_path / "toy.rnnkit")
    result = runner.invoke(app, ["translate", "run", str(bundle), "x" * 50])
    assert result.exit_code == 2 and "has 50 tokens; this model reads at most 20" in result.stderr
    no_attention = _tiny(attention="none", epochs=1).fit(_toy_pairs(40)).save(tmp_path / "plain.rnnkit")
    result = runner.invoke(app, ["translate", "run", str(no_attention), "cat dog", "--attention-plot",
                                 str(tmp_path / "a.png")])
    assert result.exit_code == 2 and "has no attention" in result.stderr

"""The README stays true: its Python examples and its `rnnkit` commands run as written.

`make test` and `make demo` are run by CI (.ci/run); the benchmark line by its own quick mode.
"""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


@pytest.mark.slow
def test_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = "\n".join(code_blocks("python"))
    assert "import rnnkit as rk" in source
    exec(compile(source, "README.md", "exec"), {"__name__": "readme"})


def _sales_csv(path: Path) -> None:
    """Eight years of monthly sales with trend and season: data this test makes itself."""
    months = pd.date_range("2015-01-01", periods=96, freq="MS")
    t = np.arange(96)
    sales = 100 + 0.5 * t + 20 * np.sin(2 * np.pi * t / 12) + np.random.default_rng(0).normal(0, 2, 96)
    pd.DataFrame({"date": months, "sales": sales}).to_csv(path, index=False)


def _pairs_tsv(path: Path) -> None:
    """English -> Spanish sentence pairs for the translate commands."""
    pairs = [("In the beginning God created the heaven and the earth.", "En el principio creó Dios los cielos y la tierra."),
             ("And God said, Let there be light.", "Y dijo Dios: Sea la luz."), ("The light was good.", "La luz era buena.")]
    path.write_text("".join(f"{s}\t{t}\n" for s, t in pairs * 10), encoding="utf-8")


def _text_files(root: Path) -> None:
    """A small corpus and labelled reviews for the text commands: data this test makes itself."""
    (root / "corpus.txt").write_text("ROMEO: the cat sat on the mat. JULIET: the dog sat on the log.\n" * 40)
    reviews = [(f"{word} {thing}", label) for word, label in (("great", "pos"), ("awful", "neg"))
               for thing in ("film", "plot", "cast", "song", "trip", "meal", "book", "show", "day", "car")]
    pd.DataFrame(reviews, columns=["review", "sentiment"]).to_csv(root / "reviews.csv", index=False)
    pd.DataFrame({"text": ["great film", "awful day"]}).to_csv(root / "new.csv", index=False)


@pytest.mark.slow
def test_forecast_commands_run(tmp_path):
    _sales_csv(tmp_path / "sales.csv")
    _pairs_tsv(tmp_path / "pairs.tsv")
    _text_files(tmp_path)
    commands = [line.split("#")[0].strip() for block in code_blocks("bash") for line in block.splitlines()
                if line.startswith("rnnkit ")]
    assert any(c.startswith("rnnkit forecast train") for c in commands)
    for command in commands:
        # Short budgets: the README shows real ones, the test checks the commands work.
        args = shlex.split(re.sub(r"--minutes \S+", "--minutes 0.1", command))[1:]
        done = subprocess.run([sys.executable, "-m", "rnnkit", *args], cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, f"{command!r} failed: {done.stderr[-500:]}"
    forecast = pd.read_csv(tmp_path / "forecast.csv")
    assert list(forecast.columns) == ["unique_id", "ds", "y_hat_q10", "y_hat", "y_hat_q90"]
    assert (tmp_path / "forecast.png").stat().st_size > 10_000

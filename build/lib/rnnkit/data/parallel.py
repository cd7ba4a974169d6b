"""Parallel text for translation: user TSV files, the Bible (KJV -> Reina-Valera 1909), dates.

Nothing here downloads. The Bible comes from the SWORD modules that Debian packages
(``apt-get install -y diatheke sword-text-kjv sword-text-sparv``); it is read once with
``diatheke`` and cached as a TSV under ``~/.cache/rnnkit`` (``$RNNKIT_CACHE`` overrides).
Dates are generated with ``babel``.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterable, Union

from ..errors import DataError
from ..files import atomic_write_bytes

Pair = tuple[str, str]

BIBLE_MODULES = ("engKJV2006eb", "spaRV1909eb")  # the module names sword-text-kjv / -sparv install
BIBLE_INSTALL = "apt-get install -y diatheke sword-text-kjv sword-text-sparv"
#: Held-out rule for the Bible: every 50th aligned verse (canonical order, 0-based index % 50 == 49)
BIBLE_TEST_EVERY = 50
_VERSE = re.compile(r"^\s*(?P<ref>\S.*? \d+:\d+): (?P<text>.*)$")
_STRONGS = re.compile(r"\s*<[GH]\d+>")  # Strong's numbers the Spanish module carries inline


def read_pairs(path: Union[str, Path]) -> list[Pair]:
    """Read ``source<TAB>target`` lines; blank lines are skipped, a third column and beyond
    (for instance Tatoeba's attribution) are ignored.

    Raises :class:`DataError` naming the line for a line without a tab or with an empty side,
    and for a file with no pairs at all.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); re-save it as UTF-8") from None
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DataError(f"line {number} of {path} has no tab: expected 'source<TAB>target' on every line")
        source, target = fields[0].strip(), fields[1].strip()
        if not source or not target:
            side = "source" if not source else "target"
            raise DataError(f"line {number} of {path} has an empty {side}: expected 'source<TAB>target'")
        pairs.append((source, target))
    if not pairs:
        raise DataError(f"{path} holds no pairs: expected lines of 'source<TAB>target'")
    return pairs


def pairs_to_tsv(pairs: Iterable[Pair]) -> bytes:
    """Pairs as UTF-8 TSV bytes (tabs and newlines inside a side become spaces)."""
    clean = (" ".join(side.split()) for pair in pairs for side in pair)
    parts = list(clean)
    return "".join(f"{parts[i]}\t{parts[i + 1]}\n" for i in range(0, len(parts), 2)).encode()


def cache_dir() -> Path:
    """Where rnnkit keeps derived data: ``$RNNKIT_CACHE`` or ``~/.cache/rnnkit``."""
    return Path(os.environ.get("RNNKIT_CACHE") or Path.home() / ".cache" / "rnnkit")


def bible_available() -> bool:
    """Whether ``diatheke`` and both SWORD modules are installed (or the pairs are cached)."""
    if (cache_dir() / "bible_kjv_rv1909.tsv").exists():
        return True
    if shutil.which("diatheke") is None:
        return False
    listing = subprocess.run(["diatheke", "-b", "system", "-k", "modulelist"], capture_output=True, text=True).stdout
    return all(module in listing for module in BIBLE_MODULES)


def bible_pairs() -> list[Pair]:
    """All aligned verses, English (KJV) -> Spanish (Reina-Valera 1909), in canonical order."""
    cached = cache_dir() / "bible_kjv_rv1909.tsv"
    if cached.exists():
        return read_pairs(cached)
    if not bible_available():
        raise DataError(f"the Bible needs diatheke and the KJV and Reina-Valera SWORD modules: {BIBLE_INSTALL}")
    english, spanish = (_read_module(module) for module in BIBLE_MODULES)
    pairs = [(english[ref], spanish[ref]) for ref in english if ref in spanish and english[ref] and spanish[ref]]
    atomic_write_bytes(cached, pairs_to_tsv(pairs))
    return read_pairs(cached)


def bible_split(pairs: list[Pair]) -> tuple[list[Pair], list[Pair]]:
    """The fixed held-out rule: verse ``i`` (0-based, canonical order) is a test verse iff
    ``i % 50 == 49``; the others train. About 2 % of the verses, spread over every book."""
    train = [p for i, p in enumerate(pairs) if i % BIBLE_TEST_EVERY != BIBLE_TEST_EVERY - 1]
    test = [p for i, p in enumerate(pairs) if i % BIBLE_TEST_EVERY == BIBLE_TEST_EVERY - 1]
    return train, test


def _read_module(module: str) -> dict[str, str]:
    """``{"Genesis 1:1": text}`` from one SWORD module; headings between verses are dropped."""
    result = subprocess.run(["diatheke", "-b", module, "-f", "plain", "-k", "Gen 1:1-Rev 22:21"],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0 or not result.stdout:
        raise DataError(f"diatheke could not read module {module}: {result.stderr.strip()}; {BIBLE_INSTALL}")
    verses = {}
    for line in result.stdout.splitlines():
        match = _VERSE.match(line)
        if match:  # one verse per line; anything else is a psalm title or blank
            verses[match["ref"]] = " ".join(_STRONGS.sub("", match["text"]).split())
    return verses


# ---------------------------------------------------------------------- dates

DATE_LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "pt_BR", "nl_NL", "sv_SE", "da_DK",
                "nb_NO", "fi_FI", "pl_PL", "cs_CZ", "hu_HU", "ro_RO", "tr_TR", "id_ID")
#: 'short' formats are left out: '01/02/03' is ambiguous without knowing the locale
DATE_FORMATS = ("full", "long", "medium")
DATE_RANGE = (dt.date(1950, 1, 1), dt.date(2049, 12, 31))


def date_pairs(count: int, *, test: bool = False, seed: int = 0) -> list[Pair]:
    """``count`` (written date, ISO date) pairs in random locales and formats.

    The held-out rule: a test date's ordinal (days since 0001-01-01) is divisible by 10; a
    training date's never is, so test dates are never seen in training, in any format.
    """
    try:
        from babel.dates import format_date
    except ImportError:  # pragma: no cover - babel is a dependency
        raise DataError("the dates task needs babel: pip install babel") from None
    rng = random.Random(seed + (1 if test else 0))
    first, last = (d.toordinal() for d in DATE_RANGE)
    pairs = []
    while len(pairs) < count:
        ordinal = rng.randint(first, last)
        if (ordinal % 10 == 0) != test:
            continue
        date = dt.date.fromordinal(ordinal)
        text = format_date(date, rng.choice(DATE_FORMATS), locale=rng.choice(DATE_LOCALES))
        pairs.append((text, date.isoformat()))
    return pairs


__all__ = ["BIBLE_INSTALL", "DATE_LOCALES", "Pair", "bible_available", "bible_pairs", "bible_split", "cache_dir",
           "date_pairs", "pairs_to_tsv", "read_pairs"]

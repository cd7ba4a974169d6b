"""Captioning data composed from real handwritten digits: scikit-learn's ``load_digits``.

The 1,797 digit images (8x8, intensities 0..16, scanned from 43 writers: real, not drawn by
a program) are split into train / validation / test *before* anything is composed, so no
source image is shared across splits. A composite places 2 to 4 of one split's digits side by
side on a canvas ``HEIGHT`` rows high, each at a random vertical offset of 0..``JITTER`` rows
and with a random gap of 0..``GAP`` blank columns before it; its caption is the number the
digits spell, in English words ("three hundred and forty two"). The first digit is never zero,
so every composite reads as one number. The sentence is not a per-image label lookup: "forty"
and "four" come from the same digit in different positions, "teens" fuse two digits into one
word, "hundred", "thousand" and "and" are read from how many digits follow, and a zero is
mostly silent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import DataError

HEIGHT = 8 + 2   # canvas rows: an 8-row digit with room to move
JITTER = 2       # a digit's top row is 0..JITTER
GAP = 1          # blank columns before each digit: 0..GAP
MAX_DIGITS = 4
MAX_WIDTH = MAX_DIGITS * (8 + GAP)
SPLITS = ("train", "validation", "test")
INSTALL = "pip install scikit-learn (or pip install 'rnnkit[caption]')"

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_to_words(n: int) -> str:
    """``n`` in 0..9999 in British English words, without hyphens: 342 -> "three hundred and forty
    two", 7005 -> "seven thousand and five", 1200 -> "one thousand two hundred"."""
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= 9999:
        raise DataError(f"number_to_words takes an integer 0..9999, got {n!r}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    words = []
    if n >= 1000:
        words += [_ONES[n // 1000], "thousand"]
    if n % 1000 >= 100:
        words += [_ONES[n % 1000 // 100], "hundred"]
    if n % 100:
        words += ["and", number_to_words(n % 100)]
    return " ".join(words)


def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: ``(images (1797, 8, 8) float32 0..16, labels (1797,) int)``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError(f"the digits need scikit-learn: {INSTALL}") from None
    digits = load_digits()
    return digits.images.astype(np.float32), digits.target.astype(np.int64)


def split_indices(count: int, seed: int = 0, fractions: tuple[float, float] = (0.7, 0.15)) -> dict[str, np.ndarray]:
    """Disjoint source-image indices per split (train, validation, test), from one shuffle by ``seed``."""
    order = np.random.default_rng(seed).permutation(count)
    a, b = int(count * fractions[0]), int(count * (fractions[0] + fractions[1]))
    return {"train": np.sort(order[:a]), "validation": np.sort(order[a:b]), "test": np.sort(order[b:])}


@dataclass
class Composites:
    """Composed images with their captions and, for a baseline that is given the segmentation,
    where each digit came from and where it was placed."""

    images: list[np.ndarray]          # each (HEIGHT, width) float32 0..16, width 16..MAX_WIDTH
    captions: list[str]
    numbers: list[int]
    sources: list[list[int]]          # per composite, the load_digits index of each digit, left to right
    offsets: list[list[tuple[int, int]]]  # per digit, its (top row, left column)

    def __len__(self) -> int:
        return len(self.images)


def compose(images: np.ndarray, labels: np.ndarray, indices: np.ndarray, count: int, *,
            seed: int = 0, min_digits: int = 2, max_digits: int = MAX_DIGITS) -> Composites:
    """``count`` composites of the digits ``images[indices]`` (one split), see the module docstring."""
    if not 1 <= min_digits <= max_digits <= MAX_DIGITS:
        raise DataError(f"need 1 <= min_digits <= max_digits <= {MAX_DIGITS}, got {min_digits}, {max_digits}")
    rng = np.random.default_rng(seed)
    by_label = {d: indices[labels[indices] == d] for d in range(10)}
    if any(len(v) == 0 for v in by_label.values()):
        raise DataError("every digit 0-9 needs at least one source image in the split")
    out = Composites([], [], [], [], [])
    for _ in range(count):
        k = int(rng.integers(min_digits, max_digits + 1))
        number = int(rng.integers(10 ** (k - 1) if k > 1 else 0, 10 ** k))
        picks = [int(rng.choice(by_label[int(d)])) for d in str(number)]
        gaps = rng.integers(0, GAP + 1, size=k)
        canvas = np.zeros((HEIGHT, int(k * 8 + gaps.sum())), dtype=np.float32)
        column, places = 0, []
        for pick, gap in zip(picks, gaps):
            column += int(gap)
            top = int(rng.integers(0, JITTER + 1))
            canvas[top:top + 8, column:column + 8] = images[pick]
            places.append((top, column))
            column += 8
        out.images.append(canvas)
        out.captions.append(number_to_words(number))
        out.numbers.append(number)
        out.sources.append(picks)
        out.offsets.append(places)
    return out


def digit_composites(split: str, count: int, *, seed: int = 0, split_seed: int = 0,
                     data: Optional[tuple[np.ndarray, np.ndarray]] = None) -> Composites:
    """``count`` composites of one split's real digits (``split_seed`` fixes the source split,
    ``seed`` the composition); ``data`` is ``load_digit_images()`` when already loaded."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    images, labels = data if data is not None else load_digit_images()
    indices = split_indices(len(images), split_seed)[split]
    return compose(images, labels, indices, count, seed=seed + 1000 * SPLITS.index(split))


__all__ = ["Composites", "HEIGHT", "MAX_WIDTH", "compose", "digit_composites", "load_digit_images",
           "number_to_words", "split_indices"]

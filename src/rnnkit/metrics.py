"""Forecast and classification metrics on NumPy arrays (NaN-free, same shape); translation and speech metrics on strings."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def mae(y: np.ndarray, y_hat: np.ndarray) -> float:
    """Mean absolute error."""
    return float(np.mean(np.abs(y - y_hat)))


def rmse(y: np.ndarray, y_hat: np.ndarray) -> float:
    """Root mean squared error."""
    return float(np.sqrt(np.mean((y - y_hat) ** 2)))


def smape(y: np.ndarray, y_hat: np.ndarray) -> float:
    """Symmetric mean absolute percentage error, in percent (0-200); 0/0 counts as 0."""
    denominator = np.abs(y) + np.abs(y_hat)
    ratio = np.divide(2 * np.abs(y - y_hat), denominator, out=np.zeros_like(denominator, dtype=float),
                      where=denominator > 0)
    return float(100 * np.mean(ratio))


def mase(y: np.ndarray, y_hat: np.ndarray, history: np.ndarray, season_length: int = 1) -> float:
    """Mean absolute scaled error: MAE over the in-sample MAE of the seasonal-naive forecast."""
    season_length = season_length if len(history) > season_length else 1
    scale = np.mean(np.abs(history[season_length:] - history[:-season_length]))
    return float(mae(y, y_hat) / scale) if scale > 0 else float("nan")


def pinball(y: np.ndarray, y_hat_q: np.ndarray, quantile: float) -> float:
    """Quantile (pinball) loss of the ``quantile`` forecast."""
    diff = y - y_hat_q
    return float(np.mean(np.maximum(quantile * diff, (quantile - 1) * diff)))


def coverage(y: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Fraction of actual values inside ``[lower, upper]``."""
    return float(np.mean((y >= lower) & (y <= upper)))


# ------------------------------------------------------------------ translation (text)


def bleu(hypotheses: list[str], references: list[str]) -> float:
    """Corpus BLEU (0-100) with sacrebleu's standard settings (13a tokenisation, one reference)."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


def chrf(hypotheses: list[str], references: list[str]) -> float:
    """Corpus chrF (0-100), character n-gram F-score: kinder than BLEU to inflected words."""
    import sacrebleu

    return float(sacrebleu.corpus_chrf(hypotheses, [references]).score)


def exact_match(hypotheses: list[str], references: list[str]) -> float:
    """Fraction of hypotheses identical to their reference (whitespace-trimmed)."""
    return float(np.mean([h.strip() == r.strip() for h, r in zip(hypotheses, references)])) if references else 0.0


def accuracy(y: np.ndarray, y_hat: np.ndarray) -> float:
    """Fraction of labels predicted exactly."""
    return float(np.mean(np.asarray(y) == np.asarray(y_hat)))


def confusion_matrix(y: np.ndarray, y_hat: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``(num_classes, num_classes)``: row = true class index, column = predicted."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y, dtype=np.int64), np.asarray(y_hat, dtype=np.int64)), 1)
    return matrix


def macro_f1(y: np.ndarray, y_hat: np.ndarray, num_classes: int) -> float:
    """The unweighted mean over classes of F1 = 2PR / (P + R); a class never true nor predicted scores 0."""
    matrix = confusion_matrix(y, y_hat, num_classes)
    tp = np.diag(matrix).astype(float)
    denominator = matrix.sum(0) + matrix.sum(1)  # predicted + true: 2TP + FP + FN
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return float(f1.mean())


def edit_distance(reference: Sequence, hypothesis: Sequence) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions that turn one
    sequence into the other (one row of the dynamic programme at a time)."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, start=1):
        current = [i]
        for j, hyp in enumerate(hypothesis, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref != hyp)))
        previous = current
    return previous[-1]


def error_rate(hypotheses: list[str], references: list[str], unit: str = "char") -> float:
    """Character (``unit="char"``) or word (``"word"``) error rate: total edits over total
    reference length, summed over the corpus (not a mean of per-utterance rates)."""
    split = (lambda s: list(s)) if unit == "char" else (lambda s: s.split())
    edits = sum(edit_distance(split(r), split(h)) for h, r in zip(hypotheses, references))
    return edits / max(1, sum(len(split(r)) for r in references))

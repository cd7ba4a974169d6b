"""Synthetic long-range memory tasks from the LSTM literature, for any sequence length ``T``.

Each generator returns ``(inputs, targets)`` tensors drawn from a ``torch.Generator``, so a
seed fixes the data. The answer depends on a few steps far apart; everything in between is
noise that must be carried, not read.

- :func:`adding_problem` (Hochreiter & Schmidhuber, 1997; Le, Jaitly & Hinton, 2015): sum
  the two marked values of a random sequence. Inputs ``(N, T, 2)``: value in U[0, 1] and
  marker in {0, 1}; one marker in the first half, one in the second. Target ``(N,)``.
  Always predicting 1 (the mean of the sum) scores MSE = Var(sum) = 2/12 = 0.167.
- :func:`copy_task` (Hochreiter & Schmidhuber, 1997; Arjovsky, Shah & Bengio, 2016): read
  ``symbols`` random symbols, wait ``T`` blank steps, see the delimiter, write the symbols
  back. Inputs ``(N, T + 2*symbols, 10)`` one-hot, targets ``(N, T + 2*symbols)`` class ids.
- :func:`temporal_order` (Hochreiter & Schmidhuber, 1997, task 6a): two relevant symbols,
  each X or Y, hidden among random distractors; classify their order XX, XY, YX, YY.
  Inputs ``(N, T, 8)`` one-hot, targets ``(N,)`` in 0..3.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..errors import DataError

#: copy task alphabet: 0 blank, 1..8 symbols to remember, 9 the "now recall" delimiter
COPY_BLANK, COPY_SYMBOLS, COPY_DELIMITER = 0, 8, 9
COPY_VOCAB = 10
#: temporal order alphabet: distractors a-d, relevant X and Y, start B and end E
ORDER_ALPHABET = "abcdXYBE"
ORDER_CLASSES = ("XX", "XY", "YX", "YY")


def _check(name: str, value: int, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise DataError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _generator(seed: Optional[int], generator: Optional[torch.Generator]) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(0 if seed is None else seed)


def adding_problem(n: int, length: int, *, seed: Optional[int] = None,
                   generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """``n`` adding-problem sequences of ``length`` steps: ``(inputs (n, T, 2), targets (n,))``."""
    _check("n", n, 1)
    _check("length", length, 2)
    g = _generator(seed, generator)
    values = torch.rand(n, length, generator=g)  # (N, T)
    half = length // 2
    first = torch.randint(0, half, (n,), generator=g)  # one marker in the first half ...
    second = torch.randint(half, length, (n,), generator=g)  # ... and one in the second
    markers = torch.zeros(n, length)
    rows = torch.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    targets = values[rows, first] + values[rows, second]
    return torch.stack([values, markers], dim=2), targets


def copy_task(n: int, length: int, *, symbols: int = 10, seed: Optional[int] = None,
              generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """``n`` copy-task sequences with a delay of ``length`` blanks.

    The input is ``symbols`` random symbols (1..8), ``length - 1`` blanks, the delimiter,
    then ``symbols`` blanks; the target is blank everywhere except the last ``symbols``
    steps, which repeat the symbols. Returns one-hot inputs ``(n, L, 10)`` and target ids
    ``(n, L)``, ``L = length + 2 * symbols``.
    """
    _check("n", n, 1)
    _check("length", length, 1)
    _check("symbols", symbols, 1)
    g = _generator(seed, generator)
    total = length + 2 * symbols
    memory = torch.randint(1, COPY_SYMBOLS + 1, (n, symbols), generator=g)
    ids = torch.full((n, total), COPY_BLANK, dtype=torch.long)
    ids[:, :symbols] = memory
    ids[:, symbols + length - 1] = COPY_DELIMITER
    targets = torch.full((n, total), COPY_BLANK, dtype=torch.long)
    targets[:, -symbols:] = memory
    return torch.nn.functional.one_hot(ids, COPY_VOCAB).float(), targets


def temporal_order(n: int, length: int, *, seed: Optional[int] = None,
                   generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """``n`` temporal-order sequences of ``length`` steps: ``(inputs (n, T, 8), targets (n,))``.

    ``B`` starts and ``E`` ends each sequence; between them random distractors a-d, except
    at ``t1`` in ``[0.1 T, 0.2 T]`` and ``t2`` in ``[0.5 T, 0.6 T]`` (Hochreiter's 10-20 and
    50-60 at T = 100), which hold X or Y. The class is the pair: 0 XX, 1 XY, 2 YX, 3 YY.
    """
    _check("n", n, 1)
    _check("length", length, 10)
    g = _generator(seed, generator)
    ids = torch.randint(0, 4, (n, length), generator=g)  # distractors a, b, c, d
    ids[:, 0], ids[:, -1] = ORDER_ALPHABET.index("B"), ORDER_ALPHABET.index("E")
    t1 = _uniform_position(n, length, 0.1, 0.2, g)
    t2 = _uniform_position(n, length, 0.5, 0.6, g)
    relevant = torch.randint(0, 2, (n, 2), generator=g)  # 0 = X, 1 = Y
    rows = torch.arange(n)
    ids[rows, t1] = ORDER_ALPHABET.index("X") + relevant[:, 0]
    ids[rows, t2] = ORDER_ALPHABET.index("X") + relevant[:, 1]
    targets = 2 * relevant[:, 0] + relevant[:, 1]
    return torch.nn.functional.one_hot(ids, len(ORDER_ALPHABET)).float(), targets


def _uniform_position(n: int, length: int, low: float, high: float, g: torch.Generator) -> Tensor:
    """Positions uniform in ``[low T, high T]``, kept clear of the B and E markers."""
    start = max(1, int(low * length))
    stop = min(length - 2, max(start, int(high * length)))
    return torch.randint(start, stop + 1, (n,), generator=g)


def order_text(ids: Tensor) -> str:
    """A temporal-order sequence of ids (or one-hot rows) as its letters, e.g. ``'BacXdbYcaE'``."""
    ids = ids.argmax(-1) if ids.dim() == 2 else ids
    return "".join(ORDER_ALPHABET[int(i)] for i in ids)


__all__ = ["COPY_BLANK", "COPY_DELIMITER", "COPY_SYMBOLS", "COPY_VOCAB", "ORDER_ALPHABET", "ORDER_CLASSES",
           "adding_problem", "copy_task", "order_text", "temporal_order"]

"""rnnkit: recurrent neural networks that train fast on a CPU, explain themselves, and ship.

Light to import: the cells and the bundle functions load at once; a task (and pandas,
matplotlib) only when it is first used, e.g. ``rnnkit.Forecaster``.
"""

import importlib
from typing import Any

from .bundle import load, read_bundle, save_bundle
from .cells import GRU, LSTM, RNN, MinGRU, MinLSTM
from .errors import BundleError, DataError, RnnkitError
from .version import __version__

_TASKS = ("Captioner", "Forecaster", "MemoryLab", "SequenceClassifier", "TextGenerator", "Translator")


def __getattr__(name: str) -> Any:
    if name in _TASKS:
        return getattr(importlib.import_module(f"{__name__}.tasks"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "GRU", "LSTM", "RNN", "MinGRU", "MinLSTM", "BundleError", "Captioner", "DataError", "Forecaster", "MemoryLab",
    "RnnkitError", "SequenceClassifier", "TextGenerator", "Translator", "__version__", "load", "read_bundle", "save_bundle",
]

"""rnnkit: recurrent neural networks that train fast on a CPU, explain themselves, and ship."""

__version__ = "0.1.0"

from .bundle import load, read_bundle, save_bundle  # noqa: E402
from .tasks import Forecaster, MemoryLab, SequenceClassifier, TextGenerator, Translator  # noqa: E402
from .cells import GRU, LSTM, RNN, MinGRU, MinLSTM  # noqa: E402
from .errors import BundleError, DataError, RnnkitError  # noqa: E402

__all__ = [
    "GRU", "LSTM", "RNN", "MinGRU", "MinLSTM", "BundleError", "DataError", "Forecaster", "MemoryLab",
    "RnnkitError", "SequenceClassifier", "TextGenerator", "Translator", "__version__", "load", "read_bundle", "save_bundle",
]

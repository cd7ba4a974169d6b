"""Applications, one file each, built from the layers below; importing registers their bundle loaders."""

from .classify import SequenceClassifier, SequenceClassifierConfig
from .forecast import Forecaster
from .forecast_eval import BacktestResult, backtest
from .forecast_model import ForecasterConfig
from .memory import LabConfig, MemoryLab
from .textgen import TextGenerator, TextGeneratorConfig
from .translate import Translator, TranslatorConfig

__all__ = ["BacktestResult", "Forecaster", "ForecasterConfig", "LabConfig", "MemoryLab", "SequenceClassifier",
           "SequenceClassifierConfig", "TextGenerator", "TextGeneratorConfig", "Translator", "TranslatorConfig",
           "backtest"]

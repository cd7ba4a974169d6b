"""Applications, one file each, built from the layers below; importing registers their bundle loaders."""

from .forecast import Forecaster
from .forecast_eval import BacktestResult, backtest
from .forecast_model import ForecasterConfig
from .translate import Translator, TranslatorConfig

__all__ = ["BacktestResult", "Forecaster", "ForecasterConfig", "Translator", "TranslatorConfig", "backtest"]

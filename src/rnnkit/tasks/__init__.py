"""Applications, one file each, built from the layers below; importing registers their bundle loaders."""

from .forecast import Forecaster, ForecasterConfig
from .translate import Translator, TranslatorConfig

__all__ = ["Forecaster", "ForecasterConfig", "Translator", "TranslatorConfig"]

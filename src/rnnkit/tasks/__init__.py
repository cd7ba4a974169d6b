"""Applications, one file each, built from the layers below; importing registers their bundle loaders."""

from .forecast import Forecaster, ForecasterConfig

__all__ = ["Forecaster", "ForecasterConfig"]

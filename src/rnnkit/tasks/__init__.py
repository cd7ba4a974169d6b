"""Applications, one file each, built from the layers below on one contract (:mod:`.base`).

Adding a task is a recipe:

1. Write ``rnnkit/tasks/<name>.py`` with a config extending :class:`~.base.TaskConfig` (only the
   model's options, and the training defaults that differ, each with a comment saying why) and
   a class extending :class:`~.base.Task` that sets ``name``, ``model_type``, ``config_class``,
   ``request_schema`` and ``response_schema`` and implements ``_fit``, ``build_model``,
   ``preprocessing``/``restore`` and ``predict_json`` (and ``stream_json`` if it generates).
2. Add one line to ``BUILTIN`` below, so that ``rnnkit.load`` finds the task's bundles without
   importing every task first (a task defined elsewhere registers itself when its module runs).
3. Its CLI: ``rnnkit predict BUNDLE`` and ``rnnkit info BUNDLE`` work at once; a ``train``
   command takes the shared options with ``@training_options`` (``rnnkit/cli/options.py``).

Nothing is imported until it is used: ``import rnnkit`` loads no task, pandas or matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any, Optional

#: model_type -> the module (in this package) that defines its task
BUILTIN: dict[str, str] = {
    "forecaster": "forecast",
    "sequence_classifier": "classify",
    "text_generator": "textgen",
    "translator": "translate",
    "memory_lab": "memory",
    "music_generator": "music",
    "chatbot": "chat",
    "speech_recognizer": "speech",
    "captioner": "caption",
}

#: public name -> its module, imported on first use
_EXPORTS: dict[str, str] = {
    "Forecaster": "forecast", "ForecasterConfig": "forecast_model", "BacktestResult": "forecast_eval",
    "backtest": "forecast_eval", "SequenceClassifier": "classify", "SequenceClassifierConfig": "classify",
    "TextGenerator": "textgen", "TextGeneratorConfig": "textgen", "Translator": "translate",
    "TranslatorConfig": "translate", "MemoryLab": "memory", "LabConfig": "memory",
    "MusicGenerator": "music", "MusicConfig": "music", "Chatbot": "chat", "ChatbotConfig": "chat",
    "SpeechRecognizer": "speech", "SpeechConfig": "speech",
    "Captioner": "caption", "CaptionerConfig": "caption",
    "Task": "base", "TaskConfig": "base",
}


def import_task(model_type: str) -> None:
    """Import the built-in task that saves ``model_type`` bundles, so that its loader is registered."""
    if model_type in BUILTIN:
        importlib.import_module(f"{__name__}.{BUILTIN[model_type]}")


def task_class(model_type: str) -> Optional[type]:
    """The :class:`~.base.Task` subclass that saves ``model_type`` bundles, or ``None``."""
    import_task(model_type)
    from .base import TASKS

    return TASKS.get(model_type)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS) + ["BUILTIN", "import_task", "task_class"]

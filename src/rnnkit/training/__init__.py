"""The one trainer every rnnkit task uses, as a package of five parts that import only downwards:

- ``config``: ``TrainConfig`` (what a run is told), ``TrainResult`` (what it returns) and
  ``RunState`` (a run in progress, what a checkpoint carries);
- ``batching``: how training data becomes optimizer steps (epochs, length-grouped batches,
  truncated-BPTT pieces);
- ``distributed``: the same loop in several processes under ``torchrun`` (data parallel,
  restarted workers resume from the last checkpoint);
- ``checkpoints``: saving and resuming a run bit for bit (safetensors + JSON, atomic);
- ``loop``: ``fit``, ``evaluate``, ``lr_at``, ``budget_shares`` and ``budget_fill``.
"""

from .config import CLOCKS, RunState, TrainConfig, TrainResult, check_clock
from .loop import Data, LossFn, budget_fill, budget_shares, evaluate, fit, layer_groups_at, lr_at

__all__ = ["CLOCKS", "Data", "LossFn", "RunState", "TrainConfig", "TrainResult", "budget_fill", "budget_shares", "check_clock",
           "evaluate", "fit", "layer_groups_at", "lr_at"]

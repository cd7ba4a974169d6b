"""What a training run is told (``TrainConfig``), what it returns (``TrainResult``), and the
state of a run in progress that a checkpoint carries (``RunState``)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ..config import JsonConfig
from ..errors import RnnkitError
from ..precision import PRECISIONS

#: what ``TrainConfig.minutes`` counts: seconds of wall-clock time, or CPU time of this process
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.monotonic, "cpu": time.process_time}


def check_clock(clock: Any, owner: str) -> None:
    """Raise the one-line error for a ``clock`` that is not a key of ``CLOCKS``."""
    if clock not in CLOCKS:
        raise RnnkitError(f"{owner}.clock must be 'wall' or 'cpu', got {clock!r}")


#: the learning-rate schedules after the warmup (``loop.lr_at``)
SCHEDULES = ("cosine", "constant", "slanted")


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def device_of(name: str) -> torch.device:
    """``"auto"`` is the GPU when there is one; anything else goes to ``torch.device``."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


@dataclass(frozen=True, kw_only=True)
class TrainConfig(JsonConfig):
    """How to train: optimiser, schedule, batching, stopping, checkpoints. Validated on construction."""

    KIND = "TrainConfig"

    epochs: int = 20                        # enough for the small data sets of the demos
    max_steps: Optional[int] = None         # cap on optimizer steps across epochs; None = epochs decide
    minutes: Optional[float] = None         # time budget: stop cleanly, keep the best weights
    clock: str = "wall"                     # what minutes count: "wall" time, or this process's "cpu" time,
    #                                         which a busy machine does not eat into (fair benchmarks)
    batch_size: int = 32                    # small batches generalise well and still keep a CPU busy
    lr: float = 3e-3                        # AdamW's sweet spot for small recurrent nets
    weight_decay: float = 0.01              # AdamW's decoupled decay: mild regularisation
    clip_norm: Optional[float] = 1.0        # recurrent gradients explode; clipping their norm tames them
    schedule: str = "cosine"                # "cosine" (down to 10% of lr) or "constant", after the warmup;
    #                                         "slanted": ULMFiT's triangle, up for 10 % of the run, then down to lr/32
    warmup_steps: int = 0                   # linear warmup; small recurrent nets rarely need it
    decay_over_budget: bool = False         # cosine follows the clock (needs minutes): a time-boxed run ends decayed
    layer_lr_decay: float = 1.0             # with fit's layer_groups: a group k below the top trains at lr / decay**k
    #                                         (ULMFiT's discriminative rates: 2.6); 1 = one rate for all
    unfreeze_every: Optional[int] = None    # with layer_groups: epochs between unfreezing one more group, from the
    #                                         top (ULMFiT's gradual unfreezing: 1); None = all train from the start
    tbptt: Optional[int] = None             # truncated BPTT: piece length along time; None = whole sequences
    stateful: bool = False                  # carry state across consecutive unshuffled batches (long corpora)
    eval_every: Optional[int] = None        # steps between validations; None = once per epoch
    patience: Optional[int] = None          # early stopping after this many validations without improvement
    checkpoint_every: Optional[int] = None  # steps between checkpoints (needs checkpoint_dir); None = at end
    seed: int = 0                           # the global torch RNG (dropout) and the epoch permutations
    progress: bool = True                   # a rich progress bar; switch it off in scripts and tests
    device: str = "auto"                    # "auto" = cuda if available, else cpu
    precision: str = "fp32"                 # "bf16": products in bfloat16 under autocast, weights float32;
    #                                         faster only on CPUs with AVX-512 BF16 or AMX (benchmarks/precision.py)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            self._check(name, _is_int(getattr(self, name), 1), "an integer >= 1")
        for name in ("warmup_steps", "seed"):
            self._check(name, _is_int(getattr(self, name), 0), "an integer >= 0")
        for name in ("max_steps", "tbptt", "eval_every", "patience", "checkpoint_every", "unfreeze_every"):
            value = getattr(self, name)
            self._check(name, value is None or _is_int(value, 1), "None or an integer >= 1")
        for name, allow_none, allow_zero in (("lr", False, False), ("weight_decay", False, True),
                                             ("layer_lr_decay", False, False),
                                             ("clip_norm", True, False), ("minutes", True, False)):
            value = getattr(self, name)
            if allow_none and value is None:
                continue
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            expected = ("None or " if allow_none else "") + f"a number {'>=' if allow_zero else '>'} 0"
            self._check(name, number and (value >= 0 if allow_zero else value > 0), expected)
            object.__setattr__(self, name, float(value))  # lr=1 and lr=1.0 are the same config
        self._check("schedule", self.schedule in SCHEDULES, "'cosine', 'constant' or 'slanted'")
        self._check("precision", self.precision in PRECISIONS, "'fp32' or 'bf16'")
        check_clock(self.clock, "TrainConfig")
        if self.decay_over_budget and self.minutes is None:
            raise RnnkitError("TrainConfig.decay_over_budget needs a time budget; set minutes=... or "
                              "decay_over_budget=False")
        for name in ("stateful", "progress", "decay_over_budget"):
            self._check(name, isinstance(getattr(self, name), bool), "True or False")
        try:
            ok = isinstance(self.device, str) and device_of(self.device) is not None
        except (RuntimeError, ValueError):
            ok = False
        self._check("device", ok, "'auto' or a torch device such as 'cpu' or 'cuda:0'")

    def _check(self, name: str, ok: bool, expected: str) -> None:
        if not ok:
            raise RnnkitError(f"TrainConfig.{name} must be {expected}, got {getattr(self, name)!r}")


@dataclass
class TrainResult:
    """What ``fit`` returns; the model itself is trained in place."""

    history: list[dict[str, Any]]   # rows of step, epoch, train_loss, val_loss, lr, elapsed_s
    best_val_loss: Optional[float]  # None without validation data
    steps: int                      # optimizer steps of the whole run, across resumes
    epochs_completed: int
    stopped: str                    # "completed" | "max_steps" | "early_stopping" | "time_budget"
    elapsed_s: float                # seconds of the whole run on its clock (wall or cpu), across resumes
    resumed_from: int = 0           # the step this session continued from (0: it started the run)


@dataclass
class RunState:
    """Everything about a run in progress that a checkpoint must carry."""

    loss_sum: Tensor                     # train loss summed since the last row; on the device: no syncs
    loss_count: int = 0
    step: int = 0                        # optimizer steps taken
    done: tuple[int, ...] = (0, -1, 0)   # (epoch, batch, piece) of the last step taken
    epochs_completed: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val: Optional[float] = None
    best_weights: Optional[dict[str, Tensor]] = None
    bad_evals: int = 0                   # validations since the last improvement
    carry: Any = None                    # the detached state handed to the next piece
    elapsed_s: float = 0.0               # seconds spent in earlier sessions of this run


__all__ = ["CLOCKS", "RunState", "TrainConfig", "TrainResult", "check_clock", "device_of"]

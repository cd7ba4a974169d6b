"""The memory lab: train a cell on a long-range memory task and score it against the trivial baseline.

Why LSTM: on the adding problem a vanilla RNN's gradient from the answer back to the first
marker shrinks geometrically with the distance, so past a few dozen steps it learns nothing
and predicts the mean; gated cells keep a path along which the gradient survives. The lab
trains any cell on :mod:`rnnkit.data.memory`'s tasks through the shared trainer, with the
parameter count held fixed across cells (:func:`hidden_for_budget`), and reports the test
error next to the error of the best answer that ignores the sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from ..cells import CELLS
from ..data.memory import (COPY_DELIMITER, COPY_VOCAB, ORDER_ALPHABET, ORDER_CLASSES, adding_problem, copy_task,
                           temporal_order)
from ..errors import DataError, RnnkitError
from ..inspection import InspectionInput, hidden_gradient_norms, parse_values
from ..layers import Recurrent
from ..topologies import ManyToMany, ManyToOne
from .base import Task, TaskConfig

MODEL_TYPE = "memory_lab"
COPY_RECALL = 10  # symbols the copy task asks to remember


@dataclass(frozen=True)
class TaskSpec:
    """What a lab task looks like to a model and how it is scored."""

    input_size: int
    output_size: int
    metric: str        # the test error reported
    baseline: str      # the trivial answer the error is compared with
    solved_below: float  # test error that counts as solved


TASKS: dict[str, TaskSpec] = {
    "adding": TaskSpec(2, 1, "MSE", "always predict 1 (the mean sum)", 0.01),
    "copy": TaskSpec(COPY_VOCAB, COPY_DELIMITER, "symbol error rate", "guess a symbol (1 - 1/8)", 0.05),
    "order": TaskSpec(len(ORDER_ALPHABET), 4, "classification error", "always guess one class (3/4)", 0.05),
}


@dataclass(frozen=True, kw_only=True)
class LabConfig(TaskConfig):
    """One memory-lab experiment; saved in its bundle as ``config.json``."""

    KIND = "lab"

    task: str = "adding"            # "adding", "copy" or "order"
    length: int = 100               # T: the span the memory has to bridge
    cell: str = "lstm"              # any recurrent cell: "lstm", "gru", "rnn", "mingru", "minlstm"
    params: int = 17_500            # parameter budget (an LSTM with 64 units on the adding problem)
    hidden_size: Optional[int] = None  # None = the largest width that fits the budget
    schedule: str = "constant"      # the plateau ends at an unpredictable step: a decayed lr may end it too late
    clip_norm: float = 1.0          # gradients spike when the memory forms
    chrono: bool = True             # chrono init (Tallec & Ollivier, 2018): gate timescales up to T
    train_size: int = 20_000        # samples drawn once; enough that the model cannot memorise them
    test_size: int = 2_000          # held-out samples from another seed
    # Training defaults that differ from TaskConfig's:
    epochs: int = 10_000            # a bound only: the lab is told steps (max_steps), not passes over the data
    max_steps: Optional[int] = 1000  # the adding problem's loss sits on a plateau for hundreds of steps, then drops
    batch_size: int = 64            # cheap on a CPU: the time loop, not the batch, sets the cost
    lr: float = 0.01                # AdamW; high, since the loss plateau is flat until memory forms

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task not in TASKS:
            raise RnnkitError(f"unknown lab task {self.task!r}; choose one of {', '.join(TASKS)}")
        if self.cell not in CELLS:
            raise RnnkitError(f"unknown cell {self.cell!r}; choose one of {', '.join(CELLS)}")
        minimum = 10 if self.task == "order" else 2
        for name, low in (("length", minimum), ("params", 10)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise RnnkitError(f"LabConfig.{name} must be an integer >= {low}, got {value!r}")
        self.check_positive("train_size", "test_size")
        if self.hidden_size is not None:
            self.check_positive("hidden_size")
        if self.schedule not in ("constant", "cosine"):
            raise RnnkitError(f"LabConfig.schedule must be 'constant' or 'cosine', got {self.schedule!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LabConfig":
        """The inverse of ``to_dict``; bundles written before the task contract called ``max_steps`` ``steps``."""
        if "steps" in data and "max_steps" not in data:
            data = {("max_steps" if key == "steps" else key): value for key, value in data.items()}
        return super().from_dict(data)

    @property
    def width(self) -> int:
        """The hidden size used: ``hidden_size`` or the budget's."""
        spec = TASKS[self.task]
        return self.hidden_size or hidden_for_budget(self.cell, spec.input_size, spec.output_size, self.params)


def parameter_count(cell: str, input_size: int, output_size: int, hidden_size: int) -> int:
    """Parameters of one recurrent layer plus a linear head ``O (H + 1)``.

    The layer is counted as built (on the meta device, so nothing is allocated): an LSTM, GRU
    or RNN has ``k (H I + H H + 2 H)`` with ``k`` gate blocks, while minGRU and minLSTM have
    no recurrent matrix, only ``k (H I + H)``.
    """
    with torch.device("meta"):
        layer = Recurrent(input_size, hidden_size, cell=cell)
    return sum(p.numel() for p in layer.parameters()) + output_size * (hidden_size + 1)


def hidden_for_budget(cell: str, input_size: int, output_size: int, params: int) -> int:
    """The hidden size whose :func:`parameter_count` comes closest to ``params``.

    The count grows with the hidden size, so a bisection finds the widest layer within the
    budget; the next width up wins if it misses the budget by less.
    """
    count = lambda h: parameter_count(cell, input_size, output_size, h)  # noqa: E731
    low, high = 1, 2
    while count(high) <= params:
        low, high = high, 2 * high
    while high - low > 1:  # count(low) <= params < count(high), or low = 1
        middle = (low + high) // 2
        low, high = (middle, high) if count(middle) <= params else (low, middle)
    return min((low, high), key=lambda h: abs(count(h) - params))


def make_data(task: str, n: int, length: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` samples of ``task`` at ``length``: ``(inputs, targets)``."""
    generate = {"adding": adding_problem, "copy": copy_task, "order": temporal_order}[task]
    return generate(n, length, seed=seed)


def build_model(config: LabConfig) -> nn.Module:
    """The topology for the task: many-to-one (adding, order) or many-to-many (copy)."""
    spec, width = TASKS[config.task], config.width
    topology = ManyToMany if config.task == "copy" else ManyToOne
    model = topology(spec.input_size, spec.output_size, width, cell=config.cell)
    if config.chrono:
        chrono_init(model.recurrent, config.length + (2 * COPY_RECALL if config.task == "copy" else 0))
    return model


def chrono_init(recurrent: Recurrent, max_span: int, generator: Optional[torch.Generator] = None) -> None:
    """Chrono initialisation (Tallec & Ollivier, 2018) of every gated cell in ``recurrent``.

    A gate with bias ``b`` keeps ``sigmoid(b)`` of the memory per step, a time scale of about
    ``1 + e^b`` steps. Drawing ``b = log U[1, max_span - 1]`` spreads the units' time scales
    over every span up to ``max_span``, so some unit remembers for as long as the task needs
    from the first step on. LSTM: forget bias ``b``, input bias ``-b``; GRU: update gate ``b``
    (``h_t = (1 - z) n + z h_{t-1}``); minLSTM: forget ``b``, input ``-b``; minGRU: update gate
    ``-b`` (its ``z`` writes: ``h_t = (1 - z) h_{t-1} + z h~``). minGRU and minLSTM have no
    ``bias_hh``. A vanilla RNN has no gate and is left alone.
    """
    generator = generator or torch.Generator().manual_seed(0)
    kind = recurrent.cell_type
    with torch.no_grad():
        for cell in recurrent.cells:
            if kind == "rnn" or not cell.bias:
                continue
            H = cell.hidden_size
            timescale = torch.log(torch.empty(H).uniform_(1, max(max_span - 1, 2), generator=generator))
            if cell.bias_hh is not None:
                cell.bias_hh.zero_()
            if kind == "lstm":  # gate order i, f, g, o
                cell.bias_ih[:H], cell.bias_ih[H:2 * H] = -timescale, timescale
            elif kind == "minlstm":  # gate order f, i, candidate
                cell.bias_ih[:H], cell.bias_ih[H:2 * H] = timescale, -timescale
            elif kind == "mingru":  # gate order z, candidate
                cell.bias_ih[:H] = -timescale
            else:  # GRU gate order r, z, n
                cell.bias_ih[H:2 * H] = timescale


def lab_loss(task: str):
    """The trainer's ``loss_fn`` for ``task``: MSE (adding) or cross-entropy (copy, order)."""

    def loss_fn(model: nn.Module, batch: tuple[Tensor, ...], state: Any) -> tuple[Tensor, None]:
        x, y = batch
        if task == "adding":
            return nn.functional.mse_loss(model(x).squeeze(1), y), None
        if task == "copy":
            logits, _ = model(x)  # (B, T, 9)
            return nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()), None
        return nn.functional.cross_entropy(model(x), y), None

    return loss_fn


@torch.no_grad()
def score(task: str, model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 500) -> dict[str, float]:
    """Test error of ``model`` on ``(x, y)`` and the trivial baseline's error on the same data."""
    model.eval()
    device = next(model.parameters()).device
    errors, baselines = [], []
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
        if task == "adding":
            errors.append(((model(xb).squeeze(1) - yb) ** 2).sum())
            baselines.append(((1.0 - yb) ** 2).sum())
        elif task == "copy":
            logits, _ = model(xb)
            recall = yb[:, -COPY_RECALL:]  # (B, S): the steps that must write the memory back
            guess = logits[:, -recall.size(1):].argmax(-1)
            errors.append((guess != recall).float().mean(1).sum())
            baselines.append(torch.full((len(xb),), 1 - 1 / 8, device=device).sum())
        else:
            errors.append((model(xb).argmax(-1) != yb).float().sum())
            baselines.append((yb != torch.mode(y).values.to(device)).float().sum())
    n = len(x)
    return {"error": float(sum(errors)) / n, "baseline": float(sum(baselines)) / n}


def gradient_profile(task: str, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Any]:
    """``|dL/dh_t|`` of the first layer on the batch ``(x, y)`` and the ratio ``|dL/dh_1| / |dL/dh_T|``.

    A ratio far below 1 means the loss barely reaches the first steps: the error signal
    from a marker at the start of the sequence has vanished before it could teach anything.
    """
    curve = hidden_gradient_norms(model, lambda: lab_loss(task)(model, (x, y), None)[0])["l0"]
    last = float(curve[-1])
    return {"norms": curve.tolist(), "ratio": float(curve[0]) / last if last > 0 else float("nan")}


class MemoryLab(Task):
    """Train one cell on one memory task and score it; save it as a bundle that ``rnnkit inspect`` reads.

    Example::

        lab = MemoryLab(task="adding", cell="lstm", length=100).fit()
        lab.metrics  # {"error": 0.002, "baseline": 0.167, "solved": True, ...}
        lab.save("adding-lstm.rnnkit")
    """

    name = "lab"
    model_type = MODEL_TYPE
    config_class = LabConfig
    request_schema = {"type": "object", "required": ["input"], "additionalProperties": False, "properties": {
        "input": {"type": "string", "description": "one sequence as `rnnkit inspect --input` reads it: adding, "
                  "lines of value,marker; copy, digits 0-9; order, letters of abcdXYBE"}}}
    response_schema = {"type": "object", "properties": {
        "answer": {"type": ["number", "string"], "description": "adding: the marked sum; copy: the symbol "
                   "written at each step, as digits; order: XX, XY, YX or YY"}}}
    config: LabConfig

    @property
    def spec(self) -> TaskSpec:
        return TASKS[self.config.task]

    def test_data(self) -> tuple[Tensor, Tensor]:
        """The held-out samples (a seed apart from the training data's)."""
        cfg = self.config
        return make_data(cfg.task, cfg.test_size, cfg.length, seed=cfg.seed + 1_000_003)

    def _fit(self) -> None:
        """Draw the data, train through the shared trainer, score on the test set."""
        cfg = self.config
        torch.manual_seed(cfg.seed)
        self.model = self.build_model()
        train = make_data(cfg.task, cfg.train_size, cfg.length, seed=cfg.seed)
        # Validation (which picks the best weights) has its own seed, so the test set stays unseen.
        val = make_data(cfg.task, min(500, cfg.test_size), cfg.length, seed=cfg.seed + 2_000_003)
        self.train_results = []
        result = self.train(self.model, lab_loss(cfg.task), train, val, schedule=cfg.schedule, weight_decay=0.0,
                            clip_norm=cfg.clip_norm, eval_every=max(1, min(100, (cfg.max_steps or 1000) // 10)))
        self.model.cpu().eval()
        scores = score(cfg.task, self.model, *self.test_data())
        self.metrics = {"task": cfg.task, "cell": cfg.cell, "length": cfg.length, "hidden_size": cfg.width,
                        "params": sum(p.numel() for p in self.model.parameters()), "metric": self.spec.metric,
                        "error": scores["error"], "baseline": scores["baseline"],
                        "solved": scores["error"] < self.spec.solved_below, "solved_below": self.spec.solved_below,
                        "steps": result.steps, "seconds": round(result.elapsed_s, 1)}

    def build_model(self) -> nn.Module:
        return build_model(self.config)

    @torch.no_grad()
    def predict_json(self, request: dict[str, Any]) -> dict[str, Any]:
        x = self.inspection_input(request["input"]).x  # (1, T, I)
        task = self.config.task
        if task == "adding":
            return {"answer": float(self.model(x)[0, 0])}
        if task == "copy":
            logits, _ = self.model(x)  # (1, T, 9)
            return {"answer": "".join(str(int(i)) for i in logits[0].argmax(-1))}
        return {"answer": ORDER_CLASSES[int(self.model(x)[0].argmax())]}

    def gradient_profile(self, batch: int = 64) -> dict[str, Any]:
        """:func:`gradient_profile` of the trained model on a test batch."""
        self.require_fitted()
        return gradient_profile(self.config.task, self.model, *(t[:batch] for t in self.test_data()))

    # ------------------------------------------------------------------- inspection

    def inspection_recurrent(self) -> Recurrent:
        self.require_fitted()
        return self.model.recurrent

    def inspection_input(self, source: str) -> InspectionInput:
        """Adding: lines of ``value,marker``; copy: digits 0-9; order: letters of ``abcdXYBE``."""
        task = self.config.task
        if task == "adding":
            steps = parse_values(source, 2, "adding-problem input")
            if not np.isin(steps[:, 1], (0.0, 1.0)).all():
                raise DataError("adding-problem markers (the second number of each step) must be 0 or 1")
            x = torch.as_tensor(steps, dtype=torch.float32)[None]  # (1, T, 2)
            labels = [f"{v:.2f}" + ("*" if m else "") for v, m in steps]
            running = np.cumsum(steps[:, 0] * steps[:, 1])  # what a unit must hold: the marked sum so far
            return InspectionInput(x, labels, {"marked_sum": running, "marker": steps[:, 1]}, "adding problem")
        text = source.strip()
        alphabet = "0123456789" if task == "copy" else ORDER_ALPHABET
        bad = next((i for i, ch in enumerate(text) if ch not in alphabet), None)
        if bad is not None or not text:
            what = f"{text[bad]!r} at position {bad}" if bad is not None else "no characters"
            raise DataError(f"the {task} task reads only the characters {alphabet!r}, got {what}; "
                            f"e.g. --input {'3517000000009' if task == 'copy' else 'BacXdbcYdaE'}")
        ids = torch.tensor([alphabet.index(ch) for ch in text])
        x = nn.functional.one_hot(ids, len(alphabet)).float()[None]  # (1, T, V)
        relevant = np.array([ch in "XY123456789" for ch in text], dtype=float)
        return InspectionInput(x, list(text), {"relevant": relevant, "seen_relevant": np.cumsum(relevant)},
                               f"{task} task")


__all__ = ["LabConfig", "MemoryLab", "TASKS", "build_model", "chrono_init", "gradient_profile", "hidden_for_budget", "lab_loss",
           "make_data", "parameter_count", "score"]

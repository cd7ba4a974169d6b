"""The task contract: what every application implements once, and what it gets for it.

A task is a thin estimator over a torch module. It implements five things:

- ``_fit(*data)``: prepare the data (tokenizers, scalers, ...), build ``self.model`` with
  :meth:`build_model`, train it with :meth:`train` (the one trainer, the shared options);
- ``build_model()``: the untrained module, from ``self.config`` and the preprocessing state;
- ``preprocessing()`` / ``restore(state)``: that state as JSON and back (vocabularies, classes,
  scalers): what a bundle needs beside the weights;
- ``predict_json(request) -> response``: one prediction with JSON in and JSON out, described by
  the class's ``request_schema`` and ``response_schema`` (:mod:`rnnkit.tasks.schema`);
- optionally ``stream_json(request)``: the same request answered piece by piece (generation);
  and, to let a server step many such streams together as one batch, ``open_stream(request)``
  and ``step_streams(slots)`` (see :class:`StreamSlot`), which sets ``batches_streams``.

and declares ``name`` (the CLI's and the server's word for it), ``model_type`` (the bundle's)
and ``config_class`` (a :class:`TaskConfig`). In return it gets ``fit(..., checkpoint_dir,
resume)``, ``save``, ``from_bundle``, ``rnnkit.load``, ``rnnkit info``, ``rnnkit predict`` and the
shared options of every ``train`` command, without a line of its own: defining the class
registers it.

The shared training options live in :class:`TaskConfig`, which every task's config extends, and
reach the trainer through one mapping (:meth:`TaskConfig.train_config`). A task that trains
with other defaults redeclares only those fields, each with a comment saying why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Iterator, Optional, Sequence, TypeVar, Union

from torch import Tensor, nn

from ..bundle import Bundle, load_weights, read_bundle, register, save_bundle
from ..config import JsonConfig
from ..errors import BundleError, RnnkitError
from ..training import TrainConfig, TrainResult, budget_fill, budget_shares, fit
from ..training.distributed import is_main
from .schema import Schema, check

T = TypeVar("T", bound="Task")
PathLike = Union[str, Path]

#: model_type -> its task class, filled as task classes are defined
TASKS: dict[str, type["Task"]] = {}

#: optimizer steps between checkpoints of a fit given a checkpoint_dir (a kill loses at most these)
CHECKPOINT_EVERY = 50


@dataclass(frozen=True, kw_only=True)
class TaskConfig(JsonConfig):
    """The options every task shares: how long and how it trains. Validated on construction.

    ``epochs``, ``max_steps`` and ``minutes`` bound a fit, whichever ends first; ``clock`` says
    what ``minutes`` count; ``precision="bf16"`` trains under bfloat16 autocast (see
    :class:`~rnnkit.training.TrainConfig` for each). A task config adds its model's options.
    """

    epochs: int = 20                   # an upper bound: early stopping or the time budget usually ends first
    max_steps: Optional[int] = None    # optimizer steps of one fit (per ensemble member); None = epochs decide
    minutes: Optional[float] = None    # time budget of one fit (all ensemble members together)
    clock: str = "wall"                # what minutes count: "wall" time or this process's "cpu" time
    precision: str = "fp32"            # "bf16" on CPUs that multiply bfloat16 natively (AVX-512 BF16, AMX)
    batch_size: int = 32
    lr: float = 3e-3
    patience: Optional[int] = None     # validations without improvement before stopping early
    seed: int = 0                      # data splits, initial weights, batch order
    progress: bool = True              # a rich progress bar; off in scripts and tests

    def __post_init__(self) -> None:
        try:
            self.train_config()  # the trainer's own checks of the shared fields
        except RnnkitError as exc:
            raise RnnkitError(str(exc).replace("TrainConfig.", f"{type(self).__name__}.", 1)) from None

    def train_config(self, **overrides: Any) -> TrainConfig:
        """The :class:`TrainConfig` of one fit: the shared fields, then the task's ``overrides``."""
        shared = {f.name: getattr(self, f.name) for f in fields(TaskConfig)}
        return TrainConfig(**{**shared, **overrides})

    def check_positive(self, *names: str) -> None:
        """Raise the one-line error for the first of ``names`` that is not an integer >= 1."""
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise RnnkitError(f"{type(self).__name__}.{name} must be a positive integer, got {value!r}")


class Task:
    """Base class of every rnnkit application (see the module docstring for the contract)."""

    name: ClassVar[str]                      # the CLI sub-command and server route: "classify"
    model_type: ClassVar[str]                # written in bundles: "sequence_classifier"
    config_class: ClassVar[type[TaskConfig]]
    request_schema: ClassVar[Schema] = {"type": "object"}
    response_schema: ClassVar[Schema] = {"type": "object"}
    streams: ClassVar[bool] = False          # set for the class: it implements stream_json
    batches_streams: ClassVar[bool] = False  # set for the class: it implements open_stream and step_streams

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # What a task can do follows from what it implements, so a declaration cannot contradict it.
        cls.streams = cls.stream_json is not Task.stream_json
        cls.batches_streams = cls.open_stream is not Task.open_stream and cls.step_streams is not Task.step_streams
        if "model_type" in cls.__dict__:  # a concrete task: rnnkit.load finds it by its model_type
            register(cls.model_type)(cls.from_bundle)
            TASKS[cls.model_type] = cls

    def __init__(self, config: Optional[TaskConfig] = None, **options: Any) -> None:
        if config is not None and options:
            raise RnnkitError(f"pass a {self.config_class.__name__} or options, not both")
        if config is not None and not isinstance(config, self.config_class):
            raise RnnkitError(f"config must be a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config if config is not None else self.config_class(**options)
        self.model: Optional[nn.Module] = None
        self.metrics: dict[str, Any] = {}
        self.train_results: list[TrainResult] = []
        self._checkpoints: tuple[Optional[Path], bool, int] = (None, False, CHECKPOINT_EVERY)

    # ------------------------------------------------------------------ what a task implements

    def _fit(self, *data: Any, **options: Any) -> None:
        raise NotImplementedError

    def build_model(self) -> nn.Module:
        """The untrained module, built from ``self.config`` and the preprocessing state."""
        raise NotImplementedError

    def preprocessing(self) -> dict[str, Any]:
        """The JSON-able state besides the weights that predicting needs (vocabularies, scalers...)."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`preprocessing` returned."""

    def predict_json(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer one ``request`` (``request_schema``) with a JSON-able dict (``response_schema``)."""
        raise NotImplementedError

    def stream_json(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Answer ``request`` piece by piece (a generating task implements it, which sets ``streams``)."""
        raise RnnkitError(f"the {self.name} task does not stream; use predict")

    def open_stream(self, request: dict[str, Any]) -> "StreamSlot":
        """Start answering ``request`` piece by piece: a slot that :meth:`step_streams` advances."""
        raise RnnkitError(f"the {self.name} task cannot step streams together; use stream_json")

    def step_streams(self, slots: list["StreamSlot"]) -> list[list[dict[str, Any]]]:
        """Advance every slot one step, all as one batch; return each slot's new pieces (maybe none).

        A slot that has ended comes back with ``done`` set and its last pieces; each slot keeps
        its own state and options, so slots may join and leave between any two steps.
        """
        raise RnnkitError(f"the {self.name} task cannot step streams together; use stream_json")

    # ------------------------------------------------------------------ what every task gets

    def fit(self: T, *data: Any, checkpoint_dir: Optional[PathLike] = None, resume: bool = False,
            checkpoint_every: int = CHECKPOINT_EVERY, **options: Any) -> T:
        """Train on ``data`` (the task says what it takes). With ``checkpoint_dir`` the run is
        checkpointed there every ``checkpoint_every`` steps (one subdirectory per ensemble
        member); ``resume=True`` continues a run that was stopped, on the same data and config,
        ending with the weights an uninterrupted run would have."""
        if resume and checkpoint_dir is None:
            raise RnnkitError("resume=True needs the checkpoint_dir of the run to continue")
        self._checkpoints = (None if checkpoint_dir is None else Path(checkpoint_dir), resume, checkpoint_every)
        self._fit(*data, **options)
        if self.model is not None:
            self.model.eval()
        return self

    def train(self, model: nn.Module, loss_fn: Any, train: Any, val: Any = None, *, member: int = 0,
              lengths: Optional[Tensor] = None, layer_groups: Optional[Sequence[Sequence[nn.Parameter]]] = None,
              **overrides: Any) -> TrainResult:
        """Train ``model`` (one ensemble ``member``) with the shared trainer and options, plus the
        task's ``overrides`` of :class:`~rnnkit.training.TrainConfig`; record the result.
        ``layer_groups`` (bottom to top) take the trainer's discriminative rates and unfreezing."""
        directory, resume, every = self._checkpoints
        member_dir = None if directory is None else directory / f"member{member}"
        if member_dir is not None:
            overrides.setdefault("checkpoint_every", every)
        resume_member = resume and member_dir is not None and (member_dir / "checkpoint.safetensors").exists()
        if resume and member_dir is not None and not resume_member and member == 0:
            raise RnnkitError(f"--resume: no checkpoint in {member_dir}; start without --resume")
        result = fit(model, loss_fn, train, val, self.config.train_config(**overrides),
                     checkpoint_dir=member_dir, resume=resume_member, lengths=lengths, layer_groups=layer_groups)
        self.train_results.append(result)
        return result

    def member_budgets(self, members: Sequence[nn.Module], fill: bool = False
                       ) -> Iterator[tuple[int, nn.Module, Optional[float]]]:
        """``(k, member, minutes)`` for each ensemble member, trained one after another: each gets an
        equal share of what is left of ``config.minutes`` (on ``config.clock``) when it starts, so
        time one member leaves unused goes to the next (``minutes`` is None without a budget).
        With ``fill``, each gets all that is left instead, and the members stop coming when what
        is left is less than the last one took (:func:`~rnnkit.training.budget_fill`)."""
        share = budget_fill if fill else budget_shares
        budgets = share(self.config.minutes, len(members), self.config.clock)
        return ((k, member, minutes) for k, (member, minutes) in enumerate(zip(members, budgets)))

    def training_summary(self) -> dict[str, Any]:
        """Steps and why each member stopped, for ``metrics``."""
        results = self.train_results
        summary = {"steps": sum(r.steps for r in results),
                   "stopped": ", ".join(dict.fromkeys(r.stopped for r in results)) or "not trained"}
        if any(r.resumed_from for r in results):
            summary["resumed_from"] = [r.resumed_from for r in results]
        return summary

    def save(self, path: PathLike) -> Path:
        """Write a bundle directory: config, weights, preprocessing state and metrics (with history).

        Under ``torchrun`` only rank 0 writes it (every worker holds the same weights)."""
        self.require_fitted()
        if not is_main():
            return Path(path)
        history = [r.history for r in self.train_results]
        return save_bundle(path, model_type=self.model_type, config=self.config.to_dict(), model=self.model,
                           preprocessing=self.preprocessing(), metrics={**self.metrics, "history": history})

    @classmethod
    def from_bundle(cls: type[T], bundle: Bundle) -> T:
        """Rebuild a fitted task from a bundle read by :func:`rnnkit.bundle.read_bundle`."""
        try:
            task = cls(cls.config_class.from_dict(bundle.config))
            task.restore(bundle.preprocessing)
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{bundle.path} has a {bundle.model_type} bundle this rnnkit cannot read "
                              f"({type(exc).__name__}: {exc}); re-save it with the rnnkit that wrote it, "
                              "or train it again") from None
        task.model = task.build_model()
        load_weights(task.model, bundle)
        task.model.eval()
        task.metrics = {k: v for k, v in bundle.metrics.items() if k != "history"}
        return task

    @classmethod
    def load(cls: type[T], path: PathLike) -> T:
        """Load a bundle of this task; another task's bundle is refused, naming both."""
        bundle = read_bundle(path)
        if bundle.model_type != cls.model_type:
            raise BundleError(f"{bundle.path} holds a {bundle.model_type!r} model, not a {cls.model_type!r} "
                              f"one; pass a bundle written by `rnnkit {cls.name} train`")
        return cls.from_bundle(bundle)

    def check_request(self, request: Any) -> None:
        """Refuse, in one line, a request to an unfitted model or one that breaks ``request_schema``."""
        self.require_fitted()
        check(request, self.request_schema)

    def predict_checked(self, request: Any) -> dict[str, Any]:
        """``predict_json`` after :meth:`check_request`."""
        self.check_request(request)
        return self.predict_json(request)

    def merge_pieces(self, pieces: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Consecutive pieces of one stream as fewer pieces that mean the same, for a client that
        fell behind (a server sends what has piled up in one event). Default: as they are."""
        return pieces

    def refusal(self, request: Any) -> Optional[RnnkitError]:
        """The error :meth:`check_request` raises for ``request``, or None when it may be answered."""
        try:
            self.check_request(request)
        except RnnkitError as exc:
            return exc
        return None

    def predict_many(self, requests: Sequence[Any]) -> list[Any]:
        """Per request, in order, its response or the exception that refused or failed it.

        A server hands over every request waiting for the model at once. This default answers
        them one by one with :meth:`predict_checked`; a task that can answer several in one batch
        (one forward for all) overrides it, screening each with :meth:`refusal` first so that a
        bad request is refused on its own.
        """
        answers = []
        for request in requests:
            try:
                answers.append(self.predict_checked(request))
            except Exception as exc:  # handed back: the caller answers each request
                answers.append(exc)
        return answers

    def stream_checked(self, request: Any) -> Iterator[dict[str, Any]]:
        """``stream_json`` after :meth:`check_request`."""
        self.check_request(request)
        return self.stream_json(request)

    def open_stream_checked(self, request: Any) -> "StreamSlot":
        """``open_stream`` after :meth:`check_request`."""
        self.check_request(request)
        return self.open_stream(request)

    def require_fitted(self) -> None:
        if self.model is None:
            raise RnnkitError(f"this {self.name} model is not fitted yet; call fit(...) or load a bundle")

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """What a client needs to know: the names, the JSON schemas, and whether it streams."""
        return {"task": cls.name, "model_type": cls.model_type, "streams": cls.streams,
                "request": cls.request_schema, "response": cls.response_schema}


class StreamSlot:
    """One answer in progress that :meth:`Task.step_streams` advances together with others.

    A task subclasses it to hold what one stream needs between steps (its recurrent state,
    sampling options, random generator, text held back); ``done`` turns true at its end.
    """

    done: bool = False


def dumps(value: Any) -> str:
    """JSON text of a response: compact, UTF-8 as is, NaN refused (it is not JSON)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


__all__ = ["CHECKPOINT_EVERY", "StreamSlot", "TASKS", "Task", "TaskConfig", "dumps"]

"""The options every ``train`` command shares, declared once.

``@training_options(minutes=5.0)`` adds to a command the budget (``--minutes``, ``--max-steps``,
``--epochs``), ``--seed``, ``--precision``, ``--progress/--no-progress`` and the checkpoint pair
``--checkpoint-dir DIR`` / ``--resume``, and hands the command one :class:`TrainingOptions`
argument named ``training`` in their place::

    @app.command()
    @training_options(minutes=5.0)
    def train(corpus: Path, out: Path, training: TrainingOptions) -> None:
        config = TextGeneratorConfig(hidden_size=..., **training.config_fields())
        TextGenerator(config).fit(read_text(corpus), **training.fit_options()).save(out)

The options are spliced into the command's signature (which is what Typer reads), so they
appear in every ``--help`` under the same names with the same meaning; the task config checks
their values as it checks any other field.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from ..cells import CELLS
from ..errors import RnnkitError
from ..tasks.base import CHECKPOINT_EVERY
from . import Precision

#: the help text of every --cell option, from the cell registry (a new cell shows up by itself)
CELL_HELP = "Recurrent cell: " + ", ".join(CELLS) + "."

#: the ``--out`` of every ``train`` command
BundleOut = Annotated[Path, typer.Option(help="Bundle directory to write.")]


@dataclass(frozen=True)
class TrainingOptions:
    """The shared options of one ``train`` invocation, as the command received them."""

    minutes: Optional[float]         # None: the command's default_minutes, unless steps or epochs bound the run
    max_steps: Optional[int]
    epochs: Optional[int]
    seed: int
    precision: str
    progress: bool
    checkpoint_dir: Optional[Path]
    resume: bool
    default_minutes: Optional[float] = None

    def __post_init__(self) -> None:
        if self.resume and self.checkpoint_dir is None:
            raise RnnkitError("--resume needs --checkpoint-dir DIR: the directory of the run to continue")

    def config_fields(self) -> dict[str, Any]:
        """The :class:`~rnnkit.tasks.base.TaskConfig` fields these options set. An option left
        out (``--epochs``, ``--max-steps``) keeps the task's default."""
        fields = dict(minutes=self.budget_minutes(), seed=self.seed, precision=self.precision,
                      progress=self.progress)
        for name in ("max_steps", "epochs"):
            if getattr(self, name) is not None:
                fields[name] = getattr(self, name)
        return fields

    def budget_minutes(self) -> Optional[float]:
        """``--minutes`` if given; else the command's default, unless ``--max-steps`` or
        ``--epochs`` bound the run (a run bounded by steps alone is reproducible, and resumes
        bit for bit: a clock-bound one's schedule follows the clock)."""
        if self.minutes is not None:
            return self.minutes
        return None if self.max_steps is not None or self.epochs is not None else self.default_minutes

    def fit_options(self) -> dict[str, Any]:
        """The keyword arguments of ``Task.fit`` that checkpoint and resume the run."""
        return dict(checkpoint_dir=self.checkpoint_dir, resume=self.resume)


def _shared_parameters(minutes: Optional[float]) -> list[inspect.Parameter]:
    default = "no time limit" if minutes is None else f"{minutes:g} unless --max-steps or --epochs is given"
    option = keyword_option
    return [
        option("minutes", Annotated[Optional[float], typer.Option(
            help=f"Training budget in wall-clock minutes, all ensemble members together (default: {default}).",
            show_default=False)], None),
        option("max_steps", Annotated[Optional[int], typer.Option(
            help="Stop after this many optimizer steps, per ensemble member (default: the task's).",
            show_default=False)], None),
        option("epochs", Annotated[Optional[int], typer.Option(
            help="Stop after this many passes over the data (default: the task's).", show_default=False)], None),
        option("seed", Annotated[int, typer.Option(help="Random seed: data split, weights, batch order.")], 0),
        option("precision", Precision, "fp32"),
        option("progress", Annotated[bool, typer.Option(help="Show the progress bar.")], True),
        option("checkpoint_dir", Annotated[Optional[Path], typer.Option(
            help=f"Checkpoint the run here every {CHECKPOINT_EVERY} steps, so that --resume can continue it.")],
            None),
        option("resume", Annotated[bool, typer.Option(
            help="Continue the run checkpointed in --checkpoint-dir (same data and options); bounded by "
                 "--max-steps or --epochs, it ends with the weights of an uninterrupted run.")], False),
    ]


def training_options(minutes: Optional[float] = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command the shared training options, with ``minutes`` as its default budget; the
    command takes them as one ``training: TrainingOptions`` parameter."""
    return option_group("training", _shared_parameters(minutes),
                        lambda **values: TrainingOptions(**values, default_minutes=minutes))


def option_group(name: str, options: list[inspect.Parameter],
                 build: Callable[..., Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Splice ``options`` (keyword-only parameters, as Typer reads them) into a command's
    signature, and hand the command ``build(**their values)`` as its parameter ``name`` instead:
    one declaration for options that several commands share."""
    names = [p.name for p in options]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command, eval_str=True)
        if name not in signature.parameters:
            raise TypeError(f"{command.__name__} must take a `{name}` parameter")
        own = [p for p in signature.parameters.values() if p.name != name]
        clash = sorted(set(names) & {p.name for p in own})
        if clash:
            raise TypeError(f"{command.__name__} declares options of its `{name}` group itself: {', '.join(clash)}")

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            group = build(**{option: kwargs.pop(option) for option in names})
            return command(**{name: group}, **kwargs)

        parameters = own + options
        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        del wrapper.__wrapped__  # Typer must read the new signature, not the command's
        return wrapper

    return decorate


def keyword_option(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    """One option of an :func:`option_group`."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


__all__ = ["CELL_HELP", "BundleOut", "TrainingOptions", "keyword_option", "option_group", "training_options"]

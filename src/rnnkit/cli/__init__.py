"""The ``rnnkit`` command line: one Typer app, a sub-app per task, joined in one place.

Errors. A user error, ``RnnkitError`` or ``OSError`` (permission denied, disk full, ...),
raised by any command becomes ONE line ``error: <message>`` on stderr and exit code 2,
without a traceback; Ctrl-C becomes ``interrupted`` and exit code 130. Any other exception
is a bug and keeps its traceback. The handling lives in the app's group class
(:class:`RnnkitGroup`), so it covers every command and every sub-app joined below it, and
``typer.testing.CliRunner().invoke(app, [...])`` sees exactly what a user sees. ``run()``
and ``main()`` handle the same errors once more around argument parsing, before any
command runs (e.g. from an option callback).

Adding to the CLI. A task's commands live in ``rnnkit/cli/<task>.py`` on their own
``app = create_app("...")`` (so the sub-app alone is also testable with the same
handling) and are joined by one line in :data:`COMMANDS`; a single command (``demo``) the
same way, naming its function. A command's module is imported only when that command runs
(or its own ``--help`` is asked for): ``rnnkit --help`` and ``rnnkit info`` start without
loading the task modules, pandas or matplotlib. A plugin may still join a sub-app eagerly
with ``app.add_typer(sub_app, name=...)``.
"""

from __future__ import annotations

import errno
import importlib
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Annotated, Any, NoReturn, Optional, Sequence

import click
import typer
from typer.core import TyperGroup

from ..errors import RnnkitError
from ..version import __version__

#: the --precision option of every training command (rnnkit/precision.py)
Precision = Annotated[str, typer.Option(help="fp32, or bf16: faster on CPUs with AVX-512 BF16 or AMX.")]

EXIT_ERROR = 2  # like a usage error: the command could not do what was asked
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


def report_error(exc: BaseException) -> Optional[int]:
    """Print a user error as one line on stderr and return the exit code, or ``None``
    for an exception that is a bug and should keep its traceback."""
    if isinstance(exc, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    if isinstance(exc, RnnkitError):
        message = str(exc)
    elif isinstance(exc, OSError) and exc.errno != errno.EPIPE:  # click handles a closed pipe
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        message = f"{exc.strerror or exc}: {where}" if where else str(exc.strerror or exc)
    else:
        return None
    # One line whatever the message holds; echo, not rich, so "[...]" is printed as is.
    typer.echo("error: " + " ".join(message.split()), err=True)
    return EXIT_ERROR


class RnnkitGroup(TyperGroup):
    """A Typer group that turns user errors from any command below it into one line."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (RnnkitError, OSError, KeyboardInterrupt) as exc:
            code = report_error(exc)
            if code is None:
                raise
            raise typer.Exit(code) from None


def create_app(help: str, **settings: Any) -> typer.Typer:
    """A Typer app with rnnkit's settings and error handling, for the root and each task."""
    defaults: dict[str, Any] = dict(
        cls=RnnkitGroup, no_args_is_help=True, rich_markup_mode="rich",
        pretty_exceptions_enable=False, context_settings={"help_option_names": ["-h", "--help"]})
    return typer.Typer(help=help, **{**defaults, **settings})


#: Every built-in command, in the order ``rnnkit --help`` lists them: its name, the module of
#: ``rnnkit.cli`` and the attribute there (a command function or a task's Typer sub-app), and
#: its line in ``rnnkit --help``, which a test keeps equal to the command's own help.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "info": ("info", "info", "Show a model bundle: model type, versions, config, weights, preprocessing and metrics."),
    "predict": ("predict", "predict",
                "Answer one JSON request with a model bundle of any task; print the JSON answer."),
    "demo": ("demo", "demo", "Forecast sunspots; translate dates with attention; generate Shakespeare; classify "
             "tweet sentiment;\nwrite a chorale."),
    "lab": ("lab", "lab", "Train a cell on a long-range memory task; print its test error next to the trivial "
            "baseline."),
    "inspect": ("lab", "inspect", "Trace every gate and the cell state of BUNDLE's model on an input; plot them; "
                "name feature cells."),
    "export": ("export", "export",
               "Export a model to ONNX (dynamic batch and time axes), each graph checked in onnxruntime."),
    "serve": ("serve", "serve", "Serve model bundles over HTTP: /v1/models, /v1/NAME/predict, /v1/NAME/generate "
              "(SSE), /docs,\nand a web playground at /."),
    "forecast": ("forecast", "app",
                 "Forecast time series (CSV: unique_id, ds, y [, covariates]; or one date,value series)."),
    "translate": ("translate", "app",
                  "Translate sentences with an encoder-decoder LSTM/GRU and attention (TSV: source TAB target)."),
    "textgen": ("textgen", "app", "Train language models on a text file and generate text from them."),
    "classify": ("classify", "app",
                 "Classify texts (sentiment, topics, ...) with a recurrent network, from CSV files."),
    "music": ("music", "app",
              "Learn music from Bach's chorales or your own MIDI/MusicXML files, and write new pieces."),
    "chat": ("chat", "app",
             "A chatbot: an encoder-decoder LSTM that reads the last turns of a conversation and replies."),
    "speech": ("speech", "app",
               "Recognise speech: a CTC recogniser trained on synthetic espeak-ng voices, transcribing WAV files."),
    "caption": ("caption", "app", "Caption images: 2-4 real handwritten digits (scikit-learn's load_digits) side "
                "by side, described as the number in words, with attention over the image's columns."),
}


def load_command(name: str) -> click.Command:
    """Import built-in command ``name``'s module and build its click command, as
    ``app.add_typer``/``app.command`` would have built it at start-up."""
    module, attribute, _ = COMMANDS[name]
    target = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
    holder = create_app("")
    if isinstance(target, typer.Typer):
        holder.add_typer(target, name=name)
    else:
        holder.command(name)(target)
    return typer.main.get_group(holder).commands[name]


class LazyCommands(MutableMapping):
    """The root's commands by name: those of :data:`COMMANDS` are built when first looked up.

    While ``listing`` (``rnnkit --help``), a command not built yet is a stand-in holding its
    line of help, so listing them imports none. Commands joined eagerly come after them.
    """

    def __init__(self, eager: Mapping[str, click.Command]) -> None:
        self.built = dict(eager)
        self.listing = False

    def __getitem__(self, name: str) -> click.Command:
        if name not in self.built:
            if name not in COMMANDS:
                raise KeyError(name)
            if self.listing:
                return click.Command(name, help=COMMANDS[name][2])
            self.built[name] = load_command(name)
        return self.built[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self.built[name] = command

    def __delitem__(self, name: str) -> None:
        del self.built[name]

    def __iter__(self) -> Iterator[str]:
        return iter([*COMMANDS, *(name for name in self.built if name not in COMMANDS)])

    def __len__(self) -> int:
        return len(COMMANDS.keys() | self.built.keys())


class RootGroup(RnnkitGroup):
    """The ``rnnkit`` group, its commands in a :class:`LazyCommands`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = LazyCommands(self.commands)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # the names alone: building each command is for when it runs

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self.commands.listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self.commands.listing = False


app = create_app(
    "[bold]rnnkit[/bold]: recurrent neural networks (RNN, LSTM, GRU) that train fast on a CPU, "
    "explain themselves, and ship.\n\nEvery [cyan]train[/cyan] command writes a model bundle "
    "directory that the other commands and [cyan]rnnkit.load()[/cyan] read.", cls=RootGroup)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"rnnkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", help="Print the version and exit.", callback=_print_version, is_eager=True,
    )] = False,
) -> None:
    # Having a callback keeps ``rnnkit`` a group though its commands join it lazily (COMMANDS).
    pass


def run(args: Optional[Sequence[str]] = None) -> int:
    """Run the command line on ``args`` (default ``sys.argv[1:]``); return the exit code.

    Never raises for user errors or Ctrl-C: they are printed as ``main()`` prints them.
    """
    try:
        app(args=None if args is None else list(args), prog_name="rnnkit")
    except SystemExit as exc:  # typer always ends with one in standalone mode
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        typer.echo(str(exc.code), err=True)
        return 1
    except (RnnkitError, OSError, KeyboardInterrupt) as exc:  # raised before a command runs
        code = report_error(exc)
        if code is None:
            raise
        return code
    return 0


def main() -> NoReturn:
    """The ``rnnkit`` console script."""
    sys.exit(run())

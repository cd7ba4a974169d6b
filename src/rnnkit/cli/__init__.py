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
handling) and are joined in :func:`_add_commands` with ``root.add_typer(app, name=...)``;
a single command (``demo``) with ``root.command("demo")(demo)``.
"""

from __future__ import annotations

import errno
import sys
from typing import Annotated, Any, NoReturn, Optional, Sequence

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


app = create_app(
    "[bold]rnnkit[/bold]: recurrent neural networks (RNN, LSTM, GRU) that train fast on a CPU, "
    "explain themselves, and ship.\n\nEvery [cyan]train[/cyan] command writes a model bundle "
    "directory that the other commands and [cyan]rnnkit.load()[/cyan] read.")


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
    # Having a callback keeps ``rnnkit`` a group even while it has one command.
    pass


def _add_commands(root: typer.Typer) -> None:
    """Join every command and task sub-app to ``root``: the one place to add them."""
    # Imported here so that task modules can import create_app from this package.
    from .info import info
    from .predict import predict

    from .demo import demo
    from .forecast import app as forecast
    from .translate import app as translate
    from .textgen import app as textgen
    from .classify import app as classify
    from .music import app as music
    from .chat import app as chat
    from .speech import app as speech
    from .caption import app as caption
    from .lab import inspect, lab
    from .export import export
    from .serve import serve

    root.command("info")(info)
    root.command("predict")(predict)
    root.command("demo")(demo)
    root.add_typer(forecast, name="forecast")
    root.add_typer(translate, name="translate")
    root.add_typer(textgen, name="textgen")
    root.add_typer(classify, name="classify")
    root.add_typer(music, name="music")
    root.add_typer(chat, name="chat")
    root.add_typer(speech, name="speech")
    root.add_typer(caption, name="caption")
    root.command("lab")(lab)
    root.command("inspect")(inspect)
    root.command("export")(export)
    root.command("serve")(serve)


_add_commands(app)


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

"""``rnnkit predict BUNDLE REQUEST``: any task's prediction, JSON in and JSON out.

The command knows no task: it loads the bundle, checks the request against the task's
``request_schema`` and prints what ``predict_json`` returns (with ``--stream``, one JSON line per
piece of ``stream_json``). It is the server's route without the HTTP, so a request that works
here works there.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..bundle import load
from ..errors import DataError, RnnkitError
from ..tasks.base import Task, dumps
from ..tasks.schema import loads_request


def predict(
    bundle: Annotated[Path, typer.Argument(help="A model bundle directory.", show_default=False)],
    request: Annotated[Optional[str], typer.Argument(
        help="The request as JSON text, @FILE for a JSON file, or - (default) for stdin. "
             "[cyan]rnnkit info BUNDLE[/cyan] shows its schema.", show_default=False)] = "-",
    stream: Annotated[bool, typer.Option(help="Print the answer piece by piece, one JSON line each "
                                              "(generating tasks).")] = False,
) -> None:
    """Answer one JSON request with a model bundle of any task; print the JSON answer."""
    task = load(bundle)
    if not isinstance(task, Task):
        raise RnnkitError(f"{bundle} holds a {type(task).__name__}, which answers no JSON requests")
    body = _parse(_read(request))
    if stream:
        for piece in task.stream_checked(body):
            typer.echo(dumps(piece))
    else:
        typer.echo(dumps(task.predict_checked(body)))


def _read(request: Optional[str]) -> str:
    if request is None or request == "-":
        return sys.stdin.read()
    if request.startswith("@"):
        path = Path(request[1:])
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{path} is not UTF-8 text; a request is a JSON file") from None
    return request


def _parse(text: str) -> Any:
    if not text.strip():
        raise DataError("the request is empty; pass a JSON object, e.g. rnnkit predict BUNDLE '{...}' "
                        "(rnnkit info BUNDLE shows what it takes)")
    return loads_request(text)

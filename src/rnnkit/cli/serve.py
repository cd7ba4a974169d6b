"""``rnnkit serve BUNDLE...``: every bundle behind one HTTP server, with the web playground at ``/``."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import RnnkitError


def serve(
    bundles: Annotated[list[str], typer.Argument(
        help="Bundle directories to serve, each as PATH (named after its directory, less a .rnnkit suffix) or NAME=PATH.",
        show_default=False)],
    host: Annotated[str, typer.Option(help="Address to listen on; 127.0.0.1 keeps it on this machine.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    token: Annotated[Optional[str], typer.Option(
        help="Require 'Authorization: Bearer TOKEN' on /v1 routes (or set RNNKIT_TOKEN).",
        envvar="RNNKIT_TOKEN", show_default=False)] = None,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body accepted (413 above).")] = 1 << 20,
    max_tokens: Annotated[int, typer.Option(help="Most tokens one generation may ask for.")] = 2000,
    max_horizon: Annotated[int, typer.Option(help="Most steps one forecast may ask for.")] = 1000,
    max_batch: Annotated[int, typer.Option(help="Most items in any array of one request.")] = 256,
    max_streams: Annotated[int, typer.Option(help="Most generations one model runs at once.")] = 64,
    access_log: Annotated[bool, typer.Option(help="Log a line per request (off under heavy load saves CPU).")] = True,
) -> None:
    """Serve model bundles over HTTP: /v1/models, /v1/NAME/predict, /v1/NAME/generate (SSE), /docs,
    and a web playground at /."""
    try:
        import uvicorn

        from ..server import Limits, create_app
    except ImportError as exc:
        raise RnnkitError(f"rnnkit serve needs FastAPI and uvicorn ({exc.name} is missing); "
                          "install them with: pip install 'rnnkit[serve]'") from None
    limits = Limits(max_body_bytes=max_body_bytes, max_tokens=max_tokens, max_horizon=max_horizon,
                    max_batch=max_batch, max_streams=max_streams)
    app = create_app(named_bundles(bundles), token=token, limits=limits)
    if token is None and not _is_loopback(host):
        typer.echo(f"warning: serving on {host} without --token: anyone who reaches it can use the models", err=True)
    typer.echo(f"serving {', '.join(app.state.models)} on http://{host}:{port}/ (playground at /, API docs at /docs)",
               err=True)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=access_log)


def named_bundles(arguments: list[str]) -> dict[str, Path]:
    """``PATH`` or ``NAME=PATH`` arguments as name -> path; the name of a bare path is its directory's,
    less a ``.rnnkit`` suffix (``lm.rnnkit`` serves as ``/v1/lm/...``)."""
    named: dict[str, Path] = {}
    for argument in arguments:
        name, sep, path = argument.partition("=")
        if not sep:
            name, path = Path(argument).resolve().name.removesuffix(".rnnkit"), argument
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise RnnkitError(f"model name {name!r} (from {argument!r}) must be letters, digits, '-', '_' or '.'; "
                              "pass NAME=PATH to choose one")
        if name in named:
            raise RnnkitError(f"two bundles are named {name!r}; pass NAME=PATH to tell them apart")
        named[name] = Path(path)
    return named


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"

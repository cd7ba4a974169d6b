"""``rnnkit info BUNDLE``: what a saved model is, read from its files without building it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..bundle import read_bundle, weight_shapes


def info(
    bundle: Annotated[Path, typer.Argument(
        help="A model bundle directory, as written by a [cyan]train[/cyan] command or save().",
        show_default=False,
    )],
) -> None:
    """Show a model bundle: model type, versions, config, weights, preprocessing and metrics."""
    read = read_bundle(bundle)
    shapes = weight_shapes(read)  # from the safetensors header: no tensor is loaded
    parameters = sum(math.prod(shape) for shape in shapes.values())
    size = (read.path / "weights.safetensors").stat().st_size

    summary = _table(f"rnnkit bundle {read.path}")
    summary.add_row("model type", Text(read.model_type))
    summary.add_row("format version", str(read.format_version))
    summary.add_row("saved by rnnkit", Text(read.rnnkit_version))
    summary.add_row("parameters", f"{parameters:,}")
    summary.add_row("tensors", f"{len(shapes):,} ({size:,} bytes)")
    summary.add_row("preprocessing", Text(", ".join(read.preprocessing) or "none"))
    console = Console()  # made per call: CliRunner swaps sys.stdout for each invocation
    console.print(summary)
    for title, values in (("config", read.config), ("metrics", read.metrics)):
        if values:
            table = _table(title)
            for key, value in values.items():
                table.add_row(Text(str(key)), Text(_show(value)))
            console.print(table)


def _table(title: str) -> Table:
    # Text(...) everywhere a value is shown: a "[...]" in a path or config is data, not markup.
    table = Table(title=Text(title), show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    return table


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value if isinstance(value, str) else json.dumps(value)

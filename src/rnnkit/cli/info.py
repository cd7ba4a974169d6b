"""``rnnkit info BUNDLE``: what a saved model is, read from its files, and which paths it runs here.

The summary, config and metrics come from the files alone. The "execution paths" table builds
the model (``rnnkit.load``) and asks ``rnnkit.layers.explain`` which path each recurrent layer's
step (one stream, no gradients: generation, serving) and forward take on this machine, and why.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from torch import nn

from ..bundle import load, read_bundle, weight_shapes
from ..layers import explain
from ..tasks import task_class


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
    task = task_class(read.model_type)
    if task is not None:
        console.print(_task_table(task, read.path))
    console.print(_paths_table(read.path))


def _task_table(task: type, path: Path) -> Table:
    """How to ask the model something: the task's request and response, from its contract."""
    table = _table("task")
    table.add_row("name", Text(task.name))
    table.add_row("streams", "yes: rnnkit predict --stream" if task.streams else "no")
    table.add_row("request", Text(_fields(task.request_schema)))
    table.add_row("response", Text(_fields(task.response_schema)))
    table.add_row("try", Text(f"rnnkit predict {path} '<request JSON>'"))
    return table


def _fields(schema: dict[str, Any]) -> str:
    """One line per top-level field: name, type, required or not, description."""
    required = set(schema.get("required", ()))
    lines = []
    for name, field in schema.get("properties", {}).items():
        kinds = field.get("type", "any")
        kind = " or ".join(kinds) if isinstance(kinds, list) else kinds
        if kind == "array" and "type" in field.get("items", {}):
            kind = f"array of {field['items']['type']}"
        note = f" - {field['description']}" if "description" in field else ""
        lines.append(f"{name}: {kind}{' (required)' if name in required else ''}{note}")
    return "\n".join(lines) or json.dumps(schema)


def _paths_table(path: Path) -> Table:
    """Which path each recurrent layer of the bundle's model runs on this machine, and why; one
    row saying why not where the model cannot be built (an unknown model type, say)."""
    table = Table(title=Text("execution paths (this machine; step: 1 stream, no gradients)"),
                  title_justify="left")
    table.add_column("layer", style="bold")
    table.add_column("")
    table.add_column("path", no_wrap=True)  # a name to grep for, never broken
    table.add_column("why")
    try:
        loaded = load(path)
    except Exception as exc:  # noqa: BLE001 -- only this table needs the model: the rest of `info` stands
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        table.add_row("-", "", "unknown", Text(f"cannot build the model: {why}"))
        return table
    model = loaded if isinstance(loaded, nn.Module) else getattr(loaded, "model", None)
    layers = explain(model) if isinstance(model, nn.Module) else []
    for entry in layers:
        name = Text(f"{entry.name or '(model)'}: {entry.layer}")
        table.add_row(name, "step", entry.step.name, Text(entry.step.reason))
        table.add_row("", "forward", entry.forward.name, Text(entry.forward.reason))
    if not layers:
        table.add_row("-", "", "none", "the model has no recurrent layer")
    return table


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

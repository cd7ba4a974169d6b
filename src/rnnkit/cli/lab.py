"""`rnnkit lab TASK` and `rnnkit inspect BUNDLE`: why LSTM, measured and seen from inside."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import torch
import typer
from rich.console import Console
from rich.table import Table

from ..bundle import load
from ..errors import RnnkitError
from ..inspection import best_cells, gate_traces, plot_gates, read_source, recurrent_of
from ..tasks.memory import TASKS, LabConfig, MemoryLab
from .options import CELL_HELP, TrainingOptions, training_options

@training_options(minutes=None)
def lab(
    task: Annotated[str, typer.Argument(help=f"Memory task: {', '.join(TASKS)}.", show_default=False)],
    training: TrainingOptions,
    cell: Annotated[str, typer.Option(help=CELL_HELP)] = "lstm",
    length: Annotated[int, typer.Option(help="Sequence length T: the span to remember across.")] = 100,
    params: Annotated[int, typer.Option(help="Parameter budget; the hidden size is chosen to fit it.")] = LabConfig.params,
    lr: Annotated[float, typer.Option(help="Learning rate (AdamW).")] = LabConfig.lr,
    chrono: Annotated[bool, typer.Option(help="Chrono-initialise the gate biases to time scales up to T.")] = True,
    out: Annotated[Optional[Path], typer.Option(help="Bundle directory to write (for rnnkit inspect).")] = None,
    threads: Annotated[int, typer.Option(help="Torch threads: a net this small runs fastest on one.")] = 1,
) -> None:
    """Train a cell on a long-range memory task; print its test error next to the trivial baseline."""
    console = Console()  # per call: CliRunner swaps sys.stdout for each invocation
    if threads < 1:
        raise RnnkitError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)  # a second thread only adds synchronisation to 64-unit matmuls
    config = LabConfig(task=task, cell=cell, length=length, params=params, lr=lr, chrono=chrono,
                       **training.config_fields())
    console.print(f"[bold]{task}[/bold] task, T = {length}: {cell.upper()} with {config.width} units "
                  f"(budget {params:,} parameters), {config.max_steps} steps")
    lab_run = MemoryLab(config).fit(**training.fit_options())
    result = lab_run.metrics
    table = Table(title=f"{task}, T = {length}, test set of {config.test_size}")
    for column in ("model", "params", result["metric"]):
        table.add_column(column, justify="left" if column == "model" else "right")
    table.add_row(f"rnnkit {cell.upper()} ({result['hidden_size']} units)", f"{result['params']:,}",
                  f"{result['error']:.4f}")
    table.add_row(f"baseline: {TASKS[task].baseline}", "0", f"{result['baseline']:.4f}")
    console.print(table)
    verdict = "[green]solved[/green]" if result["solved"] else "[red]not solved[/red]"
    console.print(f"{verdict}: test {result['metric']} {result['error']:.4f} "
                  f"({'<' if result['solved'] else '>='} {result['solved_below']}) after {result['steps']} steps "
                  f"in {result['seconds']:.0f} s; baseline {result['baseline']:.4f}")
    if out:
        console.print(f"bundle: {lab_run.save(out)}  (look inside: rnnkit inspect {out} --input ...)")


def inspect(
    bundle: Annotated[Path, typer.Argument(help="A model bundle with a recurrent cell.", show_default=False)],
    input: Annotated[str, typer.Option("--input", help="Text, values, or a file holding either.", show_default=False)],
    plot: Annotated[Path, typer.Option(help="PNG of gate and cell-state heatmaps.")] = Path("gates.png"),
    layer: Annotated[str, typer.Option(help="Layer to draw: l0, l0_reverse, l1, ...")] = "l0",
    units: Annotated[int, typer.Option(help="Most active units to draw.")] = 24,
    top: Annotated[int, typer.Option(help="Cells listed per feature.")] = 3,
) -> None:
    """Trace every gate and the cell state of BUNDLE's model on an input; plot them; name feature cells."""
    console = Console()
    model = load(bundle)
    recurrent = recurrent_of(model)
    example = model.inspection_input(read_source(input))
    traces = gate_traces(recurrent, example.x)
    if layer not in traces:
        raise RnnkitError(f"--layer {layer!r} is not in this model; choose one of {', '.join(traces)}")
    path = plot_gates(traces, example.labels, plot, layer=layer, units=units,
                      title=f"{example.title}: gates of {layer}".strip(": "))
    console.print(f"{len(example.labels)} steps through {recurrent.cell_type.upper()} {layer} "
                  f"({recurrent.hidden_size} units); plot: {path}")
    trace = traces[layer]
    state = "cell" if "cell" in trace else "hidden"
    for name, feature in example.features.items():
        cells = best_cells(trace[state], feature, top)
        listed = ", ".join(f"unit {u} (r = {r:+.2f})" for u, r in cells)
        console.print(f"cells tracking [cyan]{name}[/cyan] ({state} state): {listed}")

"""``rnnkit bench``: run the speed benchmarks and print one table of ratios."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import RnnkitError


def bench(
    quick: Annotated[bool, typer.Option("--quick", help="Fewer repeats and steps: under a minute.")] = False,
    only: Annotated[Optional[list[str]], typer.Option(
        "--only", help="Run only these suites: streaming, fused, scan, precision (repeatable; "
                       "the default is all but precision).")] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Directory for the JSON results (one file per suite); none written if omitted.")] = None,
    build_kernel: Annotated[bool, typer.Option(
        "--build-kernel/--no-build-kernel",
        help="Build the optional compiled kernels first (streaming, scan, GRU, LSTM; needs a C++ compiler; "
             "cached); --no-build-kernel measures what is built already.")] = True,
) -> None:
    """Benchmark rnnkit against torch.nn on this machine: streaming, fused cells, scan cells."""
    from ..bench import DEFAULT_SUITES, SUITES, run_suite

    suites = only or list(DEFAULT_SUITES)
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise RnnkitError(f"unknown suite {unknown[0]!r}; choose from {', '.join(SUITES)}")
    console = Console()
    pairs = (("streaming", "stream"), ("scan", "scan"), ("fused", "gru"), ("fused", "lstm"),
             ("precision", "stream"), ("precision", "scan"), ("precision", "gru"), ("precision", "lstm"))
    wanted = list(dict.fromkeys(kernel for suite, kernel in pairs if suite in suites))
    if build_kernel and wanted:
        from ..cells import kernels

        try:
            with console.status("building the compiled kernels (once; cached)"):
                kernels.build(names=wanted)
        except RnnkitError as exc:  # no compiler: the Python path is measured instead
            console.print(f"[yellow]{exc}")
    table = Table(title="rnnkit vs torch.nn: ratios measured side by side in this run")
    table.add_column("suite")
    table.add_column("figure")
    table.add_column("ratio", justify="right")
    for name in suites:
        with console.status(f"running {name}{' (quick)' if quick else ''}"):
            result = run_suite(name, quick, out, build_kernels=build_kernel)
        for what, ratio in result["ratios"].items():
            table.add_row(name, what, f"{ratio:.3g}")
    console.print(table)
    if out is not None:
        console.print(f"results in {out}/")

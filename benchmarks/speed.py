"""The speed suites in one run: ``python benchmarks/speed.py [--quick]`` prints one table of ratios.

What ``rnnkit bench`` did before the benchmarks left the library: it builds the optional compiled
kernels first (once, cached; ``--no-build-kernel`` measures what is built already), then runs
``streaming``, ``fused`` and ``scan`` (``--only precision`` for the bfloat16 suite, which trains
language models), each against ``torch.nn`` side by side. ``--out DIR`` writes one JSON per suite.
Run it from a checkout; an installed wheel builds its kernels with ``python -m rnnkit.cells.kernels``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from common import DEFAULT_SUITES, SUITES, run_suite  # noqa: E402  benchmarks/common/, beside this script
from rnnkit.cells import kernels  # noqa: E402
from rnnkit.errors import RnnkitError  # noqa: E402

#: the compiled kernel each suite measures
KERNELS = {"streaming": ("stream",), "scan": ("scan",), "fused": ("gru", "lstm"),
           "precision": ("stream", "scan", "gru", "lstm")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="rnnkit vs torch.nn: the speed suites, one table of ratios")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and steps: under a minute")
    parser.add_argument("--only", action="append", choices=list(SUITES), metavar="SUITE",
                        help=f"run only this suite ({', '.join(SUITES)}; repeatable; default: all but precision)")
    parser.add_argument("--out", type=Path, help="directory for the JSON results (one file per suite)")
    parser.add_argument("--no-build-kernel", dest="build_kernel", action="store_false",
                        help="measure the kernels built already; build none")
    args = parser.parse_args(argv)
    suites = args.only or list(DEFAULT_SUITES)
    console = Console()
    wanted = list(dict.fromkeys(k for suite in suites for k in KERNELS[suite]))
    if args.build_kernel:
        try:
            with console.status("building the compiled kernels (once; cached)"):
                kernels.build(names=wanted)
        except RnnkitError as exc:  # no compiler: the Python path is measured instead
            console.print(f"[yellow]{exc}")
    table = Table(title="rnnkit vs torch.nn: ratios measured side by side in this run")
    for column in ("suite", "figure"):
        table.add_column(column)
    table.add_column("ratio", justify="right")
    for name in suites:
        with console.status(f"running {name}{' (quick)' if args.quick else ''}"):
            result = run_suite(name, args.quick, args.out, build_kernels=args.build_kernel)
        for what, ratio in result["ratios"].items():
            table.add_row(name, what, f"{ratio:.3g}")
    console.print(table)
    if args.out is not None:
        console.print(f"results in {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The speed suites and the timing helpers the benchmark scripts share; the library never imports them.

Four suites, each a module with ``run(quick) -> dict`` (a ``"ratios"`` entry holds its
headline figures, everything else the raw measurements):

- ``streaming``: one step of a 2-layer LSTM for one stream against ``torch.nn.LSTM`` and the
  memory floor; batched generation for 64 streams;
- ``fused``: LayerNorm/peephole LSTM and GRU training against ``torch.nn``; bfloat16;
- ``scan``: minGRU/minLSTM training against ``torch.nn.LSTM`` at T=1024; the adding problem.
- ``precision``: training in bfloat16 against float32, its speed and its held-out cost
  (``benchmarks/speed.py`` runs it only with ``--only precision``: it trains language models).

``benchmarks/speed.py`` runs the speed suites and prints one table of ratios; the scripts
``benchmarks/streaming.py``, ``fused_cells.py``, ``scan_cells.py`` and ``precision.py`` run one
suite each and write ``benchmarks/results/<name>.json``. The scripts import this package by
path (``benchmarks/`` is the script's own directory, first on ``sys.path``), from a checkout.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

from .timing import write_result

#: suite name -> (JSON file name, runner)
SUITES: dict[str, tuple[str, str]] = {
    "streaming": ("streaming", "common.streaming"),
    "fused": ("fused_cells", "common.fused"),
    "scan": ("scan_cells", "common.scan"),
    "precision": ("precision", "common.precision"),
}
#: what ``benchmarks/speed.py`` runs unless told ``--only``: the speed suites, a minute in all when quick
#: (precision also trains language models to score them: minutes, so only when asked for)
DEFAULT_SUITES = ("streaming", "fused", "scan")


_BUILD_KERNELS = [True]  # what run_suite(build_kernels=...) asks of the suite it runs


def kernel_path(name: str) -> str:
    """Which path a suite measures for the optional compiled kernel ``name`` (built now if need
    be and possible, unless the suite runs with ``build_kernels=False``): ``"compiled kernel"``
    or ``"python ops (why)"``."""
    import os

    from rnnkit.cells import kernels
    from rnnkit.errors import RnnkitError

    if os.environ.get("RNNKIT_KERNELS", "1") == "0":
        return "python ops (RNNKIT_KERNELS=0)"
    if _BUILD_KERNELS[0]:
        try:
            kernels.build(names=[name])
        except RnnkitError as exc:
            return f"python ops ({exc})"
    if kernels.kernel(name) is not None:
        return "compiled kernel"
    return "python ops" if _BUILD_KERNELS[0] else "python ops (not built, and not asked to build)"


def run_suite(name: str, quick: bool, out_dir: Optional[Path], build_kernels: bool = True) -> dict:
    """Run one suite, write ``out_dir/<file>.json`` (if given) and return its result; with
    ``build_kernels=False`` it measures the kernels already built and builds none."""
    import importlib

    file_name, module = SUITES[name]
    start = time.perf_counter()
    from rnnkit.cells import kernels

    _BUILD_KERNELS[0] = build_kernels
    kernels.allow_run_time_builds(build_kernels)  # no compiling in the background while timing
    try:
        result = importlib.import_module(module).run(quick=quick)
    finally:
        _BUILD_KERNELS[0] = True
        kernels.allow_run_time_builds(True)
    result = {"mode": "quick" if quick else "full", "elapsed_s": time.perf_counter() - start, **result}
    write_result(result, out_dir, file_name)
    return result


def main_for(name: str, default_out: Path) -> Callable[[], int]:
    """A ``main()`` for ``benchmarks/<script>.py``: ``--quick``, ``--out DIR``; prints the ratios."""

    def main() -> int:
        import argparse

        parser = argparse.ArgumentParser(description=f"rnnkit benchmark: {name}")
        parser.add_argument("--quick", action="store_true", help="fewer repeats and steps: well under a minute")
        parser.add_argument("--out", type=Path, default=default_out, help=f"directory for the JSON (default {default_out})")
        args = parser.parse_args()
        result = run_suite(name, args.quick, args.out)
        for what, ratio in result["ratios"].items():
            print(f"{ratio:10.3f}  {what}")
        print(f"wrote {args.out / (SUITES[name][0] + '.json')}")
        return 0

    return main

"""Why LSTM, measured: the adding problem at growing lengths, LSTM vs GRU vs vanilla RNN (and the scan cells).

Every cell gets the same parameter budget (hidden sizes chosen so the counts match: an LSTM
unit costs four RNN units) and the same number of training steps at each length, through
rnnkit's one trainer. minGRU and minLSTM (``--cells mingru,minlstm``) have no recurrent
weights, so the same budget buys them a much wider layer (:func:`scan_width`); the lab's
chrono initialisation sets a recurrent bias they do not have, so they start from torch's
default initialisation (gates near 1/2: a memory of a few steps that training must lengthen). The table shows the test MSE next to the trivial baseline (always
predict 1: MSE = 2/12 = 0.167) and the ratio of gradient norms |dL/dh_1| / |dL/dh_T| on a
test batch, before training (what decides whether learning can start) and after.

    PYTHONPATH=src python benchmarks/memory.py            # T = 50, 100, 200, 400 (~15 min on 2 cores)
    PYTHONPATH=src python benchmarks/memory.py --quick    # T = 20, 50 with few steps (< 1 min)
    PYTHONPATH=src python benchmarks/memory.py --cells mingru,minlstm --lengths 100,200,400 --out memory_scan

Writes benchmarks/results/memory.json (or ``--out``'s name) and the gradient-flow plot:
docs/memory_gradient_flow.png for the default cells, beside the JSON otherwise.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rnnkit.files import atomic_write_bytes
from rnnkit.inspection import plot_gradient_flow
from rnnkit.cells import CELLS as ALL_CELLS
from rnnkit.tasks.memory import TASKS, LabConfig, MemoryLab, build_model, gradient_profile

ROOT = Path(__file__).resolve().parent.parent
CELLS = ("lstm", "gru", "rnn")
FULL_STEPS = {50: 800, 100: 1000, 200: 1000, 400: 1200}  # equal for every cell at a length; longer spans get a few more


def scan_width(cell: str, params: int, task: str = "adding") -> int:
    """The width of a cell without recurrent weights (minGRU, minLSTM) that fits ``params``.

    One layer plus the linear head costs ``k H (I + 1) + O (H + 1)`` parameters (``k`` gate
    chunks): no ``H x H`` matrix, which :func:`rnnkit.tasks.memory.parameter_count` assumes.
    """
    spec, k = TASKS[task], ALL_CELLS[cell].num_chunks
    return max(1, round((params - spec.output_size) / (k * (spec.input_size + 1) + spec.output_size)))


def lab_config(length: int, cell: str, steps: int, train_size: int, progress: bool) -> LabConfig:
    """The lab's settings for one row; scan cells get :func:`scan_width` and no chrono init."""
    config = LabConfig(task="adding", cell=cell, length=length, max_steps=steps, train_size=train_size,
                       test_size=1000, progress=progress)
    if ALL_CELLS[cell].recurrent_weights:
        return config
    return LabConfig(**{**config.to_dict(), "hidden_size": scan_width(cell, config.params), "chrono": False})


def run_one(job: tuple[int, str, int, int, bool, int]) -> dict:
    """Train one cell at one length and measure its gradient flow before and after."""
    length, cell, steps, train_size, progress, threads = job
    torch.set_num_threads(threads)
    config = lab_config(length, cell, steps, train_size, progress)
    lab = MemoryLab(config)
    x, y = (t[:64] for t in lab.test_data())
    torch.manual_seed(config.seed)
    before = gradient_profile("adding", build_model(config), x, y)  # the init fit() starts from
    lab.fit()
    after = lab.gradient_profile()
    row = {**lab.metrics, "grad_ratio_init": before["ratio"], "grad_ratio_trained": after["ratio"],
           "grad_norms_init": before["norms"], "grad_norms_trained": after["norms"]}
    print(f"T={length:4d} {cell.upper():4s} H={row['hidden_size']:3d} params={row['params']:,} "
          f"MSE {row['error']:.4f} (baseline {row['baseline']:.4f}, ratio {row['error'] / row['baseline']:.3f}) "
          f"|dL/dh1|/|dL/dhT| init {row['grad_ratio_init']:.2e} trained {row['grad_ratio_trained']:.2e} "
          f"{row['seconds']:.0f}s", flush=True)
    return row


def run(cells: list[str], lengths: list[int], steps: dict[int, int], train_size: int, progress: bool,
        jobs: int, threads: int) -> list[dict]:
    """Every (length, cell) pair, longest first over ``jobs`` worker processes; rows in table order."""
    work = [(length, cell, steps[length], train_size, progress and jobs == 1, threads)
            for length in sorted(lengths, reverse=True) for cell in cells]
    if jobs == 1:
        rows = [run_one(job) for job in work]
    else:
        with multiprocessing.get_context("spawn").Pool(jobs) as pool:
            rows = pool.map(run_one, work, chunksize=1)
    order = {(length, cell): i for i, (length, cell) in enumerate((l, c) for l in lengths for c in cells)}
    return sorted(rows, key=lambda r: order[(r["length"], r["cell"])])


def table(rows: list[dict]) -> str:
    lines = ["| T | steps | cell | units | params | test MSE | baseline MSE | solved (< 0.01) | "
             "\\|dL/dh_1\\| / \\|dL/dh_T\\| at init | after training |",
             "|---:|---:|---|---:|---:|---:|---:|:---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['length']} | {r['steps']} | {NAMES.get(r['cell'], r['cell'].upper())} | {r['hidden_size']} | {r['params']:,} | "
                     f"{r['error']:.4f} | {r['baseline']:.3f} | {'yes' if r['solved'] else 'no'} | "
                     f"{_ratio(r['grad_ratio_init'])} | {_ratio(r['grad_ratio_trained'])} |")
    return "\n".join(lines)


NAMES = {"mingru": "minGRU", "minlstm": "minLSTM"}


def _ratio(value: float) -> str:
    return "0 (underflow)" if value == 0 else f"{value:.1e}"  # below float32's smallest number


def plot(rows: list[dict], path: Path) -> Path:
    longest = max(r["length"] for r in rows)
    curves = {}
    for r in rows:
        if r["length"] == longest:
            for when in ("init", "trained"):
                norms = np.asarray(r[f"grad_norms_{when}"])
                label = f"{NAMES.get(r['cell'], r['cell'].upper())} {'at init' if when == 'init' else 'trained'}"
                curves[label] = norms / norms[-1]  # relative to the step the loss reads
    return plot_gradient_flow(curves, path, title=f"adding problem, T = {longest}: |dL/dh_t| / |dL/dh_T|")


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 100,200,400, got {text!r}")


def _cell_list(text: str) -> list[str]:
    cells = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in cells if c not in ALL_CELLS]
    if unknown or not cells:
        raise argparse.ArgumentTypeError(f"unknown cell(s) {', '.join(unknown) or '(none)'}; "
                                         f"choose from {', '.join(ALL_CELLS)}, e.g. --cells mingru,minlstm")
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="T = 20, 50 with few steps: a smoke run under a minute")
    parser.add_argument("--cells", type=_cell_list, default=list(CELLS), help="comma-separated cells (default lstm,gru,rnn)")
    parser.add_argument("--lengths", type=_int_list, default=None,
                        help=f"comma-separated lengths T (default {','.join(map(str, FULL_STEPS))}; steps: "
                             f"{', '.join(f'{k}: {v}' for k, v in FULL_STEPS.items())}, 1200 beyond 400)")
    parser.add_argument("--out", default=None, help="JSON name in benchmarks/results (default memory, or memory_quick)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job (the machine is shared)")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel, one process each")
    parser.add_argument("--progress", action="store_true", help="show training progress bars")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        lengths, train_size = args.lengths or [20, 50], 4000
        steps = {length: 150 for length in lengths}
    else:
        lengths, train_size = args.lengths or list(FULL_STEPS), 20_000
        steps = {length: FULL_STEPS.get(length, 1200) for length in lengths}
    if min(lengths, default=0) < 2:
        raise SystemExit(f"--lengths: every T must be >= 2, got {lengths}")
    started = time.monotonic()
    rows = run(args.cells, lengths, steps, train_size, args.progress, args.jobs, args.threads)
    markdown = table(rows)
    print("\n" + markdown)
    name = args.out or ("memory_quick" if args.quick else "memory")
    beside_json = args.quick or name != "memory"  # only the default run draws the README's figure
    figure = plot(rows, ROOT / ("benchmarks/results" if beside_json else "docs") / f"{name}_gradient_flow.png")
    result = {"benchmark": f"memory: adding problem, {', '.join(NAMES.get(c, c.upper()) for c in args.cells)} "
                           "at equal parameters and steps",
              "quick": args.quick, "cells": args.cells, "lengths": lengths, "steps": steps, "train_size": train_size,
              "torch": torch.__version__, "threads": args.threads, "jobs": args.jobs, "machine": platform.processor() or platform.machine(),
              "seconds": round(time.monotonic() - started, 1), "rows": rows, "table": markdown, "plot": str(figure)}
    if any(not ALL_CELLS[c].recurrent_weights for c in args.cells):
        result["scan_cells_note"] = ("minGRU/minLSTM: width from the same parameter budget (no recurrent matrix), "
                                     "chrono init off (the lab's sets a recurrent bias they lack): torch's default init")
    out = atomic_write_bytes(ROOT / "benchmarks/results" / f"{name}.json", json.dumps(result, indent=1).encode())
    print(f"\nwrote {out} and {figure} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())

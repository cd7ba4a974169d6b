"""Training speed of rnnkit's cells against torch.nn and a hand-written LSTM loop.

One run prints a rich table and writes ``benchmarks/results/cells.json``:

- training tokens/s (forward + backward + optimiser step; tokens = batch x time) of
  rnnkit's LSTM, GRU and RNN on the fused and the reference path, ``torch.nn.LSTM`` /
  ``GRU`` / ``RNN`` on the same shapes, the LSTM written as a Python loop over
  ``nn.Linear`` + gates, and the peephole and layer-norm LSTMs (fused and reference);
- a whole ``rnnkit.training.fit`` epoch against the bare loop a user would write for the
  same model, data, batches and optimiser.

Absolute numbers drift on a shared machine, so every figure is the median of several
repeats, the candidates are measured interleaved in a rotating order (each repeat
measures every candidate once, starting from a different one and alternating direction),
and each ratio is the median of the per-repeat ratios against the baseline measured in
the same repeat.

    python benchmarks/cells.py            # full run: both shapes, ~2-3 minutes
    python benchmarks/cells.py --quick    # one shape, few repeats: well under a minute
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor, nn

try:
    import rnnkit
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import rnnkit

from common.timing import training_step  # noqa: E402
from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).resolve().parent / "results" / "cells.json"
SHAPES = [(32, 100, 128), (64, 100, 256)]  # (batch, time, hidden); input size = hidden
console = Console()


# ------------------------------------------------------------------------------ models


class HandLSTM(nn.Module):
    """The LSTM as people write it by hand: a Python loop over two nn.Linear and the gates."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.ih = nn.Linear(input_size, 4 * hidden_size)
        self.hh = nn.Linear(hidden_size, 4 * hidden_size)

    def forward(self, x: Tensor):
        h = c = x.new_zeros(x.size(0), self.hidden_size)
        outputs = []
        for t in range(x.size(1)):
            i, f, g, o = (self.ih(x[:, t]) + self.hh(h)).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs.append(h)
        return torch.stack(outputs, dim=1), (h, c)


@dataclass
class Candidate:
    name: str  # shown in the table
    family: str  # "lstm" | "gru" | "rnn": which torch.nn module is its baseline
    build: Callable[[int, int], nn.Module]  # (input_size, hidden_size) -> module
    baseline: bool = False  # the torch.nn module of its family


CANDIDATES = [
    Candidate("torch.nn.LSTM", "lstm", lambda i, h: nn.LSTM(i, h, batch_first=True), baseline=True),
    Candidate("rnnkit LSTM fused", "lstm", lambda i, h: rnnkit.LSTM(i, h, backend="fused")),
    Candidate("rnnkit LSTM reference", "lstm", lambda i, h: rnnkit.LSTM(i, h, backend="reference")),
    Candidate("hand-written LSTM loop", "lstm", HandLSTM),
    Candidate("rnnkit LSTM layer_norm fused", "lstm", lambda i, h: rnnkit.LSTM(i, h, layer_norm=True)),
    Candidate("rnnkit LSTM layer_norm reference", "lstm",
              lambda i, h: rnnkit.LSTM(i, h, layer_norm=True, backend="reference")),
    Candidate("rnnkit LSTM peephole fused", "lstm", lambda i, h: rnnkit.LSTM(i, h, peephole=True)),
    Candidate("rnnkit LSTM peephole reference", "lstm",
              lambda i, h: rnnkit.LSTM(i, h, peephole=True, backend="reference")),
    Candidate("torch.nn.GRU", "gru", lambda i, h: nn.GRU(i, h, batch_first=True), baseline=True),
    Candidate("rnnkit GRU fused", "gru", lambda i, h: rnnkit.GRU(i, h, backend="fused")),
    Candidate("rnnkit GRU reference", "gru", lambda i, h: rnnkit.GRU(i, h, backend="reference")),
    Candidate("torch.nn.RNN", "rnn", lambda i, h: nn.RNN(i, h, batch_first=True), baseline=True),
    Candidate("rnnkit RNN fused", "rnn", lambda i, h: rnnkit.RNN(i, h, backend="fused")),
    Candidate("rnnkit RNN reference", "rnn", lambda i, h: rnnkit.RNN(i, h, backend="reference")),
]


OPTIMIZERS = {"sgd": lambda params: torch.optim.SGD(params, lr=1e-3),
              "adam": lambda params: torch.optim.Adam(params, lr=1e-3)}


def time_iters(step: Callable[[], None], iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return time.perf_counter() - start


def rotated(items: list, r: int) -> list:
    """Repeat ``r``'s measurement order: rotate by r, reverse every other repeat."""
    k = r % len(items)
    order = items[k:] + items[:k]
    return order[::-1] if r % 2 else order


def summarise(samples: list[float]) -> dict:
    med = statistics.median(samples)
    return {
        "median": med,
        "min": min(samples),
        "max": max(samples),
        "spread_pct": 100 * (max(samples) - min(samples)) / med if med else 0.0,
        "repeats": samples,
    }


# ------------------------------------------------------------------------ cell benchmark


def bench_shape(batch: int, time_steps: int, hidden: int, args) -> list[dict]:
    torch.manual_seed(0)
    x = torch.randn(batch, time_steps, hidden)
    tokens = batch * time_steps
    steps, iters = {}, {}
    with console.status(f"B={batch} T={time_steps} H={hidden}: warming up") as status:
        for cand in CANDIDATES:
            torch.manual_seed(0)
            step = training_step(cand.build(hidden, hidden), x, loss="mse", optimizer=OPTIMIZERS[args.optimizer])
            for _ in range(args.warmup):
                step()
            once = time_iters(step, 1)  # calibrate: about args.target seconds per measurement
            steps[cand.name] = step
            iters[cand.name] = max(args.min_iters, math.ceil(args.target / once))
        rates: dict[str, list[float]] = {c.name: [] for c in CANDIDATES}
        ratios: dict[str, list[float]] = {c.name: [] for c in CANDIDATES}
        for r in range(args.repeats):
            status.update(f"B={batch} T={time_steps} H={hidden}: repeat {r + 1}/{args.repeats}")
            this_repeat = {}
            for cand in rotated(CANDIDATES, r):
                gc.collect()
                seconds = time_iters(steps[cand.name], iters[cand.name])
                this_repeat[cand.name] = tokens * iters[cand.name] / seconds
            baselines = {c.family: this_repeat[c.name] for c in CANDIDATES if c.baseline}
            for cand in CANDIDATES:
                rates[cand.name].append(this_repeat[cand.name])
                ratios[cand.name].append(this_repeat[cand.name] / baselines[cand.family])
    rows = []
    for cand in CANDIDATES:
        baseline = next(c.name for c in CANDIDATES if c.baseline and c.family == cand.family)
        rows.append({
            "shape": {"batch": batch, "time": time_steps, "hidden": hidden, "input": hidden},
            "name": cand.name,
            "family": cand.family,
            "baseline": baseline,
            "iters_per_repeat": iters[cand.name],
            "tokens_per_s": summarise(rates[cand.name]),
            "ms_per_iter": 1000 * tokens / statistics.median(rates[cand.name]),
            "ratio_vs_baseline": summarise(ratios[cand.name]),
        })
    return rows


def rnnkit_overhead(batch: int, time_steps: int, hidden: int, iters: int = 200) -> dict:
    """What rnnkit's forward adds before the fused kernel, in microseconds per call."""
    cell = rnnkit.LSTM(hidden, hidden)
    x = torch.randn(batch, time_steps, hidden)

    def per_call(fn) -> float:
        fn()
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        return 1e6 * (time.perf_counter() - start) / iters

    return {
        "shape": {"batch": batch, "time": time_steps, "hidden": hidden},
        "check_input_us": per_call(lambda: cell._check_input(x)),
        "isnan_any_us": per_call(lambda: bool(torch.isnan(x).any())),
        "zero_state_us": per_call(lambda: cell._check_state(None, x)),
    }


# ------------------------------------------------------------------- trainer vs bare loop


class Regressor(nn.Module):
    """LSTM + linear head: one prediction per step."""

    def __init__(self, input_size: int, hidden: int, cell: str) -> None:
        super().__init__()
        if cell == "torch":
            self.lstm = nn.LSTM(input_size, hidden, batch_first=True)
        else:
            self.lstm = rnnkit.LSTM(input_size, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        outputs, _ = self.lstm(x)  # (B, T, H)
        return self.head(outputs)  # (B, T, 1)


def synthetic_data(n: int, time_steps: int, features: int) -> tuple[Tensor, Tensor]:
    """A noisy running mean of a random projection of the inputs: something to learn."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, time_steps, features, generator=g)
    proj = x @ torch.randn(features, 1, generator=g) / math.sqrt(features)  # (N, T, 1)
    steps = torch.arange(1, time_steps + 1).view(1, -1, 1)
    y = proj.cumsum(dim=1) / steps.sqrt() + 0.1 * torch.randn(n, time_steps, 1, generator=g)
    return x, y


def mse_loss_fn(model: nn.Module, batch, state):
    x, y = batch
    return nn.functional.mse_loss(model(x), y), state


def wait_for_trainer(timeout: float) -> Optional[object]:
    """``rnnkit.training`` is written by another engineer; wait for it to land and import."""
    path = Path(rnnkit.__file__).parent / "training" / "__init__.py"
    deadline = time.monotonic() + timeout
    last_error = "not there yet"
    while True:
        if path.exists():
            try:
                import importlib

                training = importlib.import_module("rnnkit.training")
                if hasattr(training, "fit") and hasattr(training, "TrainConfig"):
                    return training
                last_error = "fit/TrainConfig missing"
            except Exception as exc:  # still being written
                last_error = f"{type(exc).__name__}: {exc}"
                sys.modules.pop("rnnkit.training", None)
        if time.monotonic() > deadline:
            console.print(f"[yellow]rnnkit.training unavailable ({last_error}); skipping trainer section")
            return None
        time.sleep(10)


def bench_trainer(args) -> Optional[dict]:
    """A whole ``fit`` epoch against the loop a user writes for the same model, data and batches.

    Both sides run the same recipe -- AdamW (lr, weight decay), gradient clipping at norm
    1, batches of 32 taken in the order ``randperm`` seeded like the trainer's first epoch --
    so the ratio is what the trainer itself costs: its bookkeeping, the progress bar, the
    loss kept for the log. The trainer runs a constant schedule so that one epoch of each
    can be checked to end on the same weights.
    """
    training = wait_for_trainer(args.wait_trainer)
    if training is None:
        return None
    batch, time_steps, hidden = 32, 100, 128
    x, y = synthetic_data(args.samples, time_steps, hidden)
    tokens = args.samples * time_steps
    config = training.TrainConfig(epochs=1, batch_size=batch, progress=True, schedule="constant",
                                  clip_norm=1.0, device="cpu", seed=0)

    def fit_epoch(model: nn.Module) -> float:
        start = time.perf_counter()
        training.fit(model, mse_loss_fn, (x, y), config=config)
        return time.perf_counter() - start

    def bare_epoch(model: nn.Module) -> float:
        """Shuffle, forward, MSE, backward, clip, AdamW step: no trainer."""
        start = time.perf_counter()
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(config.seed))
        for first in range(0, len(x), batch):
            idx = order[first:first + batch]
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.mse_loss(model(xb), yb)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            opt.step()
        return time.perf_counter() - start

    # Same batches, same recipe: one epoch of each from the same weights ends on the same weights.
    torch.manual_seed(0)
    a = Regressor(hidden, hidden, "torch")
    b = Regressor(hidden, hidden, "torch")
    b.load_state_dict(a.state_dict())
    fit_epoch(a)  # also the warm-up
    bare_epoch(b)
    same = max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters()))

    bare_name = "bare loop (torch.nn.LSTM model)"
    models = {"fit (torch.nn.LSTM model)": a, "fit (rnnkit.LSTM model)": Regressor(hidden, hidden, "rnnkit")}
    runners: dict[str, Callable[[], float]] = {name: (lambda m=m: fit_epoch(m)) for name, m in models.items()}
    runners[bare_name] = lambda: bare_epoch(b)
    names = list(runners)
    fit_epoch(models["fit (rnnkit.LSTM model)"])  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.trainer_repeats):
        this_repeat = {}
        for name in rotated(names, r):
            gc.collect()
            this_repeat[name] = tokens / runners[name]()
        for name in names:
            rates[name].append(this_repeat[name])
            ratios[name].append(this_repeat[name] / this_repeat[bare_name])
    return {
        "shape": {"batch": batch, "time": time_steps, "hidden": hidden, "input": hidden},
        "samples": args.samples,
        "batches_per_epoch": math.ceil(args.samples / batch),
        "recipe": {"optimizer": "AdamW", "lr": config.lr, "weight_decay": config.weight_decay,
                   "clip_norm": config.clip_norm, "loss": "MSE", "head": "Linear(H, 1) per step",
                   "progress_bar": config.progress},
        "same_weights_after_one_epoch_max_abs_diff": same,
        "repeats": args.trainer_repeats,
        "rows": [
            {"name": name, "tokens_per_s": summarise(rates[name]),
             "ratio_vs_bare_loop": summarise(ratios[name])}
            for name in names
        ],
    }


# ------------------------------------------------------------------------------- report


def machine_info(threads: int) -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "torch": torch.__version__,
        "rnnkit": rnnkit.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "mkl": torch.backends.mkl.is_available(),
        "loadavg_at_start": list(os.getloadavg()),  # a shared machine: >~0.5 means other work ran too
    }


def print_cells_table(rows: list[dict], title: str) -> None:
    table = Table(title=title)
    for col, justify in (("B/T/H", "left"), ("model", "left"), ("tokens/s", "right"),
                         ("ms/iter", "right"), ("spread", "right"), ("vs torch.nn", "right")):
        table.add_column(col, justify=justify)
    for row in rows:
        s = row["shape"]
        ratio = row["ratio_vs_baseline"]["median"]
        style = None
        if row["name"] in ("rnnkit LSTM fused", "rnnkit GRU fused", "rnnkit RNN fused"):
            style = "green" if ratio >= 0.95 else "red"  # the target: fused >= 0.95x torch.nn
        table.add_row(
            f"{s['batch']}/{s['time']}/{s['hidden']}", row["name"],
            f"{row['tokens_per_s']['median']:,.0f}", f"{row['ms_per_iter']:.1f}",
            f"{row['tokens_per_s']['spread_pct']:.0f}%",
            "baseline" if row["name"] == row["baseline"] else f"{ratio:.2f}x", style=style,
        )
    console.print(table)
    for row in rows:  # the headline ratios, one line each
        if row["name"] != row["baseline"]:
            r = row["ratio_vs_baseline"]
            console.print(f"  {row['name']} / {row['baseline']} = {r['median']:.2f}x "
                          f"(repeats {r['min']:.2f}..{r['max']:.2f})")


def print_trainer_table(result: dict) -> None:
    table = Table(title=f"trainer epoch vs bare loop ({result['samples']} samples, batch 32, "
                        "T=100, H=128, AdamW, progress bar on)")
    for col in ("run", "tokens/s", "spread", "ratio"):
        table.add_column(col)
    for row in result["rows"]:
        ratio = row["ratio_vs_bare_loop"]["median"]
        label = "baseline" if row["name"].startswith("bare") else f"{ratio:.2f}x"
        style = None if row["name"].startswith("bare") else ("green" if ratio >= 0.9 else "red")
        table.add_row(row["name"], f"{row['tokens_per_s']['median']:,.0f}",
                      f"{row['tokens_per_s']['spread_pct']:.0f}%", label, style=style)
    console.print(table)
    console.print(f"same batches check: fit and bare loop end one epoch on weights "
                  f"{result['same_weights_after_one_epoch_max_abs_diff']:.1e} apart (max abs)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="first shape only, few repeats: < 1 minute")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd", help="for the cell table")
    p.add_argument("--repeats", type=int, help="interleaved repeats per candidate (median taken)")
    p.add_argument("--no-trainer", action="store_true", help="skip the trainer-vs-bare-loop section")
    p.add_argument("--wait-trainer", type=float, default=1800.0,
                   help="seconds to wait for rnnkit.training to appear (default 1800)")
    p.add_argument("--out", type=Path, default=RESULTS, help=f"JSON output (default {RESULTS})")
    args = p.parse_args(argv)
    if args.quick:
        args.shapes = SHAPES[:1]
        args.repeats = args.repeats or 3
        args.target, args.warmup, args.min_iters = 0.12, 1, 1
        args.samples, args.trainer_repeats = 640, 2
    else:
        args.shapes = SHAPES
        args.repeats = args.repeats or 7
        args.target, args.warmup, args.min_iters = 0.4, 3, 2
        args.samples, args.trainer_repeats = 3200, 5
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    info = machine_info(torch.get_num_threads())
    console.print(f"torch {info['torch']}, {info['threads']} threads, {info['cpu_model']}, "
                  f"optimizer {args.optimizer}, {args.repeats} interleaved repeats (median), "
                  f"load average {info['loadavg_at_start'][0]:.2f}")
    rows = []
    for shape in args.shapes:
        shape_rows = bench_shape(*shape, args)
        print_cells_table(shape_rows, "training tokens/s (forward + backward + "
                                      f"{args.optimizer.upper()} step), median of {args.repeats}")
        rows += shape_rows
    overhead = [rnnkit_overhead(*shape) for shape in args.shapes]
    for o in overhead:
        s = o["shape"]
        console.print(f"rnnkit forward overhead at B={s['batch']} T={s['time']} H={s['hidden']}: "
                      f"input checks {o['check_input_us']:.0f} µs (isnan.any {o['isnan_any_us']:.0f} µs), "
                      f"zero state {o['zero_state_us']:.0f} µs per call")
    trainer = None if args.no_trainer else bench_trainer(args)
    if trainer:
        print_trainer_table(trainer)
    result = {
        "benchmark": "cells",
        "mode": "quick" if args.quick else "full",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": info,
        "method": {
            "metric": "training tokens/s = batch * time * iterations / seconds",
            "step": f"forward + backward of mean(outputs**2) + {args.optimizer} step",
            "repeats": args.repeats,
            "order": "interleaved: each repeat measures every candidate once, rotating order",
            "ratio": "median over repeats of candidate / its torch.nn baseline in the same repeat",
            "seconds_per_measurement": args.target,
        },
        "cells": rows,
        "rnnkit_overhead": overhead,
        "trainer_vs_bare_loop": trainer,
        "elapsed_s": time.perf_counter() - started,
    }
    result["machine"]["loadavg_at_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.out} in {result['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

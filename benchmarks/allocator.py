"""What glibc's malloc costs a CPU training step, and what the trainer's tuning wins back.

``rnnkit/allocator.py`` (called by the trainer on the CPU) keeps freed blocks of up to 1 GB in
the heap instead of unmapping them, so a step's large activations are not page-faulted in
and zeroed again every step. The setting is process-wide and cannot be undone, so each
measurement runs in a fresh process: pairs of runs, glibc's default then tuned, alternating,
each timing the same training steps (forward, backward, AdamW step), one thread:

- ``torch.nn.LSTM`` and rnnkit's LSTM at the GUIDE's shape (batch 64, 100 steps, H=256);
- rnnkit's LSTM at the shape of ``rnnkit textgen train``'s defaults (batch 32, 128 steps, H=512);
- ``torch.nn.LSTM``, minGRU and minLSTM at the scan benchmark's shape (batch 16, 1024 steps,
  H=256), whose ratios (``benchmarks/scan_cells.py``) are measured with glibc's default.

Reported per case: the speed-up (default step time / tuned step time, median over the
pairs) and the page faults per step each way; and minGRU's and minLSTM's speed-up over
``torch.nn.LSTM`` at T=1024 with each allocator (from the median step times of their runs).

    PYTHONPATH=src python benchmarks/allocator.py [--quick]

Writes benchmarks/results/allocator.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout

#: case -> (model: "torch" or an rnnkit cell, batch, steps, hidden)
CASES = {
    "torch.nn.LSTM, B=64 T=100 H=256": ("torch", 64, 100, 256),
    "rnnkit LSTM, B=64 T=100 H=256": ("lstm", 64, 100, 256),
    "rnnkit LSTM, B=32 T=128 H=512 (textgen defaults)": ("lstm", 32, 128, 512),
    "torch.nn.LSTM, B=16 T=1024 H=256": ("torch", 16, 1024, 256),
    "rnnkit minGRU, B=16 T=1024 H=256": ("mingru", 16, 1024, 256),
    "rnnkit minLSTM, B=16 T=1024 H=256": ("minlstm", 16, 1024, 256),
}


def child(case: str, tuned: bool, steps: int) -> dict:
    """In a fresh process: seconds and page faults per training step of ``case``."""
    import torch
    from torch import nn

    from rnnkit.allocator import keep_freed_memory
    from common.timing import training_step
    from rnnkit.layers import Recurrent

    torch.set_num_threads(1)
    applied = keep_freed_memory() if tuned else False
    kind, batch, length, hidden = CASES[case]
    torch.manual_seed(0)
    model = nn.LSTM(hidden, hidden, batch_first=True) if kind == "torch" else Recurrent(hidden, hidden, cell=kind)
    x = torch.randn(batch, length, hidden)
    step = training_step(model, x, loss="mse", optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3))

    for _ in range(2):
        step()
    times, faults = [], resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {"seconds_per_step": statistics.median(times), "page_faults_per_step": faults / steps, "tuned": applied}


def run(quick: bool) -> dict:
    pairs, steps = (2, 3) if quick else (5, 8)
    results = {}
    for case in CASES:
        runs = {"default": [], "tuned": []}
        for _ in range(pairs):
            for mode in runs:
                command = [sys.executable, __file__, "--child", case, "--mode", mode, "--steps", str(steps)]
                out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                runs[mode].append(json.loads(out.splitlines()[-1]))
        if not all(r["tuned"] for r in runs["tuned"]):
            raise SystemExit("glibc did not take the malloc settings here: nothing to measure")
        speedups = [d["seconds_per_step"] / t["seconds_per_step"] for d, t in zip(runs["default"], runs["tuned"])]
        results[case] = {
            "speedup_tuned_vs_default": statistics.median(speedups),
            "seconds_per_step_median": {m: statistics.median(r["seconds_per_step"] for r in rs) for m, rs in runs.items()},
            "page_faults_per_step_median": {m: statistics.median(r["page_faults_per_step"] for r in rs) for m, rs in runs.items()},
            "pairs": pairs, "steps_per_run": steps, "raw": runs,
        }
    ratios = {f"training step speed-up, malloc keeps freed memory vs glibc default: {case}": r["speedup_tuned_vs_default"]
              for case, r in results.items()}
    lstm = results["torch.nn.LSTM, B=16 T=1024 H=256"]["seconds_per_step_median"]
    for cell in ("minGRU", "minLSTM"):
        ours = results[f"rnnkit {cell}, B=16 T=1024 H=256"]["seconds_per_step_median"]
        for mode in ("default", "tuned"):
            ratios[f"{cell} vs torch.nn.LSTM training speed, T=1024, both with malloc {mode}"] = lstm[mode] / ours[mode]
    return {"threads": 1, "cases": results, "ratios": ratios}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs and steps (about a minute)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="directory for the JSON")
    parser.add_argument("--child", choices=list(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("default", "tuned"), help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.mode == "tuned", args.steps)))
        return 0
    from common.timing import write_result

    start = time.perf_counter()
    result = run(args.quick)
    result = {"mode": "quick" if args.quick else "full", "elapsed_s": time.perf_counter() - start, **result}
    for what, ratio in result["ratios"].items():
        print(f"{ratio:8.3f}  {what}")
    print(f"wrote {write_result(result, args.out, 'allocator')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

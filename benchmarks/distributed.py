"""Data-parallel training under torchrun: rnnkit's trainer in 2 worker processes against one process
(1 and 2 threads) and against PyTorch's own DistributedDataParallel loop on the same model and batches.

The job is the text-generation task's: a character LSTM language model (embedding 64, one LSTM
layer of 256 units, tied to nothing) on Shakespeare, a global batch of 64 windows of 64
characters, AdamW, clipping at 1. Every candidate runs in fresh processes (so each sets its own
threads), round after round in turn, and the median round is quoted; the first steps of each run
(start-up, allocation) are left out of its rate. Candidates:

- ``rnnkit, 1 process x 1 thread`` and ``1 process x 2 threads``: ``rnnkit.training.fit``;
- ``rnnkit, 2 workers x 1 thread``: the same call under ``torchrun --nproc-per-node 2``;
- ``DDP, 2 workers x 1 thread``: the strongest baseline for data parallelism, a plain loop with
  the model wrapped in ``torch.nn.parallel.DistributedDataParallel`` (bucketed all-reduce that
  overlaps the backward pass), the same batches, optimiser and clipping.

    PYTHONPATH=src python benchmarks/distributed.py            # writes benchmarks/results/distributed.json
    PYTHONPATH=src python benchmarks/distributed.py --quick    # a smoke run (not quoted)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout

from common.timing import write_result  # noqa: E402
from rnnkit.data import load_text_dataset  # noqa: E402
from rnnkit.layers import Recurrent  # noqa: E402
from rnnkit.training import TrainConfig, fit  # noqa: E402
from rnnkit.training.distributed import is_main, world  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BATCH, WINDOW, HIDDEN, WARMUP = 64, 64, 256, 5
CANDIDATES = {  # name: (kind, workers, threads per process)
    "rnnkit, 1 process x 1 thread": ("fit", 1, 1),
    "rnnkit, 1 process x 2 threads": ("fit", 1, 2),
    "rnnkit, 2 workers x 1 thread": ("fit", 2, 1),
    "DDP, 2 workers x 1 thread": ("ddp", 2, 1),
}


class CharLM(nn.Module):
    """Embedding, one LSTM layer, a linear head over the characters."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.embed, self.rnn, self.head = nn.Embedding(vocab, 64), Recurrent(64, HIDDEN), nn.Linear(HIDDEN, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(ids))[0])


def windows(samples: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``samples`` windows of Shakespeare's characters and their next characters."""
    text = load_text_dataset("shakespeare")[: samples * WINDOW + 1]
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(c) for c in text])
    return ids[:-1].view(samples, WINDOW), ids[1:].view(samples, WINDOW), len(vocab)


def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, ...], state: object) -> tuple[torch.Tensor, None]:
    inputs, targets = batch
    return nn.functional.cross_entropy(model(inputs).flatten(0, 1), targets.flatten()), None


def run_fit(steps: int) -> float:
    """Samples per second of ``rnnkit.training.fit`` after the first ``WARMUP`` steps."""
    x, y, vocab = windows(BATCH * steps)
    torch.manual_seed(0)
    config = TrainConfig(max_steps=steps, batch_size=BATCH, lr=2e-3, clip_norm=1.0, eval_every=WARMUP,
                         progress=False, seed=0)
    history = fit(CharLM(vocab), loss_fn, (x, y), config=config).history
    first, last = history[0], history[-1]
    return BATCH * (last["step"] - first["step"]) / (last["elapsed_s"] - first["elapsed_s"])


def run_ddp(steps: int) -> float:
    """The same job in a plain DistributedDataParallel loop; samples per second after the warm-up."""
    from torch.nn.parallel import DistributedDataParallel

    rank, workers = world()  # joins the process group as rnnkit does
    x, y, vocab = windows(BATCH * steps)
    torch.manual_seed(0)
    model = DistributedDataParallel(CharLM(vocab))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    for step in range(steps):
        if step == WARMUP:
            started = time.perf_counter()
        index = order[step * BATCH:(step + 1) * BATCH][rank::workers]
        loss, _ = loss_fn(model, (x[index], y[index]), None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return BATCH * (steps - WARMUP) / (time.perf_counter() - started)


def worker(kind: str, steps: int, threads: int) -> None:
    torch.set_num_threads(threads)
    rate = (run_fit if kind == "fit" else run_ddp)(steps)
    if is_main():
        print(json.dumps({"samples_per_s": rate}))


def launch(kind: str, workers: int, threads: int, steps: int) -> float:
    args = [__file__, "--worker", kind, "--steps", str(steps), "--threads", str(threads)]
    command = [sys.executable, *args] if workers == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={workers}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        raise SystemExit(f"{kind} x {workers} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["samples_per_s"]


def measure(quick: bool) -> dict:
    steps, rounds = (WARMUP + 5, 1) if quick else (WARMUP + 30, 3)
    rates: dict[str, list[float]] = {name: [] for name in CANDIDATES}
    for _ in range(rounds):
        for name, (kind, workers, threads) in CANDIDATES.items():
            rates[name].append(launch(kind, workers, threads, steps))
    median = {name: statistics.median(r) for name, r in rates.items()}
    ours = median["rnnkit, 2 workers x 1 thread"]
    one_process = max(median["rnnkit, 1 process x 1 thread"], median["rnnkit, 1 process x 2 threads"])
    return {"mode": "quick" if quick else "full", "job": f"char LSTM LM, H={HIDDEN}, batch {BATCH} x {WINDOW} chars, "
            f"AdamW, clip 1; {steps} steps, the first {WARMUP} left out", "rounds": rounds,
            "samples_per_s": median, "samples_per_s_rounds": rates,
            "ratios": {"2 workers / best one process": ours / one_process,
                       "2 workers / 1 process x 1 thread": ours / median["rnnkit, 1 process x 1 thread"],
                       "rnnkit 2 workers / DDP 2 workers (strongest baseline)": ours / median["DDP, 2 workers x 1 thread"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="directory for distributed.json")
    parser.add_argument("--worker", choices=["fit", "ddp"], help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.steps, args.threads)
    result = measure(args.quick)
    for name, rate in result["samples_per_s"].items():
        print(f"{name:34s} {rate:8.1f} samples/s")
    for name, ratio in result["ratios"].items():
        print(f"{name}: {ratio:.2f}x")
    out = args.out or (None if args.quick else RESULTS)
    path = write_result(result, out, "distributed")
    if path:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

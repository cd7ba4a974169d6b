"""Training under torchrun: workers share each batch and reach the one-process update; a worker
killed mid-run is restarted and the run resumes from its checkpoint to the weights of a run never
interrupted; the README's torchrun line (a CLI train command, as it is) writes a bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rnnkit.errors import RnnkitError
from rnnkit.training.distributed import shard

WORKER = Path(__file__).with_name("distributed_worker.py")
STEPS, CHECKPOINT_EVERY = 24, 4


def _env() -> dict[str, str]:
    # one thread per worker: two workers on two cores, and the same reductions in every run
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _torchrun(*args: str, workers: int = 2, restarts: int = 0) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={workers}",
            f"--max-restarts={restarts}", *args]


def _run(command: list[str], cwd: Path) -> dict:
    done = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("{")))


def _train(tmp_path: Path, name: str, dropout: float, kill_at: int = -1, **launch) -> tuple[dict, dict]:
    args = [str(WORKER), str(tmp_path / f"{name}.safetensors"), str(tmp_path / name), str(dropout), str(kill_at)]
    command = _torchrun(*args, **launch) if launch else [sys.executable, *args]
    result = _run(command, tmp_path)
    return result, load_file(tmp_path / f"{name}.safetensors")


def test_two_workers_take_the_update_of_one_process_on_the_whole_batch(tmp_path):
    alone, one = _train(tmp_path, "alone", dropout=0.0)
    shared, two = _train(tmp_path, "shared", dropout=0.0, workers=2)
    assert (alone["workers"], shared["workers"]) == (1, 2)
    assert alone["steps"] == shared["steps"] == STEPS
    for name in one:  # the same updates, the float sums in another order
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6)
    logged = lambda run: [row["train_loss"] for row in run["history"]]  # noqa: E731
    assert logged(shared) == pytest.approx(logged(alone), rel=1e-4)  # the workers' losses summed, not rank 0's


def test_a_worker_killed_mid_run_is_restarted_and_ends_with_the_uninterrupted_weights(tmp_path):
    clean, expected = _train(tmp_path, "clean", dropout=0.3, workers=2)
    killed_at = 2 * CHECKPOINT_EVERY + 2
    # restarts=2: a restarted gloo worker now and then aborts while the group re-forms on a busy
    # machine (seen in CI); torchrun restarting it once more is the fault tolerance under test
    faulted, got = _train(tmp_path, "faulted", dropout=0.3, kill_at=killed_at, workers=2, restarts=2)
    assert clean["resumed_from"] == 0  # resumed from a checkpoint at or after the last one before the kill:
    assert faulted["resumed_from"] >= 2 * CHECKPOINT_EVERY and faulted["resumed_from"] % CHECKPOINT_EVERY == 0
    assert faulted["steps"] == STEPS
    for name in expected:  # bit for bit: every worker's dropout stream was checkpointed too
        assert torch.equal(got[name], expected[name]), name
    assert [r["val_loss"] for r in faulted["history"]] == [r["val_loss"] for r in clean["history"]]


def test_a_batch_smaller_than_the_workers_is_refused_in_one_line():
    rows = torch.arange(3.0)[:, None]
    mine, share = shard((rows,), rank=1, size=3)
    assert mine[0].tolist() == [[1.0]] and share == pytest.approx(1 / 3)
    with pytest.raises(RnnkitError, match="raise batch_size to at least 4"):
        shard((rows,), rank=0, size=4)


def test_the_readmes_torchrun_command_runs_as_written(tmp_path):
    """The README's line, with a small model and step budget appended (the options it shows stand)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    line = next(line for line in readme.splitlines() if line.startswith("torchrun "))
    args = line.split("#")[0].split()[1:]
    (tmp_path / "corpus.txt").write_text("ROMEO: the cat sat on the mat, by the door.\n" * 60, encoding="utf-8")
    command = [sys.executable, "-m", "torch.distributed.run", *args, "--hidden-size", "32", "--seq-len", "16",
               "--batch-size", "8", "--max-steps", "8", "--no-progress"]
    done = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "member0" / "checkpoint.json").read_text())["step"] == 8
    sampled = subprocess.run([sys.executable, "-m", "rnnkit", "textgen", "sample", "lm.rnnkit", "--prime", "ROMEO:",
                              "--max-tokens", "20", "--seed", "1"], cwd=tmp_path, env=_env(), capture_output=True,
                             text=True, timeout=120)
    assert sampled.returncode == 0 and sampled.stdout.startswith("ROMEO:"), sampled.stderr[-2000:]  # rank 0's bundle

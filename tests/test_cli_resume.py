"""A `train` command killed with SIGKILL and resumed ends with the weights of a run never killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from rnnkit.tasks.base import CHECKPOINT_EVERY

STEPS = 6 * CHECKPOINT_EVERY


def _corpus(path: Path) -> Path:
    verses = ["the cat sat on the mat and the dog lay by the door.",
              "a bird in the hand is worth two in the bush, they said.",
              "rain on the roof, wind in the trees, and a fire in the hearth."]
    path.write_text("\n".join(verses[i % 3] for i in range(400)), encoding="utf-8")
    return path


def _train(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "rnnkit", "textgen", "train", str(corpus), "--out", str(out),
            "--hidden-size", "48", "--seq-len", "32", "--batch-size", "8", "--max-steps", str(STEPS),
            "--seed", "3", "--no-progress", *extra]


def _env() -> dict[str, str]:
    # One thread: the same reductions in the same order in all three processes.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _checkpointed_step(run: Path) -> int:
    try:
        return json.loads((run / "member0" / "checkpoint.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return 0


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path):
    corpus = _corpus(tmp_path / "corpus.txt")
    run = tmp_path / "run"
    victim = subprocess.Popen(_train(corpus, tmp_path / "killed", "--checkpoint-dir", str(run)), env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while _checkpointed_step(run) < CHECKPOINT_EVERY and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    if victim.returncode != -signal.SIGKILL:
        pytest.fail(f"the run ended before it could be killed: {victim.stderr.read().decode()[-500:]}")
    killed_at = _checkpointed_step(run)
    assert CHECKPOINT_EVERY <= killed_at < STEPS
    assert not (tmp_path / "killed").exists()  # no bundle from a killed run

    resumed = subprocess.run(_train(corpus, tmp_path / "resumed", "--checkpoint-dir", str(run), "--resume"),
                             env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    whole = subprocess.run(_train(corpus, tmp_path / "whole"), env=_env(), capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr

    a = load_file(tmp_path / "resumed" / "weights.safetensors")
    b = load_file(tmp_path / "whole" / "weights.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].equal(b[name]), name
    metrics = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert metrics["steps"] == STEPS and metrics["resumed_from"] == [killed_at]  # it did continue, not restart


def test_resume_without_a_checkpoint_dir_is_one_line(tmp_path):
    done = subprocess.run(_train(_corpus(tmp_path / "c.txt"), tmp_path / "out", "--resume"), env=_env(),
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: --resume needs --checkpoint-dir DIR: the directory of the "
                                                "run to continue"]
    assert not (tmp_path / "out").exists()


def test_resume_from_an_empty_directory_says_how_to_start(tmp_path):
    (tmp_path / "empty").mkdir()
    done = subprocess.run(_train(_corpus(tmp_path / "c.txt"), tmp_path / "out", "--checkpoint-dir",
                                 str(tmp_path / "empty"), "--resume"), env=_env(), capture_output=True, text=True)
    assert done.returncode == 2
    assert "no checkpoint" in done.stderr and "without --resume" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1

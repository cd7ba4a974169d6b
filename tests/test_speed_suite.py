"""``benchmarks/speed.py``, the speed suites in one table (``rnnkit bench`` before the benchmarks left
the library): it refuses an unknown suite, and a quick run writes its ratios and says which path ran."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SPEED = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SPEED), *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def test_an_unknown_suite_is_refused_naming_the_choices():
    done = _run("--only", "gpu")
    assert done.returncode == 2
    line = done.stderr.splitlines()[-1]  # argparse quotes the choices on some Pythons, not on others
    assert "argument --only: invalid choice: 'gpu'" in line
    assert all(suite in line for suite in ("streaming", "fused", "scan", "precision"))


@pytest.mark.slow
def test_quick_streaming_without_building_measures_the_python_path_and_writes_its_ratios(tmp_path):
    cache = tmp_path / "cache"  # no kernel built there, and --no-build-kernel builds none
    done = _run("--quick", "--only", "streaming", "--no-build-kernel", "--out", str(tmp_path),
                env={"RNNKIT_CACHE": str(cache), "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    assert "step speed-up vs torch.nn.LSTM" in done.stdout
    assert not list(cache.glob("**/*.so")), "--no-build-kernel built a kernel"
    saved = json.loads((tmp_path / "streaming.json").read_text())
    assert saved["stream_path"].startswith("python ops")
    assert saved["latency"]["floor_us_median"] > 0
    assert saved["generation_64_streams"]["tokens_per_s_median"]["rnnkit Recurrent.step"] > 0
    # without the kernel a stream steps on ATen's cell over column-major weight copies, LSTM and GRU
    assert saved["latency"]["python_step_path"] == ["aten-lstm-cell-colmajor"]
    assert saved["latency_gru"]["step_path"] == ["aten-gru-cell-colmajor"]

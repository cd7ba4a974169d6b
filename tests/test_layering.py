"""The layers hold: ``import rnnkit`` stays light, and the import-linter contracts in pyproject.toml pass."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")


def _env() -> dict[str, str]:
    """This checkout's rnnkit first on the path, whatever is installed."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))}


def _modules_after(code: str) -> list[str]:
    """Every module loaded in a fresh interpreter after running ``code``."""
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def _heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in ("pandas", "matplotlib") or m.startswith("rnnkit.tasks")]


def test_import_rnnkit_loads_no_task_pandas_or_matplotlib():
    loaded = _modules_after("import rnnkit; rnnkit.LSTM(4, 8); rnnkit.load")
    assert "rnnkit.cells.lstm" in loaded  # the probe sees what was imported
    assert _heavy(loaded) == []


def test_a_task_is_imported_when_first_used():
    # The check above must be able to fail: touching a task does load it, and pandas with it.
    heavy = _heavy(_modules_after("import rnnkit; rnnkit.Forecaster"))
    assert "rnnkit.tasks.forecast" in heavy and "pandas" in heavy


def test_the_command_line_starts_without_tasks_pandas_or_matplotlib(tmp_path):
    # One interpreter, the modules loaded after each step: a command's module loads when it runs.
    bundle = tmp_path / "air.rnnkit"
    script = f"""
import contextlib, io, json, sys
from torch import nn
from rnnkit.bundle import save_bundle
save_bundle({str(bundle)!r}, model_type="forecaster", config={{"horizon": 12}}, model=nn.Linear(3, 2),
            preprocessing={{}}, metrics={{}})
from rnnkit.cli import run
steps = {{"import": sorted(sys.modules)}}
for name, args in (("help", ["--help"]), ("info", ["info", {str(bundle)!r}]), ("forecast", ["forecast", "--help"])):
    with contextlib.redirect_stdout(io.StringIO()):
        code = run(args)
    assert code == 0, (args, code)
    steps[name] = sorted(sys.modules)
print(json.dumps(steps))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    steps = json.loads(done.stdout.splitlines()[-1])
    assert "rnnkit.cli" in steps["import"] and _heavy(steps["import"]) == [] and _heavy(steps["help"]) == []
    assert "rnnkit.cli.info" in steps["info"] and "matplotlib" not in steps["info"]  # its task may need pandas
    assert "rnnkit.cli.forecast" in steps["forecast"] and "matplotlib" in steps["forecast"]  # the probe can fail


def test_the_import_linter_contracts_are_kept():
    pytest.importorskip("importlinter", reason="pip install -c constraints.txt -e '.[dev]'")
    command = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    done = subprocess.run([command, "--no-cache"], cwd=ROOT, capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "0 broken" in done.stdout

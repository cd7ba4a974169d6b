"""The ``rnnkit`` command line: version, help, ``info``, and errors as one line with exit code 2."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from torch import nn
from typer.testing import CliRunner

import rnnkit
from rnnkit.bundle import save_bundle
from rnnkit.cells import LSTM
from rnnkit.cli import COMMANDS, app, create_app, load_command, run
from rnnkit.errors import DataError

runner = CliRunner()


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    model = nn.Sequential(nn.Linear(3, 8), nn.Linear(8, 2))
    model.add_module("lstm", LSTM(3, 8))
    return save_bundle(tmp_path / "air.rnnkit", model_type="forecaster", config={"horizon": 12},
                       model=model, preprocessing={"scaler": {}}, metrics={"mae": 21.1})


@pytest.fixture
def evil(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(Evil(marker)))
    return path, marker


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def test_version_and_help() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"rnnkit {rnnkit.__version__}\n"
    for args in (["--help"], ["-h"], ["info", "--help"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "info" in result.stdout and "Usage" in result.stdout


def test_help_lists_each_command_by_its_own_help() -> None:
    # `rnnkit --help` lists the commands from COMMANDS without importing them: the lines must not drift.
    for name, (_, _, line) in COMMANDS.items():
        assert load_command(name).help == line, name
    listed = runner.invoke(app, ["--help"], env={"COLUMNS": "300"}).stdout
    assert [row.split()[1] for row in listed.splitlines() if row.startswith("│ ") and row.split()[1] in COMMANDS] \
        == list(COMMANDS)
    result = runner.invoke(app, ["forcast"])
    assert result.exit_code == 2 and "Did you mean 'forecast'?" in result.output  # names not yet loaded count


def test_info_shows_the_bundle(bundle: Path) -> None:
    result = runner.invoke(app, ["info", str(bundle)])
    assert result.exit_code == 0, result.output
    parameters = 3 * 8 + 8 + 8 * 2 + 2 + 4 * 8 * 3 + 4 * 8 * 8 + 2 * 4 * 8
    for expected in ("forecaster", f"{parameters:,}", "horizon", "12", "scaler", "mae", "21.1"):
        assert expected in result.stdout
    assert "tensors" in result.stdout and "8 (" in result.stdout


def test_info_on_missing_path_is_one_error_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["info", str(tmp_path / "nope")])
    assert result.exit_code == 2 and result.stdout == ""
    assert "the path does not exist" in _one_error_line(result.stderr)


def test_info_on_a_pickle_is_refused_unread(evil: tuple[Path, Path]) -> None:
    path, marker = evil
    result = runner.invoke(app, ["info", str(path)])
    assert result.exit_code == 2
    assert "is a pickle file" in _one_error_line(result.stderr)
    assert not marker.exists()


def test_errors_from_sub_apps_and_os_errors_are_one_line() -> None:
    # What a task sub-app sees once the lead joins it with add_typer.
    root, task = create_app("root"), create_app("task")

    @task.command()
    def train() -> None:
        raise DataError("expected 3 features, got 5;\npass --features x,y,z")

    @task.command()
    def predict() -> None:
        raise PermissionError(13, "Permission denied", "/models/air.rnnkit")

    @task.command()
    def slow() -> None:
        raise KeyboardInterrupt

    @task.command()
    def buggy() -> None:
        raise ZeroDivisionError("a bug")

    plain = typer.Typer()  # a sub-app made without create_app still gets the root's handling

    @plain.command()
    def fit() -> None:
        raise DataError("no rows")

    root.add_typer(task, name="task")
    root.add_typer(plain, name="plain")
    result = runner.invoke(root, ["plain", "fit"])
    assert result.exit_code == 2 and _one_error_line(result.stderr) == "error: no rows"
    for app_, prefix in ((root, ["task"]), (task, [])):  # joined, and the sub-app on its own
        result = runner.invoke(app_, [*prefix, "train"])
        assert result.exit_code == 2
        assert _one_error_line(result.stderr) == "error: expected 3 features, got 5; pass --features x,y,z"
        result = runner.invoke(app_, [*prefix, "predict"])
        assert result.exit_code == 2
        assert _one_error_line(result.stderr) == "error: Permission denied: /models/air.rnnkit"
        result = runner.invoke(app_, [*prefix, "slow"])
        assert (result.exit_code, result.stderr) == (130, "interrupted\n")
        result = runner.invoke(app_, [*prefix, "buggy"])  # a bug keeps its traceback
        assert result.exit_code == 1 and isinstance(result.exception, ZeroDivisionError)


def test_run_returns_the_exit_code(tmp_path: Path, bundle: Path, capsys) -> None:
    assert run(["--version"]) == 0
    assert capsys.readouterr().out == f"rnnkit {rnnkit.__version__}\n"
    assert run(["info", str(bundle)]) == 0
    assert "forecaster" in capsys.readouterr().out
    assert run(["info", str(tmp_path / "nope")]) == 2
    assert _one_error_line(capsys.readouterr().err)
    assert run(["no-such-command"]) == 2


def test_run_handles_errors_raised_before_a_command_runs(monkeypatch, capsys) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(typer.Typer, "__call__", interrupted)
    assert run(["info", "x"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def _rnnkit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rnnkit", *args], capture_output=True, text=True,
                          timeout=120)


def test_python_dash_m_rnnkit(tmp_path: Path, evil: tuple[Path, Path]) -> None:
    done = _rnnkit("--version")
    assert (done.returncode, done.stdout) == (0, f"rnnkit {rnnkit.__version__}\n")
    done = _rnnkit("info", str(tmp_path / "nope"))
    assert done.returncode == 2 and done.stdout == ""
    assert "the path does not exist" in _one_error_line(done.stderr)
    path, marker = evil
    done = _rnnkit("info", str(path))
    assert done.returncode == 2 and "never unpickles" in _one_error_line(done.stderr)
    assert not marker.exists()


def test_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "rnnkit"
    if not script.exists():
        pytest.skip("the rnnkit console script is not installed next to this Python")
    done = subprocess.run([str(script), "info", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "it has no config.json" in _one_error_line(done.stderr)

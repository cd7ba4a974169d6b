"""The compiled kernels' loader (``cells/kernels/__init__.py``): the package ships every file a
kernel is built from; any problem building or loading one leaves the Python path running and
says why once; a kernel that is not built is built once, in the background, and loaded when done."""

from __future__ import annotations

import fnmatch
import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch

import rnnkit
from rnnkit.cells import kernels
from rnnkit.layers import Recurrent

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty kernel cache, nothing loaded, no background build started, nothing said yet."""
    monkeypatch.setenv("RNNKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(kernels, "_loaded", {})
    monkeypatch.setattr(kernels, "_builder", None)
    monkeypatch.setattr(kernels, "_builder_started", False)
    return tmp_path


def test_the_package_data_ships_every_file_the_kernels_are_built_from():
    tomllib = pytest.importorskip("tomllib")
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["rnnkit"]
    assert any(file.endswith(".h") for name in kernels.KERNELS for file in kernels.sources(name))
    for name in kernels.KERNELS:
        files = kernels.sources(name)
        for file in files:
            shipped = f"cells/kernels/{file}"
            assert any(fnmatch.fnmatch(shipped, glob) for glob in globs), f"{shipped} ({name} kernel) is not package data"


def test_a_missing_header_leaves_every_cell_on_the_python_path_with_one_warning(fresh, monkeypatch, caplog):
    """What a wheel without its headers did: FileNotFoundError from the loader. Now a warning."""
    for source in Path(kernels.__file__).parent.glob("*.cpp"):  # the sources without their headers
        shutil.copy(source, fresh / source.name)
    monkeypatch.setattr(kernels, "__file__", str(fresh / "__init__.py"))
    with caplog.at_level(logging.WARNING, logger="rnnkit"):
        with torch.no_grad():
            y, _ = Recurrent(3, 8, num_layers=2).eval().step(torch.randn(1, 3))
        for cell in ("gru", "mingru"):
            out, _ = Recurrent(3, 8, cell=cell)(torch.randn(2, 5, 3))
            out.sum().backward()
        rnnkit.GRU(3, 8)(torch.randn(2, 5, 3))  # again: said once already
    assert y.shape == (1, 8)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == len(set(warned)) and warned, warned
    assert all("kernel is off (cannot load it: FileNotFoundError" in w for w in warned), warned
    assert {"stream", "gru", "scan"} <= {w.split("compiled ")[1].split()[0] for w in warned}


class _FakeBuild:
    """Stands in for ``subprocess.Popen`` of ``python -m rnnkit.cells.kernels --background``:
    'running' until finish(), which puts a real built stream kernel where the build would."""

    started: list[list[str]] = []

    def __init__(self, args, **options):
        _FakeBuild.started.append(args)
        self.pid, self.status = 4242, None

    def poll(self):
        return self.status

    def wait(self, timeout=None):
        self.finish()
        return self.status

    def finish(self):
        name = kernels._module_name("stream") + ".so"
        target = kernels.build_directory("stream")
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(_FakeBuild.built / name, target / name)
        self.status = 0


@pytest.mark.slow
def test_a_kernel_not_built_is_built_once_in_the_background_and_runs_when_ready(fresh, monkeypatch, caplog):
    if shutil.which("c++") is None or shutil.which("ninja") is None:
        pytest.skip("no C++ compiler or ninja")
    monkeypatch.setattr(kernels, "_loaded", {})
    with monkeypatch.context() as real_cache:  # a real build of the stream kernel, to copy from
        real_cache.delenv("RNNKIT_CACHE")
        kernels.build(names=["stream"])
        _FakeBuild.built = kernels.build_directory("stream")
    monkeypatch.setattr(kernels, "_loaded", {})
    monkeypatch.delenv("RNNKIT_BUILD_KERNELS", raising=False)
    monkeypatch.setattr(kernels.subprocess, "Popen", _FakeBuild)
    _FakeBuild.started = []
    layer = Recurrent(4, 16, num_layers=2).eval()
    x = torch.randn(1, 4)
    with caplog.at_level(logging.WARNING, logger="rnnkit"), torch.no_grad():
        first, _ = layer.step(x)  # not blocked: the Python path answers
        assert kernels.stream_kernel() is None and kernels.gru_kernel() is None  # one build for all
        assert kernels.wait_for_build() == 0
        second, _ = layer.step(x)
    assert _FakeBuild.started == [[sys.executable, "-m", "rnnkit.cells.kernels", "--background"]]
    assert "stream kernel is off (not built; compiling the kernels in the background now (pid 4242" in caplog.text
    assert kernels.stream_kernel() is not None and layer.path_cache.stack is not None
    assert torch.allclose(first, second, atol=1e-6)


@pytest.mark.parametrize("why", ["RNNKIT_BUILD_KERNELS=0", "no compiler", "RNNKIT_KERNELS=0"])
def test_without_a_run_time_build_the_python_path_runs_and_says_how_once(fresh, monkeypatch, caplog, why):
    monkeypatch.delenv("RNNKIT_BUILD_KERNELS", raising=False)
    if why == "no compiler":
        monkeypatch.setattr(kernels.shutil, "which", lambda tool: None)
    else:
        monkeypatch.setenv(*why.split("="))
    monkeypatch.setattr(kernels.subprocess, "Popen", None)  # starting a build would fail the test
    with caplog.at_level(logging.INFO, logger="rnnkit"), torch.no_grad():
        for _ in range(3):
            y, _ = Recurrent(3, 8, num_layers=2).eval().step(torch.randn(1, 3))
    assert kernels.stream_kernel() is None and y.shape == (1, 8)
    said = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert len(said) == 1, said
    level, message = said[0]
    if why == "RNNKIT_KERNELS=0":  # asked for: no warning
        assert level == logging.INFO and "kernel is off (RNNKIT_KERNELS=0)" in message
    else:
        assert level == logging.WARNING and "python -m rnnkit.cells.kernels" in message
        assert ("no c++ or ninja on the PATH" if why == "no compiler" else "building at run time is off") in message

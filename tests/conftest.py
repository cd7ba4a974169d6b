"""Suite-wide settings: one thread (small tensors gain nothing from two, and OpenMP spin-waits
on an oversubscribed CI box turned 0.01 s tests into 1.7 s ones), and a fixed seed per test."""

import os
import shutil

import pytest
import torch

# No compiling in the background while tests run (tests that point RNNKIT_CACHE at an empty
# directory would each start one): tests build the kernels they need with kernels.build(), and
# tests/test_kernel_loader.py checks the run-time build with this unset.
os.environ.setdefault("RNNKIT_BUILD_KERNELS", "0")


@pytest.fixture(autouse=True)
def _single_thread_and_seed():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def built_kernel():
    """The compiled stream kernel (built once into the cache; ~30 s of CPU the first time), left
    out of the loader's table: a test installs it with ``monkeypatch.setattr(kernels, "_loaded", ...)``."""
    from rnnkit.cells import kernels

    if shutil.which("c++") is None or shutil.which("ninja") is None:
        pytest.skip("no C++ compiler or ninja: the kernel is optional and the Python step runs")
    saved = dict(kernels._loaded)
    module = kernels.build(names=["stream"])[0]
    kernels._loaded.clear()
    kernels._loaded.update(saved)
    return module

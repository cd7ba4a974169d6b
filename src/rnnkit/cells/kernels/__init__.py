"""Optional compiled kernels: built ahead of time, only ever loaded at run time.

``build()`` compiles ``stream_step.cpp`` (a C++ compiler and ninja needed; ~30 s of CPU)
into rnnkit's cache directory (``$RNNKIT_CACHE``, default ``~/.cache/rnnkit``), under a
name keyed by the torch and Python versions and the source's hash. ``rnnkit bench``
builds it; so does ``python -m rnnkit.cells.kernels``.

At run time :func:`stream_kernel` only loads an already-built module, so a user's machine
needs no compiler: without a built kernel (or with ``RNNKIT_KERNELS=0``) the same
equations run as Python ops (``cells/streaming.py``), and rnnkit says so once (logging).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Optional

import torch

from ...errors import RnnkitError

SOURCE = Path(__file__).with_name("stream_step.cpp")
log = logging.getLogger("rnnkit")
_loaded: dict[str, Optional[ModuleType]] = {}


def build_directory() -> Path:
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    tag = f"torch{torch.__version__}-py{sys.version_info.major}{sys.version_info.minor}-{digest}".replace("+", "_")
    return Path(os.environ.get("RNNKIT_CACHE", Path.home() / ".cache" / "rnnkit")) / "kernels" / tag


def _name() -> str:
    return "rnnkit_stream_step_" + build_directory().name.rsplit("-", 1)[1]


def build(verbose: bool = False) -> ModuleType:
    """Compile the streaming kernel into the cache (a no-op when it is already built) and load it."""
    from torch.utils import cpp_extension

    directory = build_directory()
    directory.mkdir(parents=True, exist_ok=True)
    try:
        module = cpp_extension.load(_name(), [str(SOURCE)], extra_cflags=["-O3"],
                                    build_directory=str(directory), verbose=verbose)
    except (RuntimeError, OSError, ImportError) as exc:  # no compiler, no ninja, failed build
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RnnkitError(f"cannot build rnnkit's streaming kernel ({first}); "
                          "install a C++ compiler and ninja, or keep the Python path") from None
    _loaded["stream"] = module
    return module


def stream_kernel() -> Optional[ModuleType]:
    """The built streaming kernel, or ``None`` (then the Python path runs; logged once)."""
    if "stream" in _loaded:
        return _loaded["stream"]
    module, reason = None, None
    path = build_directory() / f"{_name()}.so"
    if os.environ.get("RNNKIT_KERNELS", "1") == "0":
        reason = "RNNKIT_KERNELS=0"
    elif not path.exists():
        reason = f"not built (run `python -m rnnkit.cells.kernels` once; looked in {path.parent})"
    else:
        try:
            spec = importlib.util.spec_from_file_location(_name(), path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        except ImportError as exc:  # built for another torch or machine
            module, reason = None, f"cannot load {path}: {exc}"
    if reason:
        log.info("rnnkit's compiled streaming kernel is off (%s): LSTM steps run as Python ops", reason)
    _loaded["stream"] = module
    return module

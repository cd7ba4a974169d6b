"""Optional compiled kernels: built ahead of time, only ever loaded at run time.

Four small C++ extensions, each one source file here (plus the headers it includes):

- ``stream``: ``stream_step.cpp``, one step of a stack of LSTM layers (``cells/streaming.py``),
  its weights read as float32 or, under bfloat16 autocast, bfloat16;
- ``scan``: ``linear_scan.cpp``, minGRU/minLSTM gates and linear scan over a whole sequence,
  forward and backward (``cells/minimal.py``);
- ``gru``: ``gru_scan.cpp``, the GRU recurrence's time loop, forward and backward: one GEMM
  and one fused pass of gate math per step (``cells/scan.py``, ``CompiledGRUScan``);
- ``lstm``: ``lstm_scan.cpp``, the LayerNorm/peephole LSTM's time loop, forward and backward:
  one GEMM and one fused pass of gate and layer-norm math per step (``cells/scan.py``,
  ``LSTMScan``).

``build()`` compiles them (a C++ compiler and ninja needed; ~30 s of CPU each) into rnnkit's
cache directory (``$RNNKIT_CACHE``, default ``~/.cache/rnnkit``), under a name keyed by the
torch and Python versions, the hash of the source and its headers, and the CPU (all are
compiled for this CPU's vector instructions). ``rnnkit bench`` builds them; so does
``python -m rnnkit.cells.kernels``.

At run time :func:`kernel` only loads an already-built module, so a user's machine needs no
compiler: without a built kernel (or with ``RNNKIT_KERNELS=0``) the same equations run as
Python ops, and rnnkit says so once (logging).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import platform
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Optional

import torch

from ...errors import RnnkitError

# GCC vectorises `omp simd` loops 256 bits wide on AVX-512 CPUs unless told otherwise (its
# tuning for Intel's and AMD's server parts): at 512 bits the minLSTM scan's passes run 1.4x
# (forward) and 1.7x (backward) faster on a Xeon with AVX-512.
# x86 only (other targets reject the flag); the stream kernel picks its own width (blocked_lstm.h).
_WIDE = ("-mprefer-vector-width=512",) if platform.machine().lower() in ("x86_64", "amd64") else ()

#: kernel name -> (source file, extra compiler flags, what runs without it)
KERNELS: dict[str, tuple[str, tuple[str, ...], str]] = {
    # -march=native: vectors as wide as the CPU's (AVX-512 here), for the CPU that builds (and,
    # the cache key says, runs) it. -fopenmp (compile and link): at::parallel_for is a header
    # template that splits work across torch's threads only when compiled with OpenMP (else
    # serially); it also honours the `omp simd` loops; the libgomp linked is the one torch has
    # already loaded. -ffp-contract=fast: fused multiply-adds in the stream kernel's
    # matrix-vector product (ISO C++ mode turns them off otherwise).
    "stream": ("stream_step.cpp", ("-O3", "-march=native", "-fopenmp", "-ffp-contract=fast"),
               "LSTM steps run as Python ops"),
    "scan": ("linear_scan.cpp", ("-O3", "-march=native", "-fopenmp", *_WIDE), "minGRU/minLSTM scan in Python ops"),
    "gru": ("gru_scan.cpp", ("-O3", "-march=native", "-fopenmp", *_WIDE), "the GRU's time loop runs as Python ops"),
    "lstm": ("lstm_scan.cpp", ("-O3", "-march=native", "-fopenmp", *_WIDE),
             "the LayerNorm/peephole LSTM's time loop runs as Python ops"),
}
log = logging.getLogger("rnnkit")
_loaded: dict[str, Optional[ModuleType]] = {}


def _cpu() -> str:
    try:
        return next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def cpu_multiplies_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX-512 BF16 or AMX): torch's own probes
    (private, hence looked up with a default)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def _source_and_headers(file: str, seen: Optional[set[str]] = None) -> bytes:
    """``file``'s bytes, then those of every header of ours it includes (``#include "..."``,
    next to it), and of theirs in turn, each once: what a build of it depends on."""
    seen = set() if seen is None else seen
    seen.add(file)
    text = Path(__file__).with_name(file).read_bytes()
    for header in re.findall(rb'^#include "([^"]+)"', text, flags=re.MULTILINE):
        if header.decode() not in seen:
            text += _source_and_headers(header.decode(), seen)
    return text


def build_directory(name: str = "stream") -> Path:
    source, flags, _ = KERNELS[name]
    key = _source_and_headers(source)
    if "-march=native" in flags:  # a build for this CPU only
        key += " ".join(flags).encode() + _cpu().encode()
    digest = hashlib.sha256(key).hexdigest()[:12]
    tag = f"torch{torch.__version__}-py{sys.version_info.major}{sys.version_info.minor}-{digest}".replace("+", "_")
    return Path(os.environ.get("RNNKIT_CACHE", Path.home() / ".cache" / "rnnkit")) / "kernels" / tag


def _module_name(name: str) -> str:
    return f"rnnkit_{Path(KERNELS[name][0]).stem}_" + build_directory(name).name.rsplit("-", 1)[1]


def build(verbose: bool = False, names: Optional[list[str]] = None) -> list[ModuleType]:
    """Compile the kernels (all, or ``names``) into the cache (a no-op when built) and load them."""
    from torch.utils import cpp_extension

    modules = []
    for name in names or list(KERNELS):
        source, flags, _ = KERNELS[name]
        directory = build_directory(name)
        directory.mkdir(parents=True, exist_ok=True)
        try:
            module = cpp_extension.load(_module_name(name), [str(Path(__file__).with_name(source))],
                                        extra_cflags=list(flags), build_directory=str(directory), verbose=verbose,
                                        extra_ldflags=["-fopenmp"] if "-fopenmp" in flags else None)
        except (RuntimeError, OSError, ImportError) as exc:  # no compiler, no ninja, failed build
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RnnkitError(f"cannot build rnnkit's {name} kernel ({first}); "
                              "install a C++ compiler and ninja, or keep the Python path") from None
        _loaded[name] = module
        modules.append(module)
    return modules


def kernel(name: str) -> Optional[ModuleType]:
    """The built kernel ``name``, or ``None`` (then the Python path runs; logged once)."""
    if name in _loaded:
        return _loaded[name]
    module, reason = None, None
    path = build_directory(name) / f"{_module_name(name)}.so"
    if os.environ.get("RNNKIT_KERNELS", "1") == "0":
        reason = "RNNKIT_KERNELS=0"
    elif not path.exists():
        reason = f"not built (run `python -m rnnkit.cells.kernels` once; looked in {path.parent})"
    else:
        try:
            spec = importlib.util.spec_from_file_location(_module_name(name), path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        except ImportError as exc:  # built for another torch or machine
            module, reason = None, f"cannot load {path}: {exc}"
    if reason:
        log.info("rnnkit's compiled %s kernel is off (%s): %s", name, reason, KERNELS[name][2])
    _loaded[name] = module
    return module


def stream_kernel() -> Optional[ModuleType]:
    """The built streaming kernel, or ``None``."""
    return kernel("stream")


def scan_kernel() -> Optional[ModuleType]:
    """The built minGRU/minLSTM scan kernel, or ``None``."""
    return kernel("scan")


def gru_kernel() -> Optional[ModuleType]:
    """The built GRU recurrence kernel, or ``None``."""
    return kernel("gru")


def lstm_kernel() -> Optional[ModuleType]:
    """The built LayerNorm/peephole LSTM recurrence kernel, or ``None``."""
    return kernel("lstm")

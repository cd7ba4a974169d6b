"""Optional compiled kernels, built on the machine that runs them, for its CPU.

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

Where they are built, and why there. Each is compiled with ``-march=native`` (vectors as wide
as this CPU's), so a build is only valid on the CPU that made it: it lives in rnnkit's cache
(``$RNNKIT_CACHE``, default ``~/.cache/rnnkit``) under a name keyed by the torch and Python
versions, the hash of the source and its headers, and the CPU's flags, and another machine,
torch or source never loads it. That rules out compiling at ``pip install`` or wheel-build
time: a wheel is built once and installed elsewhere (its kernels would crash on an older CPU),
and a build step importing torch would have pip fetch an unpinned torch into its isolated
build environment. So the package ships the sources (every ``.cpp`` and ``.h`` here) and the
kernels are built where rnnkit runs, by whichever comes first:

- ahead of time: ``python -m rnnkit.cells.kernels`` (``make install`` runs it, so ``make test``
  and ``make demo`` start with them; so does ``rnnkit bench``);
- on first use: when a kernel is asked for (:func:`kernel`) and is not built, and a C++
  compiler and ninja are on the PATH, rnnkit starts ONE detached, low-priority background
  process running ``python -m rnnkit.cells.kernels`` (output in the cache's ``build.log``) and
  says so once (a ``logging`` WARNING, which Python prints even unconfigured). The caller is not
  blocked: the Python path serves until the build has finished, and from the next call after it
  the kernel runs (same equations, so results change only by float rounding). A detached process,
  not a thread, so that the build finishes even when the program that asked ends first. One build
  at a time: builds take an exclusive lock (``flock``) that the OS frees if a builder dies, and
  then clear any lock file a killed build left behind.

Nothing is ever required: without a compiler, with ``RNNKIT_BUILD_KERNELS=0`` (never compile at
run time), or on ANY problem building or loading a kernel (a missing source, a failed build, a
module built for another torch), the same equations run as torch ops and rnnkit says once, as
a WARNING, why and how to build. ``RNNKIT_KERNELS=0`` turns the kernels off altogether: nothing
is built, and that is logged at INFO only.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Iterator, Optional

import torch

from ...errors import RnnkitError

# GCC vectorises `omp simd` loops 256 bits wide on AVX-512 CPUs unless told otherwise (its
# tuning for Intel's and AMD's server parts); the scans' passes run faster 512 bits wide
# (benchmarks/scan_cells.py and fused_cells.py measure the kernels that use it).
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
               "LSTM steps run ATen's lstm_cell per layer"),
    "scan": ("linear_scan.cpp", ("-O3", "-march=native", "-fopenmp", *_WIDE), "minGRU/minLSTM scan in Python ops"),
    "gru": ("gru_scan.cpp", ("-O3", "-march=native", "-fopenmp", *_WIDE), "the GRU's time loop runs as Python ops"),
    "lstm": ("lstm_scan.cpp", ("-O3", "-march=native", "-fopenmp", *_WIDE),
             "the LayerNorm/peephole LSTM's time loop runs as Python ops"),
}
HOW = "`python -m rnnkit.cells.kernels` builds them"
log = logging.getLogger("rnnkit")
_loaded: dict[str, Optional[ModuleType]] = {}  # name -> module, or None: the Python path runs
_why_off: dict[str, str] = {}  # name -> why _find() returned None, for explain() (cells/paths.py)
_UNSET = object()
_builder: Optional[subprocess.Popen] = None  # the background build this process started, while it runs
_builder_started = False  # at most one per process, whatever it ends in
_next_poll = 0.0  # when kernel() next asks the OS whether that build has finished
_POLL_SECONDS = 1.0
_run_time_builds = [True]  # False: kernel() never starts a build (see allow_run_time_builds)


def _cache() -> Path:
    return Path(os.environ.get("RNNKIT_CACHE", Path.home() / ".cache" / "rnnkit")) / "kernels"


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


def sources(name: str) -> list[str]:
    """The files kernel ``name`` is built from: its source and every header it reaches."""
    seen: set[str] = set()
    _source_and_headers(KERNELS[name][0], seen)
    return sorted(seen)


def build_directory(name: str = "stream") -> Path:
    source, flags, _ = KERNELS[name]
    key = _source_and_headers(source)
    if "-march=native" in flags:  # a build for this CPU only
        key += " ".join(flags).encode() + _cpu().encode()
    digest = hashlib.sha256(key).hexdigest()[:12]
    tag = f"torch{torch.__version__}-py{sys.version_info.major}{sys.version_info.minor}-{digest}".replace("+", "_")
    return _cache() / tag


def _module_name(name: str) -> str:
    return f"rnnkit_{Path(KERNELS[name][0]).stem}_" + build_directory(name).name.rsplit("-", 1)[1]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """One build at a time across processes: an exclusive ``flock``, which the OS frees if its
    holder dies (unlike torch's own lock file, which a killed build leaves behind)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: builds are not serialised
        yield
        return
    _cache().mkdir(parents=True, exist_ok=True)
    with open(_cache() / ".build-lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def build(verbose: bool = False, names: Optional[list[str]] = None) -> list[ModuleType]:
    """Compile the kernels (all, or ``names``) into the cache (a no-op when built) and load them;
    raises :class:`RnnkitError` saying why one cannot be built."""
    from torch.utils import cpp_extension

    modules = []
    with _build_lock():
        for name in names or list(KERNELS):
            source, flags, _ = KERNELS[name]
            try:
                directory = build_directory(name)
                directory.mkdir(parents=True, exist_ok=True)
                (directory / "lock").unlink(missing_ok=True)  # torch's, left by a killed build: we hold ours
                module = cpp_extension.load(_module_name(name), [str(Path(__file__).with_name(source))],
                                            extra_cflags=list(flags), build_directory=str(directory), verbose=verbose,
                                            extra_ldflags=["-fopenmp"] if "-fopenmp" in flags else None)
            except Exception as exc:  # no compiler, no ninja, a missing header, a failed build
                raise RnnkitError(f"cannot build rnnkit's {name} kernel ({_first_line(exc)}); "
                                  "install a C++ compiler and ninja, or keep the Python path") from None
            _loaded[name] = module
            modules.append(module)
    return modules


def kernel(name: str) -> Optional[ModuleType]:
    """The built kernel ``name``, or ``None``: then the Python path runs, and why is logged once.

    Not built yet: a background build starts if it can (module docstring), and the kernel is
    returned from the first call after that build has finished."""
    if _builder is not None:
        _poll_builder()
    module = _loaded.get(name, _UNSET)
    if module is _UNSET:
        module = _loaded[name] = _find(name)
    return module


def _find(name: str) -> Optional[ModuleType]:
    """Load kernel ``name`` if built; else log why not (starting a background build if it can).
    Called once per kernel (:func:`kernel` keeps the answer), so each reason is said once."""
    what = KERNELS[name][2]
    if os.environ.get("RNNKIT_KERNELS", "1") == "0":
        _why_off[name] = "RNNKIT_KERNELS=0"
        log.info(f"rnnkit's compiled {name} kernel is off (RNNKIT_KERNELS=0): {what}")
        return None
    try:  # any problem at all (a missing header, a build for another torch): the Python path runs
        path = build_directory(name) / f"{_module_name(name)}.so"
        if path.exists():
            spec = importlib.util.spec_from_file_location(_module_name(name), path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
        reason = _not_built()
    except Exception as exc:
        reason = f"cannot load it: {_first_line(exc)}; {HOW} again and shows why"
    _why_off[name] = reason
    log.warning(f"rnnkit's compiled {name} kernel is off ({reason}): {what}")
    return None


def _not_built() -> str:
    """Why a kernel that is not built is not there yet, starting a background build if it can."""
    log_file = _cache() / "build.log"
    if _builder is not None:
        return f"not built; compiling in the background, log {log_file}"
    if _builder_started:
        return f"not built; the background build failed, see {log_file}; {HOW} and shows why"
    missing = [tool for tool in (os.environ.get("CXX", "c++"), "ninja") if shutil.which(tool) is None]
    if missing:
        return f"not built, and no {' or '.join(missing)} on the PATH to build it: install them, then {HOW}"
    if os.environ.get("RNNKIT_BUILD_KERNELS", "1") == "0" or not _run_time_builds[0]:
        return f"not built, and building at run time is off; {HOW}"
    return f"not built; compiling the kernels in the background now (pid {_start_builder(log_file)}, " \
           f"once for this machine; log {log_file})"


def _start_builder(log_file: Path) -> int:
    """Start ``python -m rnnkit.cells.kernels`` detached (its own session: it outlives this
    process and ignores its Ctrl-C), importing this same rnnkit; returns its pid."""
    global _builder, _builder_started
    _builder_started = True
    package_root = str(Path(__file__).resolve().parents[3])
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "RNNKIT_BUILD_KERNELS": "0"}
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        _builder = subprocess.Popen([sys.executable, "-m", "rnnkit.cells.kernels", "--background"],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)
    return _builder.pid


def _poll_builder() -> None:
    """At most once a second: if the background build has ended, forget every ``None`` so that
    the next :func:`kernel` call loads what it built (or says that it failed)."""
    global _builder, _next_poll
    now = time.monotonic()
    if now < _next_poll or _builder.poll() is None:
        _next_poll = max(_next_poll, now + _POLL_SECONDS)
        return
    _builder = None
    for name in [name for name, module in _loaded.items() if module is None]:
        del _loaded[name]


def wait_for_build(timeout: Optional[float] = None) -> Optional[int]:
    """Block until the background build this process started ends: its exit status (0: every
    kernel built), or ``None`` if none is running. The next :func:`kernel` call loads its kernels."""
    global _next_poll
    if _builder is None:
        return None
    status = _builder.wait(timeout)
    _next_poll = 0.0
    _poll_builder()
    return status


def allow_run_time_builds(allowed: bool) -> None:
    """Whether :func:`kernel` may start a background build in this process (``rnnkit bench
    --no-build-kernel`` forbids it, to measure only what is built); ``RNNKIT_BUILD_KERNELS=0``
    forbids it for every process."""
    _run_time_builds[0] = allowed


def why_off(name: str) -> str:
    """Why kernel ``name`` is not running, as :func:`kernel` last found (for the path selector's
    reasons); call it after :func:`kernel` returned ``None``."""
    return _why_off.get(name, "not loaded in this process")


#: what :func:`looked_up` answers while a kernel's availability may still change
UNSETTLED = _UNSET


def looked_up(name: str) -> object:
    """Kernel ``name`` as :func:`kernel` last answered (the module, or ``None``) without asking
    again, or :data:`UNSETTLED` if it has not been asked yet or a background build is running
    (whose end may change the answer): lets a caller that remembers a choice made from the
    answer (``streaming.PathCache.steps``) skip asking while it cannot have changed."""
    return _UNSET if _builder is not None else _loaded.get(name, _UNSET)


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

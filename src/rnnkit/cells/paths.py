"""Which code computes a step and a forward pass: the one place that chooses, and says why.

Every recurrent computation in rnnkit runs one of a few paths. This module holds the rules
that pick one; the cells (``base.py`` and each family), ``streaming.py`` and
``layers.Recurrent`` only run what it picked, so "what runs, and why" is answered here and by
:func:`select` (which ``rnnkit info`` and ``rnnkit.layers.explain`` print).

A step (one time step for a batch of streams; ``Recurrent.step``, ``cell.step``):

================================  ======================================================
``compiled-stack-step``           every layer of a plain LSTM stack in ONE call of the compiled
                                  stream kernel (``kernels/stream_step.cpp``): its own product
                                  over float32 weights laid out for it, fused with the gates
``compiled-stack-step-bf16``      the same, reading a bfloat16 copy of the weights (under
                                  bfloat16 autocast); state and arithmetic stay float32
``compiled-bf16-gemm-step``       under bfloat16 autocast, many streams, on a CPU that multiplies
                                  bfloat16: one bfloat16 GEMM per layer (``kernels/gemm_lstm.h``)
``compiled-mkl-stack-step``       above the blocked product's batch: MKL's packed GEMM per layer,
                                  its gate ops dispatched from C++ (``compiled-addmm-stack-step``
                                  where torch has no packed GEMM)
``aten-lstm-cell``                ATen's fused ``lstm_cell`` per layer (what ``torch.nn.LSTMCell``
                                  runs): differentiable, any dtype and device
``aten-gru-cell``,                the same for GRU and Elman cells
``aten-rnn-cell``
``aten-lstm-cell-colmajor``,      a stack's step for one float32 stream on the CPU without
``aten-gru-cell-colmajor``,       gradients (or the compiled kernel): the same ATen cell per
``aten-rnn-cell-colmajor``        layer over column-major copies of the weights
                                  (``streaming.colmajor_step``), whose products MKL runs faster
``reference``                     the cell's equations as written (``_reference_step``)
================================  ======================================================

A forward pass over a sequence (``cell(x)``, ``Recurrent(x)``):

================================  ======================================================
``aten-lstm``, ``aten-gru``,      ATen's fused kernels, what ``torch.nn.LSTM``/``GRU``/``RNN`` run
``aten-rnn``                      (oneDNN on CPU, cuDNN on GPU); variable lengths go packed
``compiled-lstm-scan``,           the LayerNorm/peephole LSTM's own recurrence (``scan.py``) with
``lstm-scan``                     its time loops in C++ (``kernels/lstm_scan.cpp``), or in Python
``compiled-gru-scan``,            training a GRU on a CPU: rnnkit's recurrence with a hand-written
``gru-scan``                      backward, in C++ (``kernels/gru_scan.cpp``) or in Python
``compiled-min-scan``,            minGRU/minLSTM: the parallel scan in C++ (``kernels/linear_scan.cpp``),
``min-scan-blocked``,             in blocked torch ops (CPU), or in log space (other devices;
``min-scan-log-space``            ``minimal.py``)
``reference``                     the equations step by step under autograd: gate traces,
                                  ``backend="reference"``, or options no fused path has
================================  ======================================================

``backend="reference"`` on a cell (``Recurrent(..., backend="reference")``) forces the
``reference`` path for both, whatever the machine: the way to run plain torch ops only (an
exporter that traces the model, a test of the equations). On a model already built,
``rnnkit.layers.set_backend(model, "reference")`` switches every cell and drops the layers'
cached compiled stacks.

Once ``compiled-*-step`` has run, ``Recurrent.step`` first calls the compiled stack it cached
(``streaming.compiled_step``), which re-checks this module's conditions for it in C++ and
declines whatever they rule out; only then is :func:`step_path` asked again. That keeps the
streaming hot path to one call. Without gradients or autocast, what :func:`step_path` chose is
remembered in the layer's ``PathCache.steps`` per input and state shape, dtype, device, cells and
the stream kernel's availability (``streaming.selection_key``): the next step with the same ones
skips the argument checks and these rules, a dictionary lookup (``set_backend`` forgets it).

The thresholds between the compiled step's variants are constants below;
``benchmarks/streaming.py`` measures the step they lead to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor, nn

from .kernels import cpu_multiplies_bf16, gru_kernel, lstm_kernel, scan_kernel, stream_kernel, why_off

#: MKL's packed GEMM as exposed by ATen (what inductor's ``freezing`` uses on CPU)
HAS_MKL_PACKED = torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")
#: Up to how many streams the stream kernel's own blocked product runs, by its vector width
#: (``kernel.LANES``: 16 floats with AVX-512, 8 with AVX2, 4 with SSE/NEON); above, MKL's GEMM.
#: Chosen by timing both against each other on AVX-512 and AVX2 builds (the figures are in
#: ``benchmarks/results/figures_from_comments.json``); 4 lanes is unmeasured.
BLOCKED_MAX_BATCH = {16: 256, 8: 32, 4: 8}
#: From how many streams a step under bfloat16 autocast is one bfloat16 GEMM per layer, where
#: the CPU multiplies bfloat16 in hardware: below it the blocked product on bfloat16 weights
#: reads fewer bytes, above it the GEMM's tiles win (timed on a CPU with AMX: the figures are in
#: ``benchmarks/results/figures_from_comments.json``).
BF16_GEMM_FROM_BATCH = 16
#: Up to how many streams a stack's step without the compiled kernel multiplies by column-major
#: copies of the weights (``W^T`` contiguous): for one stream ATen's product over them is a faster
#: GEMV than over the parameters' row-major layout; from two streams on it is not (timed against
#: each other by hand: ``benchmarks/results/figures_from_comments.json``; the step it leads to is
#: ``benchmarks/streaming.py``'s no-kernel row).
COLUMN_MAJOR_MAX_BATCH = 1

_CPU = torch.device("cpu")
#: the step paths :func:`stack_step` (``streaming.py``) runs for a whole plain-LSTM stack at once
STACK_STEPS = frozenset({"compiled-stack-step", "compiled-stack-step-bf16", "compiled-bf16-gemm-step",
                         "compiled-mkl-stack-step", "compiled-addmm-stack-step", "aten-lstm-cell"})
#: the step paths ``streaming.colmajor_step`` runs for a stack of LSTM, GRU or Elman cells
COLMAJOR_STEPS = frozenset({"aten-lstm-cell-colmajor", "aten-gru-cell-colmajor", "aten-rnn-cell-colmajor"})


class Path(NamedTuple):
    """A chosen path: its ``name`` (the tables in the module docstring), a one-line ``reason``,
    and the compiled ``kernel`` module it runs, if any (not shown)."""

    name: str
    reason: str
    kernel: Optional[object] = None

    def __repr__(self) -> str:
        return f"Path(name={self.name!r}, reason={self.reason!r})"

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


class Paths(NamedTuple):
    """What :func:`select` answers: the path of a step and of a forward pass."""

    step: Path
    forward: Path


#: a cell (``RecurrentCell``), or the cells of a stack (``Recurrent.cells``, a list)
Cells = Union[nn.Module, Sequence[nn.Module]]

_REFERENCE_BACKEND = Path("reference", "backend='reference' asks for the equations as written")
_ATEN_CELLS = {kind: Path(f"aten-{kind}-cell", f"ATen's fused {kind}_cell, as torch.nn.{kind.upper()}Cell runs")
               for kind in ("lstm", "gru", "rnn")}


def select(target: Cells, *, batch: int = 1, dtype: Optional[torch.dtype] = None,
           device: Optional[Union[str, torch.device]] = None, training: bool = False,
           precision: str = "fp32", bidirectional: bool = False) -> Paths:
    """The paths a step and a forward pass of ``target`` take on this machine, and why.

    Args:
        target: a cell, or the cells of a unidirectional stack stepped together
            (``Recurrent.cells``; the forward is reported for its first cell, the others'
            is the same).
        batch: streams per step (and sequences per forward).
        dtype: of the inputs and state; the parameters' dtype if ``None``.
        device: where the inputs live; the parameters' device if ``None``.
        training: autograd records (gradients wanted for the parameters that require them).
        precision: ``"fp32"``, or ``"bf16"`` for bfloat16 autocast (``rnnkit.precision``).
        bidirectional: the stack reads each sequence backwards too (then it cannot step).
    """
    first = target[0] if _is_stack(target) else target
    weight = first.weight_ih
    dtype = weight.dtype if dtype is None else dtype
    device = weight.device if device is None else torch.device(device)
    grad = training and any(p.requires_grad for p in _parameters(target))
    if bidirectional:
        step = Path("not-steppable", "bidirectional: the reverse direction reads the future")
    else:
        step = step_path(target, batch=batch, dtype=dtype, device=device, grad=grad, bf16=precision == "bf16")
    forward = forward_path(first, dtype=dtype, device=device, grad=training, lengths=False, return_gates=False)
    return Paths(step, forward)


def step_path(target: Cells, *, batch: int = 1, dtype: torch.dtype = torch.float32,
              state_dtype: Optional[torch.dtype] = None, device: torch.device = _CPU,
              grad: bool = False, bf16: bool = False) -> Path:
    """The path of one step of ``target`` (a cell, or a stack's cells stepped together).

    ``grad``: autograd must see the step (it records, and an input, the state or a parameter
    requires gradients: :func:`needs_grad`). ``bf16``: under bfloat16 CPU autocast.
    ``state_dtype``: the state's, if it differs from the input's ``dtype``."""
    cells = target if _is_stack(target) else [target]
    first = cells[0]
    forced = forced_reference(first)
    if forced:
        return forced
    if not first.recurrent_weights:
        return Path("reference", f"a {first.kind} step is a few elementwise ops on one projection: its equations")
    options = first.torch_nn_unavailable_reason() if first.kind == "lstm" else None
    if options:
        return Path("reference", f"{options}, nor in any fused step: the equations, step by step")
    if first.kind not in _ATEN_CELLS:
        return _unknown(first)
    if not _is_stack(target):
        return _ATEN_CELLS[first.kind]  # a lone cell: ATen's, never the stack's paths
    if first.kind != "lstm":  # a stack the compiled kernel does not step
        return _aten_stack(cells, first.kind, batch, dtype, state_dtype or dtype, device, grad, bf16)
    return _lstm_stack_step(cells, batch, dtype, state_dtype or dtype, device, grad, bf16)


def _aten_stack(cells: Sequence[nn.Module], kind: str, batch: int, dtype: torch.dtype, state_dtype: torch.dtype,
                device: torch.device, grad: bool, bf16: bool, why: str = "") -> Path:
    """ATen's fused cell per layer of a stack: over column-major copies of the weights for one
    float32 stream on the CPU without gradients (``COLUMN_MAJOR_MAX_BATCH``), else over the
    parameters themselves (differentiable, any dtype and device). ``why``: why not the kernel."""
    why = f": {why}" if why else ""
    if (batch <= COLUMN_MAJOR_MAX_BATCH and device.type == "cpu" and not grad and not bf16
            and dtype == state_dtype == torch.float32
            and all(p.dtype == torch.float32 and p.device.type == "cpu" for p in _parameters(cells))):
        return Path(f"aten-{kind}-cell-colmajor", f"ATen's fused {kind}_cell per layer over column-major copies "
                    f"of the weights (batch {batch} <= {COLUMN_MAJOR_MAX_BATCH}, float32, no gradients: "
                    f"a faster product){why}")
    if why:
        return Path(f"aten-{kind}-cell", f"ATen's fused {kind}_cell per layer{why}")
    return _ATEN_CELLS[kind]


def _lstm_stack_step(cells: Sequence[nn.Module], batch: int, dtype: torch.dtype, state_dtype: torch.dtype,
                     device: torch.device, grad: bool, bf16: bool) -> Path:
    """A plain LSTM stack: the compiled stream kernel where it can run, else ATen's cell per layer."""
    def aten(why: str) -> Path:
        return _aten_stack(cells, "lstm", batch, dtype, state_dtype, device, grad, bf16, why)

    if device.type != "cpu":
        return aten(f"the compiled stream kernel runs on the CPU, not {device}")
    kernel = stream_kernel()
    if kernel is None:
        return aten(f"the compiled stream kernel is off ({why_off('stream')})")
    if not dtype == state_dtype == torch.float32:
        return aten(f"the compiled stream kernel steps float32, not {dtype if dtype != torch.float32 else state_dtype}")
    if not all(p.dtype == torch.float32 and p.device.type == "cpu" for p in _parameters(cells)):
        return aten("the compiled stream kernel reads float32 weights on the CPU")
    if grad:
        return aten("gradients wanted, and autograd must see every op")
    max_batch = BLOCKED_MAX_BATCH.get(kernel.LANES, 8)
    gemm = bf16 and bf16_gemm(kernel)
    if gemm and batch >= BF16_GEMM_FROM_BATCH:
        return Path("compiled-bf16-gemm-step", f"bfloat16 autocast, batch {batch} >= {BF16_GEMM_FROM_BATCH}, "
                    "and this CPU multiplies bfloat16: one bfloat16 GEMM per layer", kernel)
    if batch <= max_batch:
        weights = "a bfloat16 copy of the weights (autocast)" if bf16 else "the float32 weights"
        return Path("compiled-stack-step-bf16" if bf16 else "compiled-stack-step",
                    f"stream kernel built for this CPU; batch {batch} <= {max_batch}; no gradients: "
                    f"its blocked product over {weights}, every layer in one call", kernel)
    if gemm:  # only where the blocked product stops below the GEMM's batch (4-lane builds)
        return aten(f"batch {batch} is above the blocked product's {max_batch} and below the "
                    f"bfloat16 GEMM's {BF16_GEMM_FROM_BATCH}")
    if HAS_MKL_PACKED:
        return Path("compiled-mkl-stack-step", f"batch {batch} > {max_batch}, the blocked product's "
                    "limit: MKL's packed GEMM per layer, gates in C++", kernel)
    return Path("compiled-addmm-stack-step", f"batch {batch} > {max_batch}, the blocked product's "
                "limit, and this torch has no MKL packed GEMM: addmm per layer, gates in C++", kernel)


def forced_reference(cell: nn.Module) -> Optional[Path]:
    """The ``reference`` path if ``cell``'s options force it for both a step and a forward
    (``backend="reference"``, or options no fused path has), else ``None``."""
    if cell.backend == "reference":
        return _REFERENCE_BACKEND
    reason = cell.fused_unavailable_reason()
    return Path("reference", reason) if reason else None


def forward_path(cell: nn.Module, *, dtype: torch.dtype = torch.float32,
                 state_dtype: Optional[torch.dtype] = None, device: torch.device = _CPU,
                 grad: bool = False, lengths: bool = False, return_gates: bool = False) -> Path:
    """The path of ``cell``'s forward over a sequence of ``dtype`` on ``device``.

    ``grad``: autograd records (``torch.is_grad_enabled()``); ``lengths``: a variable-length
    batch; ``return_gates``: gate traces asked for."""
    forced = forced_reference(cell)
    if forced:
        return forced
    if return_gates:
        return Path("reference", "gate traces asked for: only the equations expose them")
    state_dtype = state_dtype or dtype
    kind, weight_dtype = cell.kind, cell.weight_ih.dtype
    cpu = device.type == "cpu"
    options = cell.torch_nn_unavailable_reason() if kind == "lstm" else None
    if kind == "rnn" or kind == "lstm" and not options:
        packed = "; variable lengths go packed" if lengths else ""
        return Path(f"aten-{kind}", f"ATen's fused kernel, as torch.nn.{kind.upper()} runs{packed}")
    if kind == "lstm":  # peepholes or layer norm: rnnkit's own recurrence (LSTMScan)
        why = _compilable(cpu, device, weight_dtype, state_dtype == weight_dtype)
        kernel = None if why else lstm_kernel()
        return _scan("lstm-scan", f"{options}: rnnkit's own recurrence", kernel, why or f"kernel off ({why_off('lstm')})")
    if kind == "gru":
        if not (cpu and grad and cell.weight_hh.requires_grad):
            return Path("aten-gru", "ATen's fused kernel, as torch.nn.GRU runs (not training on a CPU)")
        why = _compilable(cpu, device, weight_dtype, state_dtype == weight_dtype)
        kernel = None if why else gru_kernel()
        return _scan("gru-scan", "training on a CPU: one product for the weight gradient", kernel,
                     why or f"kernel off ({why_off('gru')})")
    if kind not in ("mingru", "minlstm"):
        return _unknown(cell)
    # minGRU / minLSTM: a parallel scan
    why = "variable lengths" if lengths else _compilable(cpu, device, dtype, True)
    kernel = None if why else scan_kernel()
    if kernel is not None and not dtype == weight_dtype == state_dtype:
        kernel, why = None, "inputs, weights and state differ in dtype"
    if kernel is not None:
        return Path("compiled-min-scan", "the parallel scan in one compiled pass over time", kernel)
    why = why or f"kernel off ({why_off('scan')})"
    if cpu:
        return Path("min-scan-blocked", f"the parallel scan in blocked torch ops ({why})")
    return Path("min-scan-log-space", f"the parallel scan in log space: logcumsumexp is parallel on {device}")


def _unknown(cell: nn.Module) -> Path:
    """A cell family this module has no rules for (a new one registers its paths here)."""
    return Path("reference", f"no fused path is known for {type(cell).__name__} (kind {cell.kind!r}): its equations")


def _compilable(cpu: bool, device: torch.device, dtype: torch.dtype, same_dtype: bool) -> Optional[str]:
    """Why a compiled scan kernel cannot run these tensors, or ``None`` if it can (kernel aside)."""
    if not cpu:
        return f"compiled kernels run on the CPU, not {device}"
    if dtype not in (torch.float32, torch.float64):
        return f"compiled kernels take float32 or float64, not {dtype}"
    return None if same_dtype else "inputs, weights and state differ in dtype"


def _scan(name: str, what: str, kernel, why_python: str) -> Path:
    if kernel is not None:
        return Path(f"compiled-{name}", f"{what}; its time loops in C++", kernel)
    return Path(name, f"{what}; its time loops in Python ({why_python})")


def bf16_gemm(kernel) -> bool:
    """Whether the stream kernel's bfloat16 GEMM step can run and pays: MKL in torch, bfloat16 in the CPU."""
    return bool(getattr(kernel, "HAS_BF16_GEMM", False)) and cpu_multiplies_bf16()


def autocast_bf16() -> bool:
    """Whether CPU autocast to bfloat16 is on."""
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def needs_grad(cells: Sequence[nn.Module], *tensors: Tensor) -> bool:
    """Whether autograd must see a step: it records, and a tensor or a parameter requires gradients."""
    return torch.is_grad_enabled() and (any(t.requires_grad for t in tensors)
                                        or any(p.requires_grad for p in _parameters(cells)))


def _is_stack(target: Cells) -> bool:
    return isinstance(target, (list, tuple, nn.ModuleList))


def _parameters(target: Cells) -> list[Tensor]:
    """The parameters of a cell or of a stack's cells, read straight from ``_parameters``."""
    cells = target if _is_stack(target) else [target]
    return [p for cell in cells for p in cell._parameters.values() if p is not None]

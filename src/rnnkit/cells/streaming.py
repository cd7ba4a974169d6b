"""The streaming step: one LSTM step for a batch of streams at the cost of reading its weights.

Stepping a small batch (generation, live forecasting, serving) is a matrix-vector product:
each step reads every weight once and does two flops per weight read, so its floor is
memory bandwidth, not arithmetic. ``torch.nn.LSTM`` called one step at a time spends most
of a step on per-call overhead (argument checks, weight flattening, oneDNN reorders);
``_VF.lstm_cell`` on two separate matrix products and ten small ops per layer.

This module runs the step paths of a plain LSTM stack that ``paths.py`` chooses (its
docstring lists them, :func:`paths.step_path` picks one) and keeps what they cache in a
:class:`PathCache` owned by the layer (``Recurrent.path_cache``):

- ``compiled-stack-step`` runs a whole stack in ONE call of the compiled stream kernel
  (``kernels/stream_step.cpp``), a ``StreamStack`` built once and cached, whose ``step`` checks
  its own arguments; so from the second step on ``Recurrent.step`` is one call into it
  (:func:`compiled_step`). Its product runs over weights laid out for it (:func:`_blocked`:
  4 gates x one vector of units contiguous per input), fused with the gates and the state
  update: each half of a layer's weights (``W_ih``, ``W_hh``) is one pass, so a batch-1 step
  costs about what reading the weights once costs (the floor); the passes' order alternates
  from step to step so that what one step read last, still in L2, the next reads first.
- ``compiled-stack-step-bf16``: under ``torch.autocast("cpu", dtype=torch.bfloat16)`` the same
  product reads a bfloat16 copy of the weights (half the bytes) and widens each to float32 as
  it loads it: the state, the sums and the gates stay float32, so the only rounding is the
  weights' (``benchmarks/streaming.py`` measures the output error after 200 steps).
- ``compiled-bf16-gemm-step``: under bfloat16 autocast with many streams, where the CPU
  multiplies bfloat16 in hardware (AMX, AVX-512 BF16) and torch carries MKL, one bfloat16 GEMM
  per layer, ``[x | h]`` and ``W`` rounded to bfloat16, sums, gates and state in float32
  (``kernels/gemm_lstm.h``): there the product is compute-bound and bfloat16 tiles win.
- ``compiled-mkl-stack-step``: above the blocked product's batch, per layer::

      z = [x_t | h_{t-1}] @ W^T + b     # (B, 4H): ONE product, W = [W_ih | W_hh] (4H, I+H),
                                        # rows reordered i, f, o, g, b = b_ih + b_hh
      i, f, o = sigmoid(z[:, :3H]); g = tanh(z[:, 3H:])
      c_t = f * c_{t-1} + i * g; h_t = o * tanh(c_t)

  with ``W`` packed once by MKL's ``cblas_sgemm_pack`` for the batch size in use and the gate
  ops dispatched from C++ (``lstm_stack_step``); from Python, ops around MKL's product were
  slower than ATen's ``lstm_cell``, so no Python version of it exists.
- ``aten-lstm-cell``: ATen's fused ``lstm_cell`` per layer (:func:`aten_stack_step`), reading
  the parameters straight from each cell: differentiable, any dtype or device.
- ``aten-lstm-cell-colmajor`` (and ``aten-gru-cell-colmajor``, ``aten-rnn-cell-colmajor`` for
  stacks of those cells): where the kernel is not built, one float32 stream without gradients:
  the same ATen cell per layer (:func:`colmajor_step`), given column-major copies of ``W_ih`` and
  ``W_hh`` (``W^T`` contiguous, viewed back as ``W``). ATen's cell computes ``x @ W^T``; over
  that layout MKL's batch-1 product streams the weights faster than over the parameters' own,
  which is what lets the step without a compiler keep up with a bare loop of ATen's cell.

Without the kernel a step costs a few dozen microseconds, so choosing its path every time (the
checks and the selector's rules in Python) would be a visible part of it: ``PathCache.steps``
remembers the path :func:`paths.step_path` chose per :func:`selection_key` (shapes, dtypes,
device, the kernel's availability; only without gradients or autocast), so from the second step
on the choice is one dictionary lookup.

Every cached copy is rebuilt when a parameter changes (its object, storage or ``_version``),
so training between generations, ``load_state_dict`` or ``.to()`` never see stale weights.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import _VF, Tensor, nn

from . import paths
from .kernels import UNSETTLED, looked_up
from .paths import Path, bf16_gemm

_MAX_PACKED_BATCHES = 4  # a packed copy per batch size in use; streams rarely change batch
_MAX_REMEMBERED_PATHS = 16  # chosen step paths per layer (shapes and dtypes in use); then start afresh
_EMPTY = torch.empty(0)
StepOutput = tuple[Tensor, tuple[Tensor, Tensor]]


class PathCache:
    """What a layer's step paths keep between steps, owned by the layer (``Recurrent.path_cache``).

    - ``stack``: the compiled stream kernel's ``StreamStack`` for ``stack_cells`` (the layer's
      ``cells``), with its weights laid out per precision in use; it knows itself when a
      parameter changed (``fresh()``) and is then rebuilt;
    - ``packed``: per cell index, ``[W_ih | W_hh]`` reordered and MKL's packed copies of it per
      batch size, keyed by the parameters' pointers and versions.

    A copy or a pickle of the layer carries none of it (MKL's packed weights and the kernel's
    objects neither copy nor pickle, and a copy has new parameters anyway): it rebuilds its own."""

    def __init__(self) -> None:
        self.stack = None
        self.stack_cells: Optional[nn.ModuleList] = None
        self.packed: dict[int, dict] = {}
        self.steps: dict[tuple, Path] = {}
        self.colmajor: Optional[tuple[list, list, Callable]] = None  # (what was copied, the copies, the op)
        self.carried: Optional[tuple] = None  # what colmajor_step last stacked into the state it returned

    def clear(self) -> None:
        self.__init__()

    def __deepcopy__(self, memo) -> "PathCache":
        return PathCache()

    def __reduce__(self):
        return PathCache, ()

    def __repr__(self) -> str:
        return (f"PathCache(stack={'built' if self.stack is not None else None}, packed={sorted(self.packed)}, "
                f"steps={len(self.steps)}, colmajor={'built' if self.colmajor is not None else None})")

    def colmajor_weights(self, cells: nn.ModuleList) -> tuple[list[tuple[Tensor, Tensor]], Callable]:
        """``(W_ih, W_hh)`` of every cell, each a column-major copy (``W.t().contiguous().t()``),
        rebuilt when a weight changes: its object, its storage or its ``_version``; and ATen's cell
        op that steps them (a stack's cells share their kind and options), looked up on ``_VF``
        when the copies are made: ``_VF``'s own lookup costs about what a small op does."""
        entry = self.colmajor
        if entry is None or not _unchanged(cells, entry[0]):
            seen = [(w_ih, w_ih.data_ptr(), w_ih._version, w_hh, w_hh.data_ptr(), w_hh._version)
                    for w_ih, w_hh in ((cell._parameters["weight_ih"], cell._parameters["weight_hh"]) for cell in cells)]
            with torch.no_grad():
                copies = [(w_ih.detach().t().contiguous().t(), w_hh.detach().t().contiguous().t())
                          for w_ih, _, _, w_hh, _, _ in seen]
            cell = next(iter(cells))
            op = "lstm_cell" if cell.kind == "lstm" else "gru_cell" if cell.kind == "gru" else f"rnn_{cell.nonlinearity}_cell"
            entry = self.colmajor = (seen, copies, getattr(_VF, op))
        return entry[1], entry[2]

    def remember(self, key: Optional[tuple], path: Path) -> None:
        """Keep ``path`` as the step's for ``key`` (:func:`selection_key`; ``None``: not kept)."""
        if key is not None:
            if len(self.steps) >= _MAX_REMEMBERED_PATHS:
                self.steps.clear()
            self.steps[key] = path

    def compiled_stack(self, kernel, cells: nn.ModuleList, bf16: bool):
        """The kernel's ``StreamStack`` for ``cells`` with the weights of the precision in force
        laid out (:func:`_blocked`; bfloat16 under CPU autocast): the cached one while ``cells``
        and their parameters are unchanged, else a new one."""
        stack = self.stack
        if stack is None or self.stack_cells is not cells or not stack.fresh():
            stack = self.stack = kernel.StreamStack(cells, paths.BLOCKED_MAX_BATCH.get(kernel.LANES, 8))
            self.stack_cells = cells
        if not stack.has_weights(bf16):
            input_sizes = [cell.input_size for cell in cells]
            weights, biases = zip(*(_blocked(cell, kernel.LANES) for cell in cells))
            if bf16:
                weights = [_paired_bf16(w, cell.input_size) for w, cell in zip(weights, cells)]
                if bf16_gemm(kernel):
                    gemm_weights, gemm_biases = zip(*(_joined(cell) for cell in cells))
                    stack.set_gemm_weights([w.to(torch.bfloat16) for w in gemm_weights], list(gemm_biases),
                                           input_sizes, paths.BF16_GEMM_FROM_BATCH)
            stack.set_weights(bf16, list(weights), list(biases), input_sizes)
        return stack

    def mkl_weights(self, index: int, cell: nn.Module, batch: int) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """``(W, b, packed W or None)`` of cell ``index`` for ``batch``, rebuilt when a parameter changes."""
        key = [(p.data_ptr(), p._version) for p in cell._flat_weights()]
        cache = self.packed.setdefault(index, {})
        entry = cache.get("weights")
        if entry is None or entry[0] != key:
            entry = (key, *_reordered(cell))
            cache.clear()
            cache["weights"] = entry
        _, weight, bias = entry
        packed = None
        if paths.HAS_MKL_PACKED and weight.device.type == "cpu":
            packed = cache.get(batch)
            if packed is None:
                if len(cache) > _MAX_PACKED_BATCHES:
                    cache.clear()
                    cache["weights"] = entry
                packed = cache[batch] = torch.ops.mkl._mkl_reorder_linear_weight(weight, batch)
        return weight, bias, packed


def compiled_step(cache: PathCache, cells: nn.ModuleList, x_t: Tensor, state) -> Optional[StepOutput]:
    """The hot path: ``(y_t, (h', c'))`` from the ``StreamStack`` cached for ``cells``, which
    re-checks in one call everything :func:`paths.step_path` checked when it chose it (dtypes,
    shapes, device, gradients, fresh weights, batch); ``None`` where it cannot run or none is
    cached yet: then the caller checks its arguments and asks the selector."""
    stack = cache.stack
    return stack.step(x_t, *state) if stack is not None and cache.stack_cells is cells else None


def selection_key(cells: nn.ModuleList, x_t: Tensor, state) -> Optional[tuple]:
    """Everything :meth:`Recurrent.step`'s checks and :func:`paths.step_path` read, as a key of
    ``PathCache.steps``: the input's and state's shapes and dtypes, the device, the cells, the
    stream kernel as last looked up (an LSTM's). ``None`` (choose afresh, remember nothing) with gradients on
    or CPU autocast (the choice would depend on ``requires_grad`` flags and autocast's dtype), for
    a state that is not a tensor or a pair of tensors, or while the kernel's availability may
    change (not looked up yet, or being built). A cell's options changed in place are not seen:
    ``layers.set_backend`` clears the cache."""
    if torch.is_grad_enabled() or torch.is_autocast_enabled("cpu") or type(x_t) is not Tensor:
        return None
    if type(state) is Tensor:  # a GRU or Elman stack: the stream kernel plays no part
        return (x_t.shape, x_t.dtype, x_t.device, state.shape, state.dtype, *cells._modules.values())
    if type(state) is tuple and len(state) == 2 and type(state[0]) is Tensor and type(state[1]) is Tensor:
        kernel = looked_up("stream")
        if kernel is UNSETTLED:
            return None
        h, c = state
        return (x_t.shape, x_t.dtype, x_t.device, h.shape, h.dtype, c.shape, c.dtype,
                id(kernel), *cells._modules.values())  # the kernel (or None) is kept alive by the loader
    return None


def colmajor_step(cells: nn.ModuleList, cache: PathCache, x_t: Tensor, parts: tuple[Tensor, ...]):
    """A stack of LSTM, GRU or Elman cells on ``aten-*-cell-colmajor``: ATen's fused cell per
    layer over the column-major weight copies in ``cache``, the biases read from each cell.
    ``parts``: the state's ``(L, B, H)`` tensors; returns ``(y_t, state)`` as ``Recurrent.step``.

    A stream hands back the state the previous step returned: then each layer's state is read
    from the per-layer tensors that step stacked into it (``PathCache.carried``), not split
    again, as long as neither the state nor the output was changed in place since."""
    weights, op = cache.colmajor_weights(cells)
    layers = _carried(cache, parts)
    if len(parts) == 2:
        hs, cs = [], []
        for cell, (w_ih, w_hh), h_l, c_l in zip(cells, weights, *(layers or (parts[0].unbind(0), parts[1].unbind(0)))):
            p = cell._parameters
            x_t, c_l = op(x_t, (h_l, c_l), w_ih, w_hh, p["bias_ih"], p["bias_hh"])
            hs.append(x_t)
            cs.append(c_l)
        state = (torch.stack(hs), torch.stack(cs))
        _carry(cache, state, x_t, (hs, cs))
        return x_t, state
    hs = []
    for cell, (w_ih, w_hh), h_l in zip(cells, weights, layers[0] if layers else parts[0].unbind(0)):
        p = cell._parameters
        x_t = op(x_t, h_l, w_ih, w_hh, p["bias_ih"], p["bias_hh"])
        hs.append(x_t)
    state = torch.stack(hs)
    _carry(cache, (state,), x_t, (hs,))
    return x_t, state


def _carried(cache: PathCache, parts: tuple[Tensor, ...]) -> Optional[tuple[list, ...]]:
    """The per-layer tensors the previous step stacked into ``parts``, if ``parts`` are exactly
    what it returned and neither they nor its output have changed (``_version``) since."""
    carried = cache.carried
    if carried is None:
        return None
    stacks, versions, y, y_version, layers = carried
    if len(parts) != len(stacks) or y._version != y_version:
        return None
    for part, stack, version in zip(parts, stacks, versions):
        if part is not stack or part._version != version:
            return None
    return layers


def _carry(cache: PathCache, stacks: tuple[Tensor, ...], y: Tensor, layers: tuple[list, ...]) -> None:
    """Remember what this step stacked (:func:`_carried`); not inference tensors, which have no
    ``_version`` to tell whether they were changed in place."""
    if y.is_inference():
        cache.carried = None
    else:
        cache.carried = (stacks, [stack._version for stack in stacks], y, y._version, layers)


def _unchanged(cells: nn.ModuleList, seen: list[tuple]) -> bool:
    """Whether every cell's ``W_ih`` and ``W_hh`` are the objects ``seen`` (kept alive there, so
    no new one can take their place), with the storage and ``_version`` seen."""
    if len(seen) != len(cells):
        return False
    for cell, (w_ih, ptr_ih, version_ih, w_hh, ptr_hh, version_hh) in zip(cells, seen):
        p = cell._parameters
        if (p["weight_ih"] is not w_ih or p["weight_hh"] is not w_hh or w_ih._version != version_ih
                or w_hh._version != version_hh or w_ih.data_ptr() != ptr_ih or w_hh.data_ptr() != ptr_hh):
            return False
    return True


def stack_step(path: Path, cells: nn.ModuleList, cache: PathCache, x_t: Tensor, h: Tensor, c: Tensor) -> StepOutput:
    """All layers of a plain, unidirectional LSTM stack on ``path`` (one of ``paths.STACK_STEPS``):
    ``(y_t, (h', c'))`` with ``h``, ``c`` ``(L, B, H)``."""
    kernel = path.kernel
    if path.name in ("compiled-mkl-stack-step", "compiled-addmm-stack-step"):
        weights, biases, packed = zip(*(cache.mkl_weights(i, cell, x_t.size(0)) for i, cell in enumerate(cells)))
        packed = [p if p is not None else _EMPTY for p in packed]
        y, h, c = kernel.lstm_stack_step(x_t, h, c, list(weights), list(biases), packed)
        return y, (h, c)
    if path.name != "aten-lstm-cell":
        bf16 = path.name in ("compiled-stack-step-bf16", "compiled-bf16-gemm-step")
        out = cache.compiled_stack(kernel, cells, bf16).step(x_t, h, c)
        if out is not None:
            return out
    return aten_stack_step(cells, x_t, h, c)  # also where the stack declined what it cannot step


def aten_stack_step(cells: nn.ModuleList, x_t: Tensor, h: Tensor, c: Tensor) -> StepOutput:
    """The stack's step without the kernel: ATen's fused ``lstm_cell`` per layer (differentiable,
    any dtype or device), the parameters read from each cell's ``_parameters`` (no module lookups)."""
    hs, cs = [], []
    for cell, h_l, c_l in zip(cells, h.unbind(0), c.unbind(0)):
        p = cell._parameters
        x_t, c_l = _VF.lstm_cell(x_t, (h_l, c_l), p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"])
        hs.append(x_t)
        cs.append(c_l)
    return x_t, (torch.stack(hs), torch.stack(cs))


@torch.no_grad()
def _joined(cell) -> tuple[Tensor, Tensor]:
    """``[W_ih | W_hh]`` ``(4H, I+H)`` and ``b_ih + b_hh`` ``(4H,)``, gates in torch's order i, f, g, o."""
    weight = torch.cat([cell.weight_ih, cell.weight_hh], dim=1).contiguous()
    bias = (cell.bias_ih + cell.bias_hh) if cell.bias else weight.new_zeros(weight.size(0))
    return weight, bias.contiguous()


@torch.no_grad()
def _blocked(cell, lanes: int) -> tuple[Tensor, Tensor]:
    """``W`` ``(U, I+H, 4, lanes)`` and ``b`` ``(U, 4, lanes)``, ``U = ceil(H / lanes)``: block ``u``,
    row ``k`` holds the i, f, g, o weights from input ``k`` (x, then h) to units ``lanes*u`` to
    ``lanes*u + lanes-1``, so the kernel reads each block front to back, 4 gates x one vector of
    units (``lanes``: the kernel's vector width, 16 floats with AVX-512) per input; zero past ``H``."""
    H = cell.hidden_size
    blocks = -(-H // lanes)
    weight, bias = _joined(cell)
    weight = weight.view(4, H, -1)  # (4, H, I+H)
    pad = blocks * lanes - H
    weight = F.pad(weight, (0, 0, 0, pad)).view(4, blocks, lanes, -1)  # (4, U, lanes, I+H)
    bias = F.pad(bias.view(4, H), (0, pad)).view(4, blocks, lanes)  # (4, U, lanes)
    return weight.permute(1, 3, 0, 2).contiguous(), bias.permute(1, 0, 2).contiguous()


def _paired_bf16(weight: Tensor, input_size: int) -> Tensor:
    """A float32 blocked weight ``(U, I+H, 4, lanes)`` as bfloat16 ``(U, ceil(I/2) + ceil(H/2), 4, lanes, 2)``:
    inputs ``2k`` and ``2k+1`` of each part side by side, so the kernel widens both to float32
    from one 32-bit load; an odd part gets a zero partner (rounded to nearest even)."""
    parts = []
    for part in weight.split([input_size, weight.size(1) - input_size], dim=1):
        part = F.pad(part, (0, 0, 0, 0, 0, part.size(1) % 2))  # (U, even, 4, lanes)
        U, K, gates, lanes = part.shape
        parts.append(part.view(U, K // 2, 2, gates, lanes).permute(0, 1, 3, 4, 2))  # (U, K/2, 4, lanes, 2)
    return torch.cat(parts, dim=1).to(torch.bfloat16).contiguous()


@torch.no_grad()
def _reordered(cell) -> tuple[Tensor, Tensor]:
    """``[W_ih | W_hh]`` ``(4H, I+H)`` and ``b_ih + b_hh``, gate blocks reordered i, f, g, o -> i, f, o, g."""
    H = cell.hidden_size
    order = torch.cat([torch.arange(0, 2 * H), torch.arange(3 * H, 4 * H), torch.arange(2 * H, 3 * H)])
    order = order.to(cell.weight_ih.device)
    weight = torch.cat([cell.weight_ih, cell.weight_hh], dim=1)[order].contiguous()
    if cell.bias:
        bias = (cell.bias_ih + cell.bias_hh)[order]
    else:
        bias = weight.new_zeros(4 * H)
    return weight, bias

"""The streaming fast path: one LSTM step for a batch of streams at the cost of reading its weights.

Stepping a small batch (generation, live forecasting, serving) is a matrix-vector product:
each step reads every weight once and does two flops per weight read, so its floor is
memory bandwidth, not arithmetic. ``torch.nn.LSTM`` called one step at a time spends most
of its step above that floor on per-call overhead (argument checks, weight flattening, oneDNN
reorders); ``_VF.lstm_cell`` less, on two separate matrix products and ten small ops
(``benchmarks/streaming.py`` measures both against the floor).

Here one step of one layer is::

    z = [x_t | h_{t-1}] @ W^T + b     # (B, 4H): ONE product, W = [W_ih | W_hh] (4H, I+H),
                                      # rows reordered i, f, o, g, b = b_ih + b_hh
    i, f, o = sigmoid(z[:, :3H])      # one op over three gates
    g = tanh(z[:, 3H:])
    c_t = f * c_{t-1} + i * g         # one addcmul
    h_t = o * tanh(c_t)

On a CPU with MKL, ``W`` is packed once by ``cblas_sgemm_pack`` for the batch size in use,
so the product streams the weights at (measured) the speed of reading them. The packed
copy is rebuilt whenever a parameter changes (its ``_version`` or storage), so training
between generations, ``load_state_dict`` or ``.to()`` never see stale weights.

This product runs only inside the compiled kernel, for batches above its own product's
(``lstm_stack_step``); Python ops around MKL's product were slower than ATen's ``lstm_cell``
at every batch size, so the path without the kernel runs ``lstm_cell``.

At batch 1 the ten small ops per layer cost more than the product (each is a call from
Python), and MKL's product itself reads the weights at about half the speed of a plain sum.
:func:`stack_step` therefore runs a whole stack of plain LSTM layers in ONE call of a
compiled kernel (``kernels/stream_step.cpp``) once it has been built (``kernels/__init__.py``), and
caches on the stack a ``StreamStack`` whose ``step`` checks its own arguments, so from the
second step on ``Recurrent.step`` is one call into it (:func:`compiled_step`), which matters
most for small models, whose step is nearly all overhead:

- up to ``BLOCKED_MAX_BATCH`` streams (256 with AVX-512), its own product over weights laid out for it
  (:func:`_blocked`: 4 gates x one vector of units contiguous per input), fused with the gates and
  the state update: each half of a layer's weights (``W_ih``, ``W_hh``) is one pass, so a
  batch-1 step costs about what reading the weights once costs (the floor); the passes'
  order alternates from step to step so that what one step read last, still in L2, the next
  reads first (this pays where the weights outgrow L2: the 4 MB of a 2-layer H=256 stack on a
  core with 2 MB of L2);
- above that, the MKL path above with its ops dispatched from C++.

Under ``torch.autocast("cpu", dtype=torch.bfloat16)`` the blocked product reads a bfloat16
copy of the weights (half the bytes, so about half the step) and widens each to float32 as
it loads it: the state, the sums and the gates stay float32, so the only rounding is the
weights' (``benchmarks/streaming.py`` measures the outputs' relative error after 200 steps).

Under bfloat16 autocast, from ``BF16_GEMM_FROM_BATCH`` (16) streams on, where the CPU multiplies
bfloat16 in hardware (AMX, AVX-512 BF16) and torch carries MKL, the stack's step is instead one
bfloat16 GEMM per layer, ``[x | h]`` and ``W`` rounded to bfloat16, sums, gates and state in
float32 (``kernels/gemm_lstm.h``): there the product is compute-bound, and bfloat16 tiles
multiply several times faster than float32 FMAs (``BF16_GEMM_FROM_BATCH`` says from where).

Without a built kernel (not built yet, ``RNNKIT_KERNELS=0``, no compiler: ``kernels/__init__.py``)
or where it cannot run (gradients wanted, float64, another device), :func:`stack_step` loops
over the layers calling ATen's fused ``lstm_cell`` (what ``torch.nn.LSTMCell`` runs), reading
the parameters straight from each cell: no slower than that loop written by hand.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, _VF

from .kernels import cpu_multiplies_bf16, stream_kernel

#: MKL's packed GEMM as exposed by ATen (what inductor's ``freezing`` uses on CPU)
HAS_MKL_PACKED = torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")
_MAX_PACKED_BATCHES = 4  # a packed copy per batch size in use; streams rarely change batch


def compiled_step(cells, x_t: Tensor, state) -> Optional[tuple[Tensor, tuple[Tensor, Tensor]]]:
    """The batch-1 hot path: ``(y_t, (h', c'))`` from the stack's compiled ``StreamStack``, which
    checks its arguments itself (dtypes, shapes, gradients, fresh weights) in one call; ``None``
    where it cannot run or was not built yet: then the caller checks and runs :func:`stack_step`."""
    stack = cells.__dict__.get("_stream", _NO_CACHE).get("stack")
    return stack.step(x_t, *state) if stack is not None else None


def stack_step(cells, x_t: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """All layers of a plain, unidirectional LSTM stack: ``(y_t, (h', c'))`` with ``h``, ``c``
    ``(L, B, H)``; in one kernel call where it can run (then it builds, and caches on ``cells``,
    what :func:`compiled_step` steps next time), else :func:`aten_stack_step`."""
    kernel = stream_kernel() if x_t.is_cpu else None
    if kernel is None or not x_t.dtype == h.dtype == c.dtype == torch.float32:
        return aten_stack_step(cells, x_t, h, c)
    params = [p for cell in cells for p in cell._parameters.values() if p is not None]
    if torch.is_grad_enabled() and (x_t.requires_grad or h.requires_grad or c.requires_grad
                                    or any(p.requires_grad for p in params)):
        return aten_stack_step(cells, x_t, h, c)  # autograd must see the step
    max_batch = BLOCKED_MAX_BATCH.get(kernel.LANES, 8)
    if x_t.size(0) <= max_batch or (_autocast_bf16() and _bf16_gemm(kernel)):
        stack = _stream_stack(kernel, cells, params, max_batch)
        return stack.step(x_t, h, c) if stack is not None else aten_stack_step(cells, x_t, h, c)
    weights, biases, packed = zip(*(_stream_weights(cell, x_t.size(0)) for cell in cells))
    packed = [p if p is not None else _EMPTY for p in packed]
    y, h, c = kernel.lstm_stack_step(x_t, h, c, list(weights), list(biases), packed)
    return y, (h, c)


def aten_stack_step(cells, x_t: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """The stack's step without the kernel: ATen's fused ``lstm_cell`` per layer (differentiable,
    any dtype or device), the parameters read from each cell's ``_parameters`` (no module lookups)."""
    hs, cs = [], []
    for cell, h_l, c_l in zip(cells, h.unbind(0), c.unbind(0)):
        p = cell._parameters
        x_t, c_l = _VF.lstm_cell(x_t, (h_l, c_l), p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"])
        hs.append(x_t)
        cs.append(c_l)
    return x_t, (torch.stack(hs), torch.stack(cs))


_EMPTY = torch.empty(0)
#: Up to how many streams the kernel's own product (one pass over each weight half, fused
#: with the gates) runs, by its vector width (``kernel.LANES``); above, MKL's GEMM. Each is the
#: largest batch at which the blocked product still beat MKL, timed on a 2-layer H=256 stack on
#: 1 thread: with AVX-512 (4 rows per pass) it won at every batch tried, up to 256; built for
#: AVX2 (2 rows per pass) it won at 16 and lost at 64. Four lanes (SSE, NEON): not measured, MKL
#: from 9 streams.
BLOCKED_MAX_BATCH = {16: 256, 8: 32, 4: 8}
#: From how many streams a step under bfloat16 autocast is one bfloat16 GEMM per layer
#: (``kernels/gemm_lstm.h``) where the CPU multiplies bfloat16 in hardware: the batch from which
#: it overtook the blocked product on bfloat16 weights, timed per step on a Xeon with AMX
#: (2-layer H=256, 1 thread); below it, the blocked product wins.
BF16_GEMM_FROM_BATCH = 16


def _autocast_bf16() -> bool:
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def _bf16_gemm(kernel) -> bool:
    """Whether the kernel's bfloat16 GEMM step can run and pays: MKL in torch, bfloat16 in the CPU."""
    return bool(getattr(kernel, "HAS_BF16_GEMM", False)) and cpu_multiplies_bf16()


def _stream_stack(kernel, cells, params: list[Tensor], max_batch: int):
    """The kernel's ``StreamStack`` for ``cells``, with every layer's weights laid out
    (:func:`_blocked`) for the precision in force (bfloat16 under CPU autocast): the cached one
    while its parameters are unchanged, else a new one, cached on ``cells``; ``None`` if the
    weights are not float32 on the CPU."""
    if not all(p.dtype == torch.float32 and p.device.type == "cpu" for p in params):
        return None
    cache = cells.__dict__.setdefault("_stream", _Cache())
    stack = cache.get("stack")
    if stack is None or not stack.fresh():
        stack = cache["stack"] = kernel.StreamStack(cells, max_batch)
    bf16 = _autocast_bf16()
    if not stack.has_weights(bf16):
        input_sizes = [cell.input_size for cell in cells]
        weights, biases = zip(*(_blocked(cell, kernel.LANES) for cell in cells))
        if bf16:
            weights = [_paired_bf16(w, cell.input_size) for w, cell in zip(weights, cells)]
            if _bf16_gemm(kernel):
                gemm_weights, gemm_biases = zip(*(_joined(cell) for cell in cells))
                stack.set_gemm_weights([w.to(torch.bfloat16) for w in gemm_weights], list(gemm_biases),
                                       input_sizes, BF16_GEMM_FROM_BATCH)
        stack.set_weights(bf16, list(weights), list(biases), input_sizes)
    return stack


class _Cache(dict):
    """Re-laid-out weights kept on a module. A copy or a pickle of the module carries none:
    MKL's packed weights and the kernel's objects neither copy nor pickle, and a copy has
    new parameters anyway (it rebuilds its own at its first step)."""

    def __deepcopy__(self, memo) -> "_Cache":
        return _Cache()

    def __reduce__(self):
        return _Cache, ()


_NO_CACHE = _Cache()


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


def _stream_weights(cell, batch: int) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """``(W, b, packed W or None)`` for ``batch``, cached on the cell until a parameter changes."""
    key = [(p.data_ptr(), p._version) for p in cell._flat_weights()]
    cache = cell.__dict__.setdefault("_stream_cache", _Cache())
    entry = cache.get("weights")
    if entry is None or entry[0] != key:
        entry = (key, *_reordered(cell))
        cache.clear()
        cache["weights"] = entry
    _, weight, bias = entry
    packed = None
    if HAS_MKL_PACKED and weight.device.type == "cpu":
        packed = cache.get(batch)
        if packed is None:
            if len(cache) > _MAX_PACKED_BATCHES:
                cache.clear()
                cache["weights"] = entry
            packed = cache[batch] = torch.ops.mkl._mkl_reorder_linear_weight(weight, batch)
    return weight, bias, packed


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

"""Mixed precision for training and inference: bfloat16 products under autocast, float32 weights.

``precision="bf16"`` runs a forward pass and its loss under ``torch.autocast`` with
bfloat16: matrix products (the input projections, ``torch.nn``'s LSTM and GRU kernels, the
output layer) read and multiply bfloat16 and accumulate in float32, while the weights, their
gradients and the optimiser's moments stay float32. bfloat16 keeps float32's exponent
range, so unlike float16 it needs no loss scaling. rnnkit's own recurrences keep their
state and gate arithmetic in float32 under it (the cells say how).

It pays only where the hardware multiplies bfloat16 natively: CPUs with AVX-512 BF16 or AMX,
and most recent GPUs. Elsewhere bfloat16 is emulated and slower than float32, so asking for it
there is an error rather than a silent slowdown. ``benchmarks/precision.py`` measures the
speed-up and what it costs in held-out loss.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Optional

import torch
from torch import Tensor, nn

from .cells.kernels import cpu_multiplies_bf16
from .errors import RnnkitError

PRECISIONS = ("fp32", "bf16")
#: Multiply-adds below which a CPU product is faster in float32 than in bfloat16 under autocast,
#: whose bfloat16 path adds a fixed cost per call (converting the operands). Set by timing heads
#: after a step's 8 MB weight read: a character LM's 1 x 512 by 512 x 76 head, and 8 rows of it,
#: ran faster in float32, 64 rows even, and a 1 x 512 by 512 x 4000 head faster in bfloat16.
SMALL_PRODUCT = 1_000_000


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 in hardware: a CPU with AVX-512 BF16 or AMX, a GPU that says so."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_multiplies_bf16()
    return False


def check_precision(precision: str, device: Optional[torch.device] = None) -> None:
    """Raise the one-line error for a precision that is unknown, or that ``device`` (if given) cannot run fast."""
    if precision not in PRECISIONS:
        raise RnnkitError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    if precision == "bf16" and device is not None and not native_bf16(device):
        what = "CPU has neither AVX-512 BF16 nor AMX" if device.type == "cpu" else f"{device} has no native bfloat16"
        raise RnnkitError(f"precision 'bf16' would run slower than 'fp32' here: this {what}; use precision 'fp32'")


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """The context a forward pass and its loss run in: bfloat16 autocast for ``"bf16"``, else none."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def linear_at_best_precision(layer: nn.Linear, x: Tensor) -> Tensor:
    """``layer(x)`` for ``x`` ``(B, in)``, except that on a CPU under bfloat16 autocast a product too
    small to gain from bfloat16 (``SMALL_PRODUCT``) runs in the layer's own dtype: the output
    layer of one generation step, which would otherwise cost more than the step's LSTM."""
    small = x.size(0) * layer.in_features * layer.out_features < SMALL_PRODUCT
    if x.device.type != "cpu" or not small or not torch.is_autocast_enabled("cpu"):
        return layer(x)
    with torch.autocast("cpu", enabled=False):
        return layer(x.to(layer.weight.dtype))

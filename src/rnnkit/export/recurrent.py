"""A recurrent stack that an exporter can write as one loop over time, whatever the length.

ONNX export traces a model. Traced, :class:`~rnnkit.layers.Recurrent`'s Python loop over time
would be unrolled for the example's length, and its fused paths (ATen's kernels, packed
sequences, rnnkit's compiled kernels) are calls no ONNX runtime knows. :class:`ScanRecurrent`
computes the same thing from the cells' reference equations (``backend="reference"``): each
cell's public ``step``, run by ``torch``'s ``scan`` operator over the time axis, which the
exporter writes as an ONNX ``Scan`` node, so the time axis stays dynamic.

Variable lengths follow ``Recurrent``'s rules without packing: at a step past a sequence's
length the state is kept and the output is zero. The reverse direction scans from the last
padded step back to the first; on padding it keeps its initial state, so it starts each
sequence at its own last valid step, as ``Recurrent`` reversing within lengths does.

:func:`reference_copy` gives a copy of any model with every ``Recurrent`` swapped for one of
these, so the model's own ``forward`` and ``step`` run unchanged around it.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import Tensor, nn
from torch._higher_order_ops.scan import scan

from ..errors import RnnkitError
from ..layers import LayerState, Recurrent

States = tuple[Tensor, ...]


class ScanRecurrent(nn.Module):
    """``Recurrent``'s forward and step on the reference equations, the time loop a ``scan``.

    Built from a trained ``Recurrent``: the same sizes and weights, the cells rebuilt with
    ``backend="reference"``. Shapes as ``Recurrent``: inputs ``(B, T, I)``, outputs
    ``(B, T, D*H)``, state ``(L*D, B, H)`` (a pair for LSTM).
    """

    def __init__(self, recurrent: Recurrent) -> None:
        super().__init__()
        self.layers = Recurrent(recurrent.input_size, recurrent.hidden_size, cell=recurrent.cell_type,
                                num_layers=recurrent.num_layers, bidirectional=recurrent.bidirectional,
                                dropout=recurrent.dropout.p, **{**recurrent.cell_options, "backend": "reference"})
        self.layers.load_state_dict(recurrent.state_dict())
        # what the modules around a Recurrent read of it
        self.input_size, self.hidden_size, self.cell_type = recurrent.input_size, recurrent.hidden_size, recurrent.cell_type
        self.num_layers, self.bidirectional = recurrent.num_layers, recurrent.bidirectional
        self.num_directions, self.num_states = recurrent.num_directions, recurrent.num_states
        self.output_size = recurrent.output_size

    def forward(self, x: Tensor, state: Optional[LayerState] = None, *,
                lengths: Optional[Tensor] = None) -> tuple[Tensor, LayerState]:
        """Every layer over ``x`` ``(B, T, I)``; ``lengths`` ``(B,)`` valid steps of each row."""
        batch, steps = x.shape[:2]
        parts = self.layers.initial_state(batch, x) if state is None else state
        parts = (parts,) if isinstance(parts, Tensor) else tuple(parts)  # each (L*D, B, H)
        valid = None
        if lengths is not None:
            valid = (torch.arange(steps, device=x.device)[:, None] < lengths[None, :]).unsqueeze(2)  # (T, B, 1)
        layer_input, final = x.transpose(0, 1), []  # time-major (T, B, I)
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                init = tuple(p[index] for p in parts)  # each (B, H)
                out, last = _scan_cell(self.layers.cells[index], layer_input, init, valid, reverse=direction == 1)
                outputs.append(out)
                final.append(last)
            layer_input = torch.cat(outputs, dim=2) if self.bidirectional else outputs[0]  # (T, B, D*H)
        stacked = tuple(torch.stack([f[k] for f in final]) for k in range(self.num_states))  # (L*D, B, H)
        return layer_input.transpose(0, 1), stacked if self.num_states == 2 else stacked[0]

    def step(self, x_t: Tensor, state: Optional[LayerState] = None) -> tuple[Tensor, LayerState]:
        """One step of every layer: ``Recurrent.step`` on the reference cells."""
        return self.layers.step(x_t, state)

    def initial_state(self, batch_size: int, like: Tensor) -> LayerState:
        return self.layers.initial_state(batch_size, like)


def _scan_cell(cell: nn.Module, x: Tensor, init: States, valid: Optional[Tensor],
               reverse: bool) -> tuple[Tensor, States]:
    """One cell over time-major ``x`` ``(T, B, I)`` from state ``init``: ``(outputs (T, B, H), final state)``."""
    pair = len(init) == 2

    def body(carry: States, inputs: tuple[Tensor, ...]) -> tuple[States, Tensor]:
        x_t = inputs[0]  # (B, I)
        _, new = cell.step(x_t, carry if pair else carry[0])  # the reference equations
        new = new if pair else (new,)
        if valid is None:
            return new, new[0].clone()  # scan forbids an output aliasing the carry
        keep = inputs[1]  # (B, 1): True while the row's sequence lasts
        new = tuple(torch.where(keep, n, old) for n, old in zip(new, carry))
        return new, new[0] * keep
    xs = (x,) if valid is None else (x, valid)
    last, outputs = scan(body, init, xs, reverse=reverse)
    return outputs, tuple(last)


def reference_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every :class:`Recurrent` replaced by a :class:`ScanRecurrent`.

    The original is untouched. Raises if the model has no recurrent layer (nothing to export).
    """
    copied = copy.deepcopy(model).eval()
    swapped = 0
    for name, module in list(copied.named_modules()):
        if isinstance(module, Recurrent):
            parent_name, _, child = name.rpartition(".")
            setattr(copied.get_submodule(parent_name), child, ScanRecurrent(module).eval())
            swapped += 1
    if not swapped:
        raise RnnkitError(f"{type(model).__name__} has no rnnkit recurrent layer to export")
    return copied


__all__ = ["ScanRecurrent", "reference_copy"]

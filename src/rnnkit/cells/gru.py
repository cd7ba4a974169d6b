"""Gated recurrent unit: an LSTM's gating with one state and two gates."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, _VF

from .base import Backend, Path, RecurrentCell, States, valid_steps
from .scan import CompiledGRUScan, GRUScan


class GRU(RecurrentCell):
    r"""A gated recurrent unit layer (Cho et al., 2014) over a batch-first sequence.

    For each step, with :math:`\sigma` the sigmoid and :math:`\odot` the elementwise product:

    .. math::
        \begin{array}{ll}
        r_t = \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \\
        z_t = \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\
        n_t = \tanh(W_{in} x_t + b_{in} + r_t \odot (W_{hn} h_{t-1} + b_{hn})) \\
        h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}
        \end{array}

    The update gate :math:`z_t` plays the LSTM's forget and input gates at once: where it
    is near 1 the state passes through unchanged, and so does its gradient.

    Shapes: ``B`` batch, ``T`` time, ``I`` = ``input_size``, ``H`` = ``hidden_size``.

    Parameters, in ``torch.nn.GRUCell``'s layout and names (gate order r, z, n):

    - ``weight_ih`` ``(3H, I)`` = ``[W_ir | W_iz | W_in]``
    - ``weight_hh`` ``(3H, H)`` = ``[W_hr | W_hz | W_hn]``
    - ``bias_ih``, ``bias_hh`` ``(3H,)``

    The fused path trains on a CPU with rnnkit's own recurrence (``scan.py``: these
    equations with a hand-written backward; its time loops in C++ when the optional compiled
    kernel ``kernels/gru_scan.cpp`` is built, for float32 and float64) and otherwise runs
    ATen's fused GRU kernel (what ``torch.nn.GRU`` runs); ``backend="reference"`` or gate
    traces run the equations step by step.

    Gate traces (``return_gates=True``): ``reset`` r, ``update`` z and ``candidate`` n,
    each ``(B, T, H)``.
    """

    kind = "gru"
    gate_names = ("reset", "update", "candidate")
    num_chunks = 3

    def __init__(
        self, input_size: int, hidden_size: int, *, bias: bool = True, backend: Backend = "auto"
    ) -> None:
        super().__init__(input_size, hidden_size, bias=bias, backend=backend)
        self._finish_init()

    def _reference_step(self, xw_t: Tensor, states: States, return_gates: bool = False):
        (h,) = states
        x_r, x_z, x_n = xw_t.chunk(3, dim=1)  # each (B, H)
        h_r, h_z, h_n = self._recurrent(h).chunk(3, dim=1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        h_next = (1 - z) * n + z * h
        gates = {"reset": r, "update": z, "candidate": n} if return_gates else None
        return (h_next,), gates

    def _run_fused(self, path: Path, x: Tensor, states: States, lengths: Optional[Tensor]):
        # Training on a CPU (paths.forward_path: "gru-scan", "compiled-gru-scan"): rnnkit's own
        # recurrence (scan.py), whose backward computes the weight gradient in one product over
        # all steps; elsewhere ATen's kernel (cuDNN on GPU).
        if path.name == "aten-gru":
            return super()._run_fused(path, x, states, lengths)
        xw = self._project_input(x)  # (B, T, 3H): W_ih x + b_ih for every step at once
        with torch.autocast("cpu", enabled=False):  # mixed dtypes would break its small ops
            xw = xw.to(self.weight_hh.dtype)
            args = (xw, states[0], self.weight_hh, self.bias_hh, valid_steps(lengths, x))
            kernel = path.kernel
            outputs, h = GRUScan.apply(*args) if kernel is None else CompiledGRUScan.apply(*args, kernel)
        return outputs, (h,)

    def _fused_sequence(self, x: Tensor, hx: States, batch_sizes: Optional[Tensor]):
        if batch_sizes is None:
            return _VF.gru(x, hx[0], self._flat_weights(), self.bias, 1, 0.0, self.training, False, True)
        return _VF.gru(x, batch_sizes, hx[0], self._flat_weights(), self.bias, 1, 0.0, self.training, False)

    def _fused_step(self, x_t: Tensor, states: States) -> States:
        return (_VF.gru_cell(x_t, states[0], self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh),)


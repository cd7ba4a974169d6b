"""The Elman recurrent network: the hidden state fed back as the next step's input."""

from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import Tensor, _VF

from ..errors import RnnkitError
from .base import Backend, RecurrentCell, States


class RNN(RecurrentCell):
    r"""An Elman recurrent layer (Elman, 1990) over a batch-first sequence.

    For each step:

    .. math::
        h_t = \phi(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})

    with :math:`\phi` = ``tanh`` (default) or ``relu``. The gradient reaching step
    :math:`t` from step :math:`T` is a product of :math:`T - t` Jacobians
    :math:`\mathrm{diag}(\phi') W_{hh}`, so over long spans it shrinks or grows
    geometrically: the vanishing and exploding gradients that gated cells cure.

    Shapes: ``B`` batch, ``T`` time, ``I`` = ``input_size``, ``H`` = ``hidden_size``.

    Parameters, in ``torch.nn.RNNCell``'s layout and names: ``weight_ih`` ``(H, I)``,
    ``weight_hh`` ``(H, H)``, ``bias_ih`` and ``bias_hh`` ``(H,)``.

    Runs ATen's fused kernel (what ``torch.nn.RNN`` runs) unless ``backend="reference"``
    or gate traces are asked for.

    Gate traces (``return_gates=True``): ``preactivation``, the argument of :math:`\phi`,
    ``(B, T, H)``; where it sits far from 0, tanh saturates and passes no gradient.
    """

    kind = "rnn"
    gate_names = ("preactivation",)
    num_chunks = 1

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        nonlinearity: Literal["tanh", "relu"] = "tanh",
        bias: bool = True,
        backend: Backend = "auto",
    ) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise RnnkitError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, bias=bias, backend=backend)
        self.nonlinearity = nonlinearity
        self._finish_init()

    def _reference_step(self, xw_t: Tensor, states: States, return_gates: bool = False):
        pre = xw_t + self._recurrent(states[0])  # (B, H)
        h_next = torch.tanh(pre) if self.nonlinearity == "tanh" else torch.relu(pre)
        return (h_next,), ({"preactivation": pre} if return_gates else None)

    def _fused_sequence(self, x: Tensor, hx: States, batch_sizes: Optional[Tensor]):
        kernel = _VF.rnn_tanh if self.nonlinearity == "tanh" else _VF.rnn_relu
        if batch_sizes is None:
            return kernel(x, hx[0], self._flat_weights(), self.bias, 1, 0.0, self.training, False, True)
        return kernel(x, batch_sizes, hx[0], self._flat_weights(), self.bias, 1, 0.0, self.training, False)

    def _fused_step(self, x_t: Tensor, states: States) -> States:
        kernel = _VF.rnn_tanh_cell if self.nonlinearity == "tanh" else _VF.rnn_relu_cell
        return (kernel(x_t, states[0], self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh),)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", nonlinearity={self.nonlinearity}"

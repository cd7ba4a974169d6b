"""Long short-term memory: a cell state guarded by input, forget and output gates."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, _VF, nn

from .base import Backend, Path, RecurrentCell, States, valid_steps
from .scan import LSTMScan


class LSTM(RecurrentCell):
    r"""A long short-term memory layer (Hochreiter & Schmidhuber, 1997) over a batch-first sequence.

    For each step, with :math:`\sigma` the sigmoid and :math:`\odot` the elementwise product:

    .. math::
        \begin{array}{ll}
        i_t = \sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi} \;[+\, p_i \odot c_{t-1}]) \\
        f_t = \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf} \;[+\, p_f \odot c_{t-1}]) \\
        g_t = \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \\
        c_t = f_t \odot c_{t-1} + i_t \odot g_t \\
        o_t = \sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho} \;[+\, p_o \odot c_t]) \\
        h_t = o_t \odot \tanh(c_t)
        \end{array}

    The forget gate :math:`f_t` decides how much of the cell state survives a step; when it
    stays near 1 the gradient through :math:`c_t` neither vanishes nor explodes, which is
    what lets an LSTM carry information across long spans. The bracketed peephole terms
    are present with ``peephole=True`` (Gers & Schmidhuber, 2000). With
    ``layer_norm=True`` (Ba et al., 2016) the input and recurrent halves are normalised
    separately before the biases are added, and the output reads
    :math:`h_t = o_t \odot \tanh(\mathrm{LN}(c_t))`.

    Shapes: ``B`` batch, ``T`` time, ``I`` = ``input_size``, ``H`` = ``hidden_size``.

    Parameters, in ``torch.nn.LSTMCell``'s layout and names (gate order i, f, g, o), so a
    state dict loads into ``torch.nn.LSTMCell`` unchanged (without the options):

    - ``weight_ih`` ``(4H, I)`` = ``[W_ii | W_if | W_ig | W_io]``
    - ``weight_hh`` ``(4H, H)`` = ``[W_hi | W_hf | W_hg | W_ho]``
    - ``bias_ih``, ``bias_hh`` ``(4H,)``; the forget block of ``bias_ih`` starts at
      ``forget_bias`` (1 by default: remember until taught to forget, Jozefowicz et al., 2015)
    - ``weight_peephole`` ``(3, H)`` = ``[p_i, p_f, p_o]`` with ``peephole=True``
    - ``ln_ih``, ``ln_hh`` (over 4H) and ``ln_cell`` (over H) with ``layer_norm=True``

    The plain cell runs ATen's fused LSTM kernel (what ``torch.nn.LSTM`` runs: oneDNN on
    CPU, cuDNN on GPU); with peepholes or layer norm, rnnkit's own fused recurrence
    (``scan.py``: the same equations with a hand-written backward; its time loops in C++ when
    the optional compiled kernel ``kernels/lstm_scan.cpp`` is built). A ``Recurrent`` stack of
    plain cells steps on the streaming path (``streaming.py``). ``backend="reference"`` runs the
    equations below as written, step by step under autograd. ``paths.py`` chooses among these.

    Gate traces (``return_gates=True``): ``input`` i, ``forget`` f, ``output`` o,
    ``candidate`` g and ``cell`` c, each ``(B, T, H)``.

    Example::

        >>> lstm = LSTM(8, 32)
        >>> outputs, (h, c) = lstm(torch.randn(4, 10, 8))
        >>> outputs.shape, h.shape
        (torch.Size([4, 10, 32]), torch.Size([4, 32]))
    """

    kind = "lstm"
    gate_names = ("input", "forget", "output", "candidate", "cell")
    num_chunks = 4
    num_states = 2

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        bias: bool = True,
        forget_bias: float = 1.0,
        peephole: bool = False,
        layer_norm: bool = False,
        backend: Backend = "auto",
    ) -> None:
        super().__init__(input_size, hidden_size, bias=bias, backend=backend)
        self.forget_bias = forget_bias
        self.peephole = peephole
        self.layer_norm = layer_norm
        if peephole:
            self.weight_peephole = nn.Parameter(torch.empty(3, hidden_size))
        if layer_norm:
            self.ln_ih = nn.LayerNorm(4 * hidden_size)
            self.ln_hh = nn.LayerNorm(4 * hidden_size)
            self.ln_cell = nn.LayerNorm(hidden_size)
        self._finish_init()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.layer_norm:
            for norm in (self.ln_ih, self.ln_hh, self.ln_cell):
                norm.reset_parameters()
        if self.bias:
            with torch.no_grad():
                forget = slice(self.hidden_size, 2 * self.hidden_size)
                self.bias_ih[forget].fill_(self.forget_bias)
                self.bias_hh[forget].zero_()

    def torch_nn_unavailable_reason(self) -> Optional[str]:
        if self.peephole:
            return "peephole connections are not in torch.nn.LSTM"
        if self.layer_norm:
            return "layer normalisation is not in torch.nn.LSTM"
        return None

    # The reference equations, one step. ---------------------------------------------

    def _project_input(self, x: Tensor) -> Tensor:
        if not self.layer_norm:
            return super()._project_input(x)
        return self.ln_ih(nn.functional.linear(x, self.weight_ih))  # bias added after the norm

    def _reference_step(self, xw_t: Tensor, states: States, return_gates: bool = False):
        h, c = states
        if self.layer_norm:
            z = xw_t + self.ln_hh(nn.functional.linear(h, self.weight_hh))
            if self.bias:
                z = z + self.bias_ih + self.bias_hh
        else:
            z = xw_t + self._recurrent(h)  # (B, 4H)
        zi, zf, zg, zo = z.chunk(4, dim=1)  # each (B, H)
        if self.peephole:
            zi = zi + self.weight_peephole[0] * c
            zf = zf + self.weight_peephole[1] * c
        i, f, g = torch.sigmoid(zi), torch.sigmoid(zf), torch.tanh(zg)
        c_next = f * c + i * g
        if self.peephole:
            zo = zo + self.weight_peephole[2] * c_next
        o = torch.sigmoid(zo)
        h_next = o * torch.tanh(self.ln_cell(c_next) if self.layer_norm else c_next)
        gates = None
        if return_gates:
            gates = {"input": i, "forget": f, "output": o, "candidate": g, "cell": c_next}
        return (h_next, c_next), gates

    # The fused kernels. ------------------------------------------------------------

    def _fused_sequence(self, x: Tensor, hx: States, batch_sizes: Optional[Tensor]):
        if batch_sizes is None:
            return _VF.lstm(x, hx, self._flat_weights(), self.bias, 1, 0.0, self.training, False, True)
        return _VF.lstm(x, batch_sizes, hx, self._flat_weights(), self.bias, 1, 0.0, self.training, False)

    def _run_fused(self, path: Path, x: Tensor, states: States, lengths: Optional[Tensor]):
        if path.name == "aten-lstm":
            return super()._run_fused(path, x, states, lengths)  # ATen's kernel, as torch.nn.LSTM
        # (compiled-)lstm-scan: rnnkit's own recurrence with a hand-written backward (scan.py),
        # whose time loops run in C++ where paths.forward_path found the kernel can
        xw = self._project_input(x)  # (B, T, 4H): LN(W_ih x) with layer norm, else W_ih x + b_ih
        bias = self.bias_hh
        norms = (None,) * 4
        if self.layer_norm:
            bias = self.bias_ih + self.bias_hh if self.bias else None
            norms = (self.ln_hh.weight, self.ln_hh.bias, self.ln_cell.weight, self.ln_cell.bias)
        peephole = self.weight_peephole if self.peephole else None
        with torch.autocast(x.device.type, enabled=False):  # mixed dtypes would break its small ops
            xw = xw.to(self.weight_hh.dtype)
            outputs, h, c = LSTMScan.apply(xw, *states, self.weight_hh, bias, peephole, *norms, valid_steps(lengths, x))
        return outputs, (h, c)

    def _fused_step(self, x_t: Tensor, states: States) -> States:
        # ATen's fused cell, with or without gradients (faster than torch ops around MKL's packed
        # product at every batch size: benchmarks/streaming.py); the compiled stack step of a
        # whole Recurrent layer is streaming.py's
        return tuple(_VF.lstm_cell(x_t, states, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh))

    def extra_repr(self) -> str:
        options = "".join(
            f", {name}=True" for name in ("peephole", "layer_norm") if getattr(self, name)
        )
        return super().extra_repr() + options

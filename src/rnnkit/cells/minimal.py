r"""minGRU and minLSTM: gates that read only the input, so a whole sequence trains in parallel.

Feng et al., "Were RNNs All We Needed?" (2024) strip the GRU's and LSTM's gates of their
dependence on ``h_{t-1}``. What is left is a linear recurrence ``h_t = a_t ⊙ h_{t-1} + b_t``
whose coefficients are known for every step up front, and such a recurrence is a prefix
scan: with ``A_t = a_1 ⊙ ... ⊙ a_t``,

.. math::
    h_t = A_t \odot h_0 + A_t \odot \sum_{s \le t} b_s / A_s

computed for all ``t`` at once in log space (Heinsen, 2023) by one ``cumsum`` and one
``logcumsumexp``: no time loop, only large elementwise ops and one input projection. On a
CPU, where ATen's ``logcumsumexp`` is a slow scalar loop, the same scan runs in blocks
(:func:`_blocked_scan`, ~2 sqrt(T) sequential small ops), or, when the optional compiled
kernel is built (``kernels/linear_scan.cpp``), as one fused pass over time forward and one
backward (:class:`_CompiledScan`); all are tested against the step. The
candidates ``g(.)`` are positive, so their logs exist; the initial state, of any sign,
enters through the separate ``A_t ⊙ h_0`` term. Inference steps one token at a time with
the same equations (the "reference" path, also what ``backend="reference"`` trains on).

Variable lengths cost nothing: a padded step gets ``a = 1`` and ``b = 0`` (log 0 and -inf),
so the state passes through unchanged and the padding outputs are zeroed.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor
from torch.nn import functional as F

from .base import Backend, Path, RecurrentCell, States, valid_steps
from .buffers import reused_buffer as _reused_buffer


def g(v: Tensor) -> Tensor:
    """The positive candidate activation: ``v + 1/2`` for ``v >= 0``, ``sigmoid(v)`` below."""
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


def log_g(v: Tensor) -> Tensor:
    """``log g(v)``, computed without forming ``g`` (stable for very negative ``v``)."""
    return torch.where(v >= 0, torch.log(F.relu(v) + 0.5), -F.softplus(-v))


def log_space_scan(log_a: Tensor, log_b: Tensor, h0: Tensor) -> Tensor:
    """All ``h_t = a_t ⊙ h_{t-1} + b_t`` at once from ``log a``, ``log b`` ``(B, T, H)`` and ``h0`` ``(B, H)``.

    Heinsen's form: one ``cumsum`` and one ``logcumsumexp`` over time. Fast where
    ``logcumsumexp`` is a parallel kernel (GPU); on a CPU ATen's is a scalar loop, so CPUs
    run :func:`_blocked_scan` or the compiled kernel (``paths.forward_path`` chooses).
    """
    log_A = log_a.cumsum(dim=1)  # (B, T, H): log of the running product A_t
    h = torch.exp(log_A + torch.logcumsumexp(log_b - log_A, dim=1))  # the scan from a zero state
    return h + torch.exp(log_A) * h0.unsqueeze(1)


def _blocked_scan(a: Tensor, b: Tensor, h0: Tensor, reverse: bool = False) -> Tensor:
    """``h_t = a_t ⊙ h_{t-1} + b_t`` in blocks: ``sqrt(T)`` steps inside all blocks at once, then the carries.

    Time is cut into ``n`` blocks of ``C`` steps, ``(B, n, C, H)``. Pass 1 scans every
    block from a zero state at once (``C`` steps, each over all ``n`` blocks) and keeps the
    running product of ``a`` from the block's start (numbers in [0, 1]: they can only
    underflow towards their true, negligible value); pass 2 carries the state across blocks
    (``n`` steps on ``(B, H)``) and adds it in through those products. ~2 sqrt(T) small
    sequential ops instead of T, no logarithm of the state, any sign of ``h0``. With
    ``reverse`` the scan runs from the last step back (``h_t = a_t ⊙ h_{t+1} + b_t``).
    """
    B, T, H = a.shape
    C = max(1, math.isqrt(T))
    n = -(-T // C)
    if n * C != T:  # pad time with steps that keep the state (at the end, or the start if reversed)
        pad = (0, 0, n * C - T, 0) if reverse else (0, 0, 0, n * C - T)
        a, b = F.pad(a, pad, value=1.0), F.pad(b, pad)
    a, b = a.view(B, n, C, H), b.view(B, n, C, H)
    u, decay = b.clone(), a.clone()  # step `first` of each block: u = b, decay = a
    steps = list(range(C))[::-1] if reverse else list(range(C))
    for prev, c in zip(steps, steps[1:]):  # pass 1, (B, n, H) per step
        torch.addcmul(b[:, :, c], a[:, :, c], u[:, :, prev], out=u[:, :, c])
        torch.mul(decay[:, :, prev], a[:, :, c], out=decay[:, :, c])
    last = steps[-1]
    carries = torch.empty_like(u[:, :, 0])  # (B, n, H): the state entering each block
    carry = h0
    for k in range(n - 1, -1, -1) if reverse else range(n):  # pass 2
        carries[:, k] = carry
        carry = torch.addcmul(u[:, k, last], decay[:, k, last], carry)
    h = u.addcmul_(decay, carries.unsqueeze(2)).view(B, n * C, H)
    return h[:, n * C - T:] if reverse else h[:, :T]


class LinearScan(torch.autograd.Function):
    """``h = scan(a, b, h0)`` with its gradient as the same scan run backwards in time.

    With ``g_t = dL/dh_t`` summed over every path: ``g_t = dh_t + a_{t+1} g_{t+1}``, a linear
    scan in reverse; then ``db_t = g_t``, ``da_t = g_t h_{t-1}``, ``dh0 = a_1 g_1``. Written
    by hand because autograd through the blocks' views would allocate a full-size zero
    gradient for every small step.
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
        h = _blocked_scan(a, b, h0)
        ctx.save_for_backward(a, h, h0)
        return h

    @staticmethod
    def backward(ctx, dh: Tensor):
        a, h, h0 = ctx.saved_tensors
        a_next = F.pad(a[:, 1:], (0, 0, 0, 1), value=1.0)  # a_{t+1}; nothing flows past the end
        g = _blocked_scan(a_next, dh.contiguous(), torch.zeros_like(h0), reverse=True)
        da = torch.empty_like(g)
        torch.mul(g[:, 1:], h[:, :-1], out=da[:, 1:])  # g_t h_{t-1}
        torch.mul(g[:, 0], h0, out=da[:, 0])
        return da, g, a[:, 0] * g[:, 0]


def _candidate_and_slope(v: Tensor) -> tuple[Tensor, Tensor]:
    """``g(v)`` and ``g'(v)`` (1 for ``v >= 0``, ``sigmoid'(v)`` below) in one pass over ``v``."""
    s = torch.sigmoid(v)
    positive = v >= 0
    return torch.where(positive, v + 0.5, s), torch.where(positive, 1.0, s * (1 - s))


class _MinGRUCoefficients(torch.autograd.Function):
    """``(a, b) = (1 - z, z ⊙ g(k_h))`` with ``z = σ(k_z)``, and their gradient written out:
    ``dk_z = (db ⊙ g - da) ⊙ z(1 - z)``, ``dk_h = db ⊙ z ⊙ g'``. Autograd's version of these
    few elementwise ops makes several times the passes over the (B, T, H) tensors."""

    @staticmethod
    def forward(ctx, k_z: Tensor, k_h: Tensor):
        z = torch.sigmoid(k_z)
        candidate, slope = _candidate_and_slope(k_h)
        ctx.save_for_backward(z, candidate, slope)
        return 1 - z, z * candidate

    @staticmethod
    def backward(ctx, da: Tensor, db: Tensor):
        z, candidate, slope = ctx.saved_tensors
        dk_z = (db * candidate - da).mul_(z * (1 - z))
        return dk_z, (db * z).mul_(slope)


class _MinLSTMCoefficients(torch.autograd.Function):
    """``(a, b) = (f / (f + i), i / (f + i) ⊙ g(k_h))`` with ``f, i = σ(k_f), σ(k_i)``; with
    ``q = (da - db ⊙ g) / (f + i)^2``: ``dk_f = q ⊙ i ⊙ f(1 - f)``, ``dk_i = -q ⊙ f ⊙ i(1 - i)``,
    ``dk_h = db ⊙ i / (f + i) ⊙ g'``."""

    @staticmethod
    def forward(ctx, k_f: Tensor, k_i: Tensor, k_h: Tensor):
        f, i = torch.sigmoid(k_f), torch.sigmoid(k_i)
        total = f + i
        candidate, slope = _candidate_and_slope(k_h)
        ctx.save_for_backward(f, i, total, candidate, slope)
        return f / total, i / total * candidate

    @staticmethod
    def backward(ctx, da: Tensor, db: Tensor):
        f, i, total, candidate, slope = ctx.saved_tensors
        q = (da - db * candidate).div_(total * total)
        dk_f = (q * i).mul_(f * (1 - f))
        dk_i = (q * f).mul_(i * (i - 1))
        return dk_f, dk_i, (db * i).div_(total).mul_(slope)


class _CompiledScan(torch.autograd.Function):
    """The whole cell in one function, on the compiled kernel (``kernels/linear_scan.cpp``):
    ``h = scan(gates(x W^T + b), h0)``, ``(B, T, H)``.

    Forward: one GEMM for every gate, then one pass over time that computes the gates and the
    scan together; backward: one reverse pass that produces the gates' pre-activation
    gradients ``dk`` (and ``db``, ``dh0``), and the GEMMs ``dW = dk^T x`` and ``dx = dk W``,
    fused: a chunk of steps' ``dk`` goes into them while it is in cache (float32 and float64;
    under autocast the whole ``dk``, converted, then the GEMMs).
    Only ``x W^T`` and ``h`` are kept in between; the gates are recomputed. Under CPU
    autocast the two GEMMs run in its dtype (:func:`_autocast_dtype`); in bfloat16, ``x W^T``
    stays as the GEMM wrote it and ``dk`` is written in bfloat16 for the GEMMs after it, the
    kernel widening and rounding them as it reads and writes (no float32 copies of either,
    which would cost a pass over each). The same
    equations as :class:`LinearScan` with ``_MinGRUCoefficients``/``_MinLSTMCoefficients``,
    which tests check it against.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor], h0: Tensor, kernel) -> Tensor:
        B, T, I = x.shape
        x2 = x.reshape(B * T, I)  # (B*T, I), rows ordered (b, t)
        low = _autocast_dtype(x)
        # (B*T, C*H); under bfloat16 autocast kept as the GEMM wrote it: the kernel widens it as it reads
        xw = _reused_buffer((B * T, weight.size(0)), torch.bfloat16 if low == torch.bfloat16 else x.dtype)
        h = _reused_buffer((B, T, h0.size(1)), x.dtype)
        bias_ = bias if bias is not None else h.new_zeros(weight.size(0))
        h0, chunks = h0.contiguous(), weight.size(0) // h0.size(1)
        if low is None:  # the kernel computes every gate's input half (x W^T), chunk by chunk, and adds the bias
            x2 = x2.contiguous()
            kernel.scan_forward(xw, bias_, h0, chunks, h, x2, weight.contiguous())
        else:  # autocast: the GEMMs in its dtype, the gates and the scan in float32 (see _autocast_dtype)
            x2 = x2.to(low)
            with torch.autocast("cpu", enabled=False):
                if xw.dtype == low:
                    torch.mm(x2, weight.to(low).t(), out=xw)
                else:
                    xw.copy_(torch.mm(x2, weight.to(low).t()))
            kernel.scan_forward(xw, bias_, h0, chunks, h)
        ctx.save_for_backward(x2, weight, bias_, xw, h, h0)
        ctx.kernel, ctx.has_bias, ctx.input_shape, ctx.low = kernel, bias is not None, x.shape, low
        return h

    @staticmethod
    def backward(ctx, dh: Tensor):
        x2, weight, bias, xw, h, h0 = ctx.saved_tensors
        chunks = weight.size(0) // h0.size(1)
        if ctx.low is None and ctx.needs_input_grad[1]:  # dk straight into the GEMMs, chunk by chunk
            dweight, dbias, dh0, dx = ctx.kernel.scan_backward_fused(
                xw, bias, h, h0, dh.contiguous(), x2, weight.contiguous(), chunks, ctx.needs_input_grad[0])
            dx = dx.view(ctx.input_shape) if ctx.needs_input_grad[0] else None
            return dx, dweight, dbias if ctx.has_bias else None, dh0, None
        dk = _reused_buffer(xw.shape, xw.dtype)  # (B*T, C*H): dL/d(x W^T + b), bfloat16 as xw is
        _, dbias, dh0 = ctx.kernel.scan_backward(xw, bias, h, h0, dh.contiguous(), dk, chunks)
        dk_ = dk if ctx.low is None else dk.to(ctx.low)  # the GEMMs in the forward's dtype
        dx = dk_.mm(weight.to(dk_.dtype)).view(ctx.input_shape).to(weight.dtype) if ctx.needs_input_grad[0] else None
        # dW = dk^T x, computed as (x^T dk)^T: MKL runs the long reduction over B*T faster with
        # the small operand transposed; autograd lays it out afresh
        dweight = x2.t().mm(dk_).t().to(weight.dtype) if ctx.needs_input_grad[1] else None
        return dx, dweight, dbias if ctx.has_bias else None, dh0, None


def _autocast_dtype(x: Tensor) -> Optional[torch.dtype]:
    """The dtype CPU autocast runs ``x``'s projections in (``None``: no autocast, or ``x`` is not
    float32). Only the two GEMMs follow it: ``x W^T`` rounded to bfloat16 costs ~3 significant
    digits per gate input, while a scan in bfloat16 would round a 1000-step product to nothing."""
    if x.dtype != torch.float32 or not torch.is_autocast_enabled("cpu"):
        return None
    return torch.get_autocast_dtype("cpu")


class _MinimalCell(RecurrentCell):
    """What minGRU and minLSTM share: no recurrent weights, a parallel scan, a sequential step."""

    recurrent_weights = False

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True, backend: Backend = "auto") -> None:
        super().__init__(input_size, hidden_size, bias=bias, backend=backend)
        self._finish_init()

    def torch_nn_unavailable_reason(self) -> Optional[str]:
        return f"torch.nn has no {type(self).__name__}"

    def _coefficients(self, xw: Tensor) -> tuple[Tensor, Tensor]:
        """``(a, b)`` of the recurrence ``h_t = a_t ⊙ h_{t-1} + b_t`` from ``W x + b``."""
        raise NotImplementedError

    def _log_coefficients(self, xw: Tensor) -> tuple[Tensor, Tensor]:
        """``(log a, log b)``, computed stably in log space (for :func:`log_space_scan`)."""
        raise NotImplementedError

    def _run_fused(self, path: Path, x: Tensor, states: States, lengths: Optional[Tensor]):
        if path.name == "compiled-min-scan":
            h = _CompiledScan.apply(x, self.weight_ih, self.bias_ih, states[0], path.kernel)  # (B, T, H)
            return h, (h[:, -1],)
        xw = self._project_input(x)  # (B, T, chunks*H)
        # The scans need float32 at least (bfloat16 under autocast would round a 1000-step
        # product to nothing).
        xw = xw.to(torch.promote_types(xw.dtype, torch.float32))
        valid = valid_steps(lengths, x)  # (B, T, 1) or None
        if path.name == "min-scan-blocked":  # linear space, blocked scan (see chunked scan notes above)
            a, b = self._coefficients(xw)  # each (B, T, H)
            if valid is not None:
                a = a.masked_fill(~valid, 1.0)  # a padded step keeps the state ...
                b = b.masked_fill(~valid, 0.0)  # ... and adds nothing
            h = LinearScan.apply(a, b, states[0])
        else:
            log_a, log_b = self._log_coefficients(xw)
            if valid is not None:
                log_a = log_a.masked_fill(~valid, 0.0)
                log_b = log_b.masked_fill(~valid, float("-inf"))
            h = log_space_scan(log_a, log_b, states[0])  # (B, T, H)
        final = h[:, -1]  # padding carried the last valid state to the end
        outputs = h if valid is None else h * valid
        return outputs, (final,)


class MinGRU(_MinimalCell):
    r"""minGRU (Feng et al., 2024): a GRU whose gates read only the input, trained by a parallel scan.

    .. math::
        \begin{array}{ll}
        z_t = \sigma(W_{iz} x_t + b_{iz}) \\
        \tilde h_t = g(W_{ih} x_t + b_{ih}), \quad g(v) = v + \tfrac12 \text{ if } v \ge 0 \text{ else } \sigma(v) \\
        h_t = (1 - z_t) \odot h_{t-1} + z_t \odot \tilde h_t
        \end{array}

    Shapes: ``B`` batch, ``T`` time, ``I`` = ``input_size``, ``H`` = ``hidden_size``.

    Parameters: ``weight_ih`` ``(2H, I)`` = ``[W_iz | W_ih]``, ``bias_ih`` ``(2H,)``; there
    is no ``weight_hh``. One layer is a gated running average of its inputs; stack layers
    (``Recurrent(..., cell="mingru", num_layers=2)``) for nonlinear dynamics over time.

    ``forward`` runs the log-space parallel scan (module docstring) unless
    ``backend="reference"`` or gate traces are asked for; ``step`` runs one step.

    Gate traces (``return_gates=True``): ``update`` z and ``candidate`` h̃, each ``(B, T, H)``.
    """

    kind = "mingru"
    gate_names = ("update", "candidate")
    num_chunks = 2

    def _reference_step(self, xw_t: Tensor, states: States, return_gates: bool = False):
        (h,) = states
        k_z, k_h = xw_t.chunk(2, dim=1)  # each (B, H)
        z, candidate = torch.sigmoid(k_z), g(k_h)
        h_next = (1 - z) * h + z * candidate
        return (h_next,), ({"update": z, "candidate": candidate} if return_gates else None)

    def _coefficients(self, xw: Tensor) -> tuple[Tensor, Tensor]:
        return _MinGRUCoefficients.apply(*xw.chunk(2, dim=2))  # (1 - z, z g(k_h)), each (B, T, H)

    def _log_coefficients(self, xw: Tensor) -> tuple[Tensor, Tensor]:
        k_z, k_h = xw.chunk(2, dim=2)  # each (B, T, H)
        log_keep = -F.softplus(k_z)  # log(1 - z)
        log_z = -F.softplus(-k_z)  # log z
        return log_keep, log_z + log_g(k_h)


class MinLSTM(_MinimalCell):
    r"""minLSTM (Feng et al., 2024): an LSTM whose gates read only the input, trained by a parallel scan.

    .. math::
        \begin{array}{ll}
        f_t = \sigma(W_{if} x_t + b_{if}), \quad i_t = \sigma(W_{ii} x_t + b_{ii}) \\
        f'_t = f_t / (f_t + i_t), \quad i'_t = i_t / (f_t + i_t) \\
        \tilde h_t = g(W_{ih} x_t + b_{ih}) \\
        h_t = f'_t \odot h_{t-1} + i'_t \odot \tilde h_t
        \end{array}

    with ``g`` as in :class:`MinGRU`. Normalising the two gates to sum to one keeps the
    state's scale independent of time, so the cell needs no separate cell state: the state
    is ``h`` alone, ``(B, H)``.

    Parameters: ``weight_ih`` ``(3H, I)`` = ``[W_if | W_ii | W_ih]``, ``bias_ih`` ``(3H,)``.

    Gate traces (``return_gates=True``): ``forget`` f', ``input`` i' and ``candidate`` h̃,
    each ``(B, T, H)``.
    """

    kind = "minlstm"
    gate_names = ("forget", "input", "candidate")
    num_chunks = 3

    def _reference_step(self, xw_t: Tensor, states: States, return_gates: bool = False):
        (h,) = states
        k_f, k_i, k_h = xw_t.chunk(3, dim=1)  # each (B, H)
        f, i, candidate = torch.sigmoid(k_f), torch.sigmoid(k_i), g(k_h)
        f, i = f / (f + i), i / (f + i)
        h_next = f * h + i * candidate
        gates = {"forget": f, "input": i, "candidate": candidate} if return_gates else None
        return (h_next,), gates

    def _coefficients(self, xw: Tensor) -> tuple[Tensor, Tensor]:
        return _MinLSTMCoefficients.apply(*xw.chunk(3, dim=2))  # (f', i' g(k_h)), each (B, T, H)

    def _log_coefficients(self, xw: Tensor) -> tuple[Tensor, Tensor]:
        k_f, k_i, k_h = xw.chunk(3, dim=2)  # each (B, T, H)
        # log f' = log f - log(f + i) = -softplus(log i - log f), with log sigmoid(k) = -softplus(-k)
        diff = F.softplus(-k_f) - F.softplus(-k_i)  # log i - log f
        return -F.softplus(diff), -F.softplus(-diff) + log_g(k_h)

"""rnnkit's own fused recurrences: the LSTM variants ``torch.nn`` lacks, and a faster GRU.

A recurrence written as a Python loop of small ops and left to autograd is slow for three
reasons: autograd records and replays every small op; it computes the weight gradient
``dW_hh`` as T small products accumulated one by one; and it saves more than it needs.
Each function here is a ``torch.autograd.Function`` with a hand-written backward:

- forward: the input half of every gate comes in precomputed (one large product over all
  steps, outside); the loop does only ``h @ W_hh^T`` and the pointwise gate math, under
  no autograd, and keeps the few tensors the backward needs;
- backward: the loop runs back through time doing only ``dh_{t-1} = dz_t @ W_hh`` and the
  pointwise derivatives; every parameter gradient (``dW_hh``, the bias, layer-norm and
  peephole gradients) is then ONE large product or reduction over all steps at once.

:class:`CompiledGRUScan` runs GRUScan's two time loops in C++ (the optional kernel
``kernels/gru_scan.cpp``): per step the same GEMM, then one fused pass for all the pointwise
math instead of ~10 small ATen ops, and no copy into or out of time-major layout.

:class:`LSTMScan` runs both time loops in C++ when the optional compiled kernel is built
(``kernels/lstm_scan.cpp``; CPU, float32/float64): per step one GEMM and one fused pass per
batch row (split across threads), no tensor allocated or pointwise op dispatched; its
backward also sums the bias, layer-norm and peephole gradients while the values are in
registers. Without them (or with ``RNNKIT_KERNELS=0``) the Python loops below run.

Same equations as the cells' reference steps (tests compare outputs and gradients, and
gradcheck in float64); once differentiable (no double backward).

Shapes: ``B`` batch, ``T`` time, ``H`` hidden; ``xw`` ``(B, T, G*H)`` for ``G`` gates;
``valid`` ``(B, T, 1)`` boolean or ``None``: a padded step keeps the state and outputs 0.
Inside, every per-step tensor lives in a preallocated time-major buffer ``(T, B, .)``, so
each step reads and writes contiguous memory (``out=``) instead of stacking at the end.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .buffers import reused_buffer
from .kernels import lstm_kernel

_EPS = 1e-5  # nn.LayerNorm's default, what the cells' reference path uses


def _layer_norm_backward(dy: Tensor, x_hat: Tensor, rstd: Tensor, weight: Tensor) -> Tensor:
    """d(input) of ``y = x_hat * weight + bias`` with ``x_hat = (x - mean) * rstd`` over the last dim."""
    gy = dy * weight
    return rstd * (gy - gy.mean(-1, keepdim=True) - x_hat * (gy * x_hat).mean(-1, keepdim=True))


def _time_major(x: Tensor) -> Tensor:
    return x.transpose(0, 1).contiguous()  # (B, T, .) -> (T, B, .)


def _keep(valid: Optional[Tensor], t: int, new: Tensor, old: Tensor) -> Tensor:
    return new if valid is None else torch.where(valid[t], new, old)


class LSTMScan(torch.autograd.Function):
    """The LSTM recurrence with optional peepholes and layer norm (see ``lstm.py`` for the equations).

    Inputs: ``xw`` = the normalised (``layer_norm``) or biased input half of the gates,
    ``h0``, ``c0``, ``weight_hh``, ``bias`` (added after the recurrent half: ``b_ih + b_hh``
    with layer norm, ``b_hh`` without), ``peephole`` ``(3, H)``, ``ln_hh_w``, ``ln_hh_b``,
    ``ln_c_w``, ``ln_c_b``, ``valid``; absent options are ``None``.
    Returns ``(outputs (B, T, H), h_T, c_T)``.
    """

    @staticmethod
    def forward(ctx, xw, h0, c0, weight_hh, bias, peephole, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, valid):
        layer_norm = ln_hh_w is not None
        kernel = _compiled_lstm(xw, h0, c0, weight_hh, bias, peephole, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b)
        ctx.compiled, ctx.has_bias, ctx.layer_norm = kernel is not None, bias is not None, layer_norm
        if kernel is not None:  # the same loop in C++: one GEMM + one fused pass per step
            return _compiled_lstm_forward(ctx, kernel, xw, h0, c0, weight_hh, bias, peephole,
                                          ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, valid)
        B, T, H4 = xw.shape
        H = H4 // 4
        xw = _time_major(xw)  # (T, B, 4H)
        valid = None if valid is None else _time_major(valid)  # (T, B, 1)
        gates = torch.empty_like(xw)  # i, f, g, o of every step
        h_prev, c_prev, outs, tcs = (xw.new_empty(T, B, H) for _ in range(4))
        a_hats = torch.empty_like(xw) if layer_norm else None
        c_hats = xw.new_empty(T, B, H) if layer_norm else None
        a_rstds, c_rstds = (xw.new_empty(T, B, 1) if layer_norm else None for _ in range(2))
        h, c = h0, c0
        for t in range(T):
            h_prev[t], c_prev[t] = h, c
            a = torch.mm(h, weight_hh.t())  # (B, 4H): the recurrent half
            if layer_norm:
                a_hats[t], _, a_rstds[t] = torch.native_layer_norm(a, (H4,), None, None, _EPS)
                a = torch.addcmul(ln_hh_b, a_hats[t], ln_hh_w)
            z = xw[t] + a if bias is None else xw[t] + a + bias  # (B, 4H)
            z_if = z[:, : 2 * H]
            if peephole is not None:
                z_if = torch.addcmul(z_if, peephole[:2].reshape(1, 2 * H), torch.cat([c, c], dim=1))
            i_f = torch.sigmoid(z_if, out=gates[t, :, : 2 * H])
            i, f = i_f[:, :H], i_f[:, H:]
            g = torch.tanh(z[:, 2 * H : 3 * H], out=gates[t, :, 2 * H : 3 * H])
            c_new = torch.addcmul(f * c, i, g)
            z_o = z[:, 3 * H :] if peephole is None else torch.addcmul(z[:, 3 * H :], peephole[2], c_new)
            o = torch.sigmoid(z_o, out=gates[t, :, 3 * H :])
            c_out = c_new
            if layer_norm:
                c_hats[t], _, c_rstds[t] = torch.native_layer_norm(c_new, (H,), None, None, _EPS)
                c_out = torch.addcmul(ln_c_b, c_hats[t], ln_c_w)
            h_new = torch.mul(o, torch.tanh(c_out, out=tcs[t]), out=outs[t])
            h, c = _keep(valid, t, h_new, h), _keep(valid, t, c_new, c)
        if valid is not None:
            outs *= valid
        ctx.save_for_backward(h_prev, c_prev, gates, tcs, weight_hh, peephole, ln_hh_w, ln_c_w, valid,
                              a_hats, a_rstds, c_hats, c_rstds)
        return outs.transpose(0, 1), h.clone(), c  # h may be a view of outs: keep them apart

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_hT, d_cT):
        if ctx.compiled:
            return _compiled_lstm_backward(ctx, d_out, d_hT, d_cT)
        h_prev, c_prev, gates, tcs, weight_hh, peephole, ln_hh_w, ln_c_w, valid, *norms = ctx.saved_tensors
        a_hats, a_rstds, c_hats, c_rstds = norms
        T, B, H = h_prev.shape
        d_out = _time_major(d_out)  # (T, B, H)
        dh, dc = d_hT, d_cT
        dz_all = torch.empty_like(gates)  # d(gate pre-activations): (T, B, 4H)
        da_all = torch.empty_like(dz_all) if ctx.layer_norm else dz_all  # d(recurrent half, pre-norm)
        dc_out_all = torch.empty_like(h_prev) if ctx.layer_norm else None
        for t in reversed(range(T)):
            i, f, g, o = gates[t].view(B, 4, H).unbind(1)
            c = c_prev[t]
            dh_new, dc_next = d_out[t] + dh, dc
            if valid is not None:
                m = valid[t]
                dh_new = torch.where(m, dh_new, 0.0)
            tc = tcs[t]
            dc_out = dh_new * o * (1 - tc * tc)
            if ctx.layer_norm:
                dc_out_all[t] = dc_out
                dc_new = _layer_norm_backward(dc_out, c_hats[t], c_rstds[t], ln_c_w)
            else:
                dc_new = dc_out
            dc_new = dc_new + (dc_next if valid is None else torch.where(m, dc_next, 0.0))
            dz = dz_all[t]
            dz_o = torch.mul(dh_new * tc, o * (1 - o), out=dz[:, 3 * H :])
            if peephole is not None:
                dc_new = torch.addcmul(dc_new, dz_o, peephole[2])
            dz_i = torch.mul(dc_new * g, i * (1 - i), out=dz[:, :H])
            dz_f = torch.mul(dc_new * c, f * (1 - f), out=dz[:, H : 2 * H])
            torch.mul(dc_new * i, 1 - g * g, out=dz[:, 2 * H : 3 * H])
            dc = dc_new * f
            if peephole is not None:
                dc = dc + dz_i * peephole[0] + dz_f * peephole[1]
            da = dz
            if ctx.layer_norm:
                da = da_all[t] = _layer_norm_backward(dz, a_hats[t], a_rstds[t], ln_hh_w)
            dh_prev = torch.mm(da, weight_hh)
            if valid is not None:  # a padded step passed the state straight through
                dh_prev = dh_prev + torch.where(m, 0.0, dh)
                dc = dc + torch.where(m, 0.0, dc_next)
            dh = dh_prev
        # Every parameter gradient at once, over all T*B steps.
        d_weight_hh = da_all.reshape(T * B, 4 * H).t().mm(h_prev.reshape(T * B, H))
        d_bias = dz_all.sum((0, 1)) if ctx.has_bias else None
        d_peephole = d_ln_hh_w = d_ln_hh_b = d_ln_c_w = d_ln_c_b = None
        if peephole is not None:
            dz4, g4 = dz_all.view(T, B, 4, H), gates.view(T, B, 4, H)
            c_new = g4[:, :, 1] * c_prev + g4[:, :, 0] * g4[:, :, 2]  # f c + i g, every step
            d_peephole = torch.stack([
                (dz4[:, :, 0] * c_prev).sum((0, 1)), (dz4[:, :, 1] * c_prev).sum((0, 1)),
                (dz4[:, :, 3] * c_new).sum((0, 1))])
        if ctx.layer_norm:
            d_ln_hh_w, d_ln_hh_b = (dz_all * a_hats).sum((0, 1)), dz_all.sum((0, 1))
            d_ln_c_w, d_ln_c_b = (dc_out_all * c_hats).sum((0, 1)), dc_out_all.sum((0, 1))
        d_xw = dz_all.transpose(0, 1)
        return (d_xw, dh, dc, d_weight_hh, d_bias, d_peephole, d_ln_hh_w, d_ln_hh_b, d_ln_c_w, d_ln_c_b, None)


def _compiled_lstm_forward(ctx, kernel, xw, h0, c0, weight_hh, bias, peephole, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, valid):
    """LSTMScan.forward on the compiled kernel: what it keeps lives in one reused buffer."""
    B, T, H4 = xw.shape
    valid = None if valid is None else _time_major(valid)  # (T, B, 1)
    workspace = reused_buffer((kernel.lstm_workspace_size(B, T, H4 // 4, ln_hh_w is not None, False),), xw.dtype)
    outs, hs, cs, gates, tcs, *norms = kernel.lstm_forward(
        xw if xw.stride(-1) == 1 else xw.contiguous(), h0, c0, weight_hh, bias, peephole,
        ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, valid, workspace)
    ctx.save_for_backward(hs[:T], cs[:T], gates, tcs, weight_hh, peephole, ln_hh_w, ln_c_w, valid, *norms)
    return outs, hs[T].clone(), cs[T].clone()  # apart from the saved buffer


def _compiled_lstm_backward(ctx, d_out, d_hT, d_cT):
    """LSTMScan.backward on the compiled kernel: its time loop also sums the bias, layer-norm and
    peephole gradients; ``dW_hh`` is one product over all steps here."""
    h_prev, c_prev, gates, tcs, weight_hh, peephole, ln_hh_w, ln_c_w, valid, *norms = ctx.saved_tensors
    T, B, H = h_prev.shape
    kernel = lstm_kernel()
    workspace = reused_buffer((kernel.lstm_workspace_size(B, T, H, ctx.layer_norm, True),), gates.dtype)
    dz, da, dh, dc, sums = kernel.lstm_backward(
        d_out if d_out.stride(-1) == 1 else d_out.contiguous(), d_hT, d_cT, c_prev, gates, tcs, weight_hh,
        peephole, ln_hh_w, ln_c_w, valid, *norms, workspace)
    if da is None:  # dz (B, T, 4H) is also the recurrent product's gradient
        d_weight_hh = dz.reshape(B * T, 4 * H).t().mm(h_prev.transpose(0, 1).reshape(B * T, H))
    else:  # da (T, B, 4H)
        d_weight_hh = da.reshape(T * B, 4 * H).t().mm(h_prev.reshape(T * B, H))
    sum_dz, ln_hh_w_grad, ln_c, peephole_grad = sums.split([4 * H, 4 * H, 2 * H, 3 * H])
    d_bias = sum_dz if ctx.has_bias else None
    d_peephole = peephole_grad.view(3, H) if peephole is not None else None
    d_ln = (None,) * 4
    if ctx.layer_norm:  # LN_hh's bias gets dz's sum too: a copy, so that the two .grad never share memory
        d_ln = (ln_hh_w_grad, sum_dz.clone(), *ln_c.split(H))
    return (dz, dh, dc, d_weight_hh, d_bias, d_peephole, *d_ln, None)


def _compiled_lstm(xw: Tensor, *tensors: Optional[Tensor]):
    """The compiled LSTM kernel if it can run this call (CPU, float32/float64, one dtype, no
    autocast), else ``None`` (then the Python loops run)."""
    if xw.device.type != "cpu" or xw.dtype not in (torch.float32, torch.float64) or torch.is_autocast_enabled("cpu"):
        return None
    if any(t is not None and (t.dtype != xw.dtype or t.device != xw.device) for t in tensors):
        return None
    return lstm_kernel()


class GRUScan(torch.autograd.Function):
    """The GRU recurrence (see ``gru.py``): inputs ``xw`` (``W_ih x + b_ih``), ``h0``,
    ``weight_hh``, ``bias_hh`` (or ``None``), ``valid``; returns ``(outputs, h_T)``."""

    @staticmethod
    def forward(ctx, xw, h0, weight_hh, bias_hh, valid):
        B, T, H3 = xw.shape
        H = H3 // 3
        xw = _time_major(xw)  # (T, B, 3H)
        valid = None if valid is None else _time_major(valid)
        gates = torch.empty_like(xw)  # r, z, n of every step
        h_prev, outs, hns = (xw.new_empty(T, B, H) for _ in range(3))
        h = h0
        for t in range(T):
            h_prev[t] = h
            hw = torch.mm(h, weight_hh.t()) if bias_hh is None else torch.addmm(bias_hh, h, weight_hh.t())
            x_t = xw[t]
            rz = torch.sigmoid(x_t[:, : 2 * H] + hw[:, : 2 * H], out=gates[t, :, : 2 * H])
            r, z = rz[:, :H], rz[:, H:]
            h_n = hw[:, 2 * H :]
            hns[t] = h_n
            n = torch.tanh(torch.addcmul(x_t[:, 2 * H :], r, h_n), out=gates[t, :, 2 * H :])
            h_new = torch.lerp(n, h, z, out=outs[t])  # (1 - z) n + z h
            h = _keep(valid, t, h_new, h)
        if valid is not None:
            outs *= valid
        ctx.save_for_backward(h_prev, gates, hns, weight_hh, valid)
        ctx.has_bias = bias_hh is not None
        return outs.transpose(0, 1), h.clone()  # h may be a view of outs: keep them apart

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_hT):
        h_prev, gates, hns, weight_hh, valid = ctx.saved_tensors
        T, B, H = h_prev.shape
        d_out = _time_major(d_out)
        dh = d_hT
        dhw_all = torch.empty_like(gates)  # d(W_hh h + b_hh): (T, B, 3H)
        # d(W_ih x + b_ih): the r, z columns equal dhw's; the n columns are dn (dhw's are dn * r).
        # Written step by step while they are in cache: a concatenation at the end would pass over them again.
        dxw_all = torch.empty_like(gates)
        for t in reversed(range(T)):
            r, z, n = gates[t].view(B, 3, H).unbind(1)
            dh_new = d_out[t] + dh
            if valid is not None:
                m = valid[t]
                dh_new = torch.where(m, dh_new, 0.0)
            dhw = dhw_all[t]
            torch.mul(dh_new * (h_prev[t] - n), z * (1 - z), out=dhw[:, H : 2 * H])
            dn = torch.mul(dh_new * (1 - z), 1 - n * n, out=dxw_all[t, :, 2 * H :])
            torch.mul(dn * hns[t], r * (1 - r), out=dhw[:, :H])
            torch.mul(dn, r, out=dhw[:, 2 * H :])
            dxw_all[t, :, : 2 * H].copy_(dhw[:, : 2 * H])
            dh_prev = torch.addcmul(torch.mm(dhw, weight_hh), dh_new, z)
            if valid is not None:
                dh_prev = dh_prev + torch.where(m, 0.0, dh)
            dh = dh_prev
        flat = dhw_all.reshape(T * B, 3 * H)
        d_weight_hh = flat.t().mm(h_prev.reshape(T * B, H))
        d_xw = dxw_all.transpose(0, 1)  # (B, T, 3H)
        return d_xw, dh, d_weight_hh, flat.sum(0) if ctx.has_bias else None, None


class CompiledGRUScan(torch.autograd.Function):
    """:class:`GRUScan` on the compiled kernel (``kernels/gru_scan.cpp``): the same inputs, plus
    the kernel module, and the same outputs. Each time loop is one C++ call: per step one GEMM
    and one fused pass of gate math, nothing allocated; ``xw``, the outputs and their gradients
    stay batch-first, so no transposing copy is made on either side."""

    @staticmethod
    def forward(ctx, xw, h0, weight_hh, bias_hh, valid, kernel):
        valid = None if valid is None else valid.squeeze(2).contiguous()  # (B, T)
        with torch.autocast("cpu", enabled=False):  # its products stay in xw's dtype
            outs, h, *kept = kernel.gru_forward(xw.contiguous(), h0.contiguous(), weight_hh, bias_hh, valid)
        ctx.save_for_backward(*kept, weight_hh, valid)  # gates, W_hn h + b_hn, states: (T, B, .)
        ctx.has_bias, ctx.kernel = bias_hh is not None, kernel
        return outs, h

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_hT):
        gates, hns, states, weight_hh, valid = ctx.saved_tensors
        with torch.autocast("cpu", enabled=False):  # even when backward is called under autocast
            d_xw, dh0, d_weight_hh, d_bias = ctx.kernel.gru_backward(
                d_out.contiguous(), d_hT, gates, hns, states, weight_hh, valid, ctx.has_bias, ctx.needs_input_grad[1])
        return d_xw, dh0, d_weight_hh, d_bias, None, None

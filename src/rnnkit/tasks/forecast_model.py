"""The forecaster's configuration and network: a recurrent encoder with a direct or a decoder head.

Inputs of one window (``L`` = lookback, ``H`` = horizon):

- ``y``: ``(B, L)`` scaled target values, relative to the last one;
- ``past``: ``(B, L, P)`` past covariates, known only up to the forecast origin;
- ``known``: ``(B, L + H, K)`` known-future features over lookback and horizon (calendar
  features and future covariates).

The encoder reads ``[y_t, past_t, known_t]`` over the lookback. The ``"direct"`` head maps
its final hidden state and the horizon's known features to all ``H x Q`` outputs at once
(many-to-one); the ``"decoder"`` head runs a second recurrent layer over the horizon,
started from the encoder's state and fed each future step's known features and position,
emitting ``Q`` quantiles per step (many-to-many, no autoregressive feedback, so no
exposure bias). Both add a linear map of the window (a highway, as in LSTNet), so the
net starts as a linear autoregression and the recurrence learns what that misses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, _VF, nn

from ..errors import RnnkitError
from ..layers import LayerState, Recurrent
from .base import TaskConfig

HEADS = ("direct", "decoder")
MODELS = ("auto", "rnn", "esrnn")
PANEL = 20  # model="auto" picks "esrnn" from this many series up (without covariates), "rnn" below
FUSED_MAX_BATCH = 64  # ForecastEnsemble.for_inference: the fused network up to this many windows


@dataclass(frozen=True, kw_only=True)
class ForecasterConfig(TaskConfig):
    """Everything that defines a forecaster; saved in its bundle as ``config.json``."""

    KIND = "forecaster"

    horizon: int = 12  # steps forecast at once, from one window
    model: str = "auto"  # "rnn" (windows scaled by their last value), "esrnn" (per-series Holt-Winters level,
    # season and drift normalise each window, as in ES-RNN; no covariates or calendar) or "auto": esrnn for a
    # panel of PANEL+ series without covariates (won on the competitions' validation windows), else rnn
    learn_smoothing: bool = False  # esrnn: train the per-series coefficients with the net by gradient
    # (ES-RNN's way); off: they stay at their in-sample fit, which did better on validation windows
    mase_weight: bool = True  # esrnn: weigh each series' loss by the inverse of its in-sample seasonal-difference
    # error (relative to its mean), so the loss counts errors as MASE does; won on M3 monthly validation windows
    stats_weight: float = 0.5  # esrnn: weight of two statistical forecasts (Theta and damped trend, equal shares)
    # averaged into the point forecast, the quantiles moving with it, as the M4 winners combined theirs; 0 = the
    # net alone. 0.5 won on the competitions' validation windows
    lookback: Optional[int] = None  # input window; None = the model's: rnn 3 x horizon (about three seasons),
    # esrnn max(24, horizon) (its smoothing carries the season, so a shorter window won on validation)
    cell: str = "lstm"  # "lstm", "gru" or "rnn"
    head: str = "decoder"  # "decoder" (many-to-many; won on validation windows) or "direct" (all steps at once)
    hidden_size: int = 32  # small series overfit wider models; 32 won on validation windows
    num_layers: int = 1  # one layer suffices for a few hundred points per series
    dropout: float = 0.0  # between stacked layers only; early stopping and the ensemble regularise
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)  # 0.5 is the point forecast; 0.1-0.9 an 80 % interval
    calibrate: bool = True  # shift the quantiles so held-out windows are covered at their nominal rates
    window_scale: bool = True  # also divide each window by its own spread; won on AirPassengers' validation windows
    calendar: bool = True  # add sin/cos calendar features of the timestamps (known in the future)
    past_covariates: tuple[str, ...] = ()  # columns known only up to the forecast origin
    future_covariates: tuple[str, ...] = ()  # columns known for the horizon too (prices, holidays)
    ensemble: int = 3  # models from different seeds (member k uses seed + k), averaged: steadier on small data
    threads: Optional[int] = 1  # torch threads in fit/predict: a net this small gains nothing from more, and
    # OpenMP barriers collapse on a busy machine; None = torch's
    # Training defaults that differ from TaskConfig's:
    epochs: int = 10_000  # a bound only: a small panel has a few steps an epoch, so max_steps decides
    max_steps: Optional[int] = 600  # optimizer steps per model; early stopping usually ends sooner
    minutes: Optional[float] = 2.0  # time budget of one whole fit (all ensemble members)
    batch_size: Optional[int] = None  # windows per step; None = the model's: rnn 64 (steadier quantile gradients
    # than 32, still fast), esrnn 512 (a panel has thousands of windows; won on validation)
    lr: Optional[float] = None  # None = the model's: rnn 5e-3 (a brisk rate for a few hundred steps to early
    # stopping), esrnn 1e-3 (it starts at the smoothing's forecast and learns corrections to it)
    patience: Optional[int] = 5  # validations (every 20 steps) without improvement before stopping

    def __post_init__(self) -> None:
        object.__setattr__(self, "quantiles", tuple(sorted(float(q) for q in self.quantiles)))
        if self.model == "auto" and (self.past_covariates or self.future_covariates):
            object.__setattr__(self, "model", "rnn")  # only the rnn model reads covariates
        if self.model != "auto" and isinstance(self.horizon, int):  # "auto" settles them when it picks, in fit
            for name, value in model_defaults(self.model, self.horizon).items():
                if getattr(self, name) is None:
                    object.__setattr__(self, name, value)
        for name in ("past_covariates", "future_covariates"):
            object.__setattr__(self, name, tuple(str(c) for c in getattr(self, name)))
        super().__post_init__()
        self.check_positive("horizon", "hidden_size", "num_layers", "ensemble")
        if not 0 <= self.stats_weight <= 1:
            raise RnnkitError(f"stats_weight must lie in [0, 1], got {self.stats_weight}")
        if self.lookback is not None:
            self.check_positive("lookback")
        if 0.5 not in self.quantiles or any(not 0 < q < 1 for q in self.quantiles):
            raise RnnkitError(f"quantiles must lie in (0, 1) and include 0.5, got {list(self.quantiles)}")
        if self.model not in MODELS:
            raise RnnkitError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.model == "esrnn" and (self.past_covariates or self.future_covariates):
            raise RnnkitError("model='esrnn' reads the series alone; drop the covariates or use model='rnn'")
        if self.head not in HEADS:
            raise RnnkitError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        clash = set(self.past_covariates) & set(self.future_covariates)
        if clash or {"unique_id", "ds", "y"} & set(self.past_covariates + self.future_covariates):
            raise RnnkitError(f"covariate columns must be distinct and not unique_id/ds/y, got "
                              f"past={list(self.past_covariates)} future={list(self.future_covariates)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ForecasterConfig":
        """The inverse of ``to_dict``. A bundle saved before the statistical combination and the
        MASE weights keeps forecasting as it did: those fields, absent from it, are off."""
        return super().from_dict({"stats_weight": 0.0, "mase_weight": False, **data})

    def train_config(self, **overrides: Any) -> Any:
        """The trainer's options; the model's defaults stand in for those ``"auto"`` has not settled yet."""
        unset = {k: v for k, v in model_defaults("rnn", 1).items() if k in ("lr", "batch_size") and getattr(self, k)
                 is None}
        return super().train_config(**{**unset, **overrides})


def model_defaults(model: str, horizon: int) -> dict[str, float]:
    """The options a ``None`` stands for under ``model`` ("rnn" or "esrnn"), see :class:`ForecasterConfig`."""
    if model == "esrnn":
        return {"lookback": max(24, horizon), "batch_size": 512, "lr": 1e-3}
    return {"lookback": 3 * horizon, "batch_size": 64, "lr": 5e-3}


class ForecastNet(nn.Module):
    """One window to quantiles ``(B, H, Q)`` that never cross (see the module doc).

    The head emits the lowest quantile and non-negative gaps (softplus) to each next
    one; a cumulative sum orders the quantiles by construction.
    """

    def __init__(self, config: ForecasterConfig, num_past: int, num_known: int) -> None:
        super().__init__()
        self.horizon, self.num_quantiles, self.head_type = config.horizon, len(config.quantiles), config.head
        hidden, outputs = config.hidden_size, config.horizon * len(config.quantiles)
        self.encoder = Recurrent(1 + num_past + num_known, hidden, cell=config.cell, num_layers=config.num_layers,
                                 dropout=config.dropout)
        self.highway = nn.Linear(config.lookback, outputs)
        if config.head == "direct":
            self.head = nn.Linear(hidden + config.horizon * num_known, outputs)
        else:
            self.decoder = Recurrent(num_known + config.horizon, hidden, cell=config.cell,
                                     num_layers=config.num_layers, dropout=config.dropout)
            self.head = nn.Linear(hidden, self.num_quantiles)

    def forward(self, y: Tensor, past: Tensor, known: Tensor) -> Tensor:
        lookback = y.size(1)
        encoder_input = torch.cat([y.unsqueeze(2), past, known[:, :lookback]], dim=2)  # (B, L, 1 + P + K)
        _, state = self.encoder(encoder_input)
        future = known[:, lookback:]  # (B, H, K)
        if self.head_type == "direct":
            h = (state[0] if isinstance(state, tuple) else state)[-1]  # (B, hidden): last layer's final state
            raw = self.head(torch.cat([h, future.flatten(1)], dim=1))  # (B, H * Q)
        else:
            position = torch.eye(self.horizon, device=y.device).expand(y.size(0), -1, -1)  # (B, H, H)
            outputs, _ = self.decoder(torch.cat([future, position], dim=2), state)  # (B, H, hidden)
            raw = self.head(outputs).flatten(1)  # (B, H * Q)
        return ordered_quantiles((raw + self.highway(y)).view(-1, self.horizon, self.num_quantiles))  # (B, H, Q)


def ordered_quantiles(raw: Tensor) -> Tensor:
    """The head's raw outputs ``(..., Q)`` as quantiles: the lowest, then softplus gaps summed onto it."""
    gaps = nn.functional.softplus(raw[..., 1:])
    return torch.cat([raw[..., :1], raw[..., :1] + gaps.cumsum(dim=-1)], dim=-1)


class ForecastEnsemble(nn.Module):
    """The mean of several :class:`ForecastNet`, plus a calibration shift per quantile.

    ``calibration[k]`` is added to quantile ``k`` (zero until :meth:`calibrate`); a running
    maximum over the quantiles afterwards keeps them ordered.
    """

    def __init__(self, config: ForecasterConfig, num_past: int, num_known: int) -> None:
        super().__init__()
        self.members = nn.ModuleList(ForecastNet(config, num_past, num_known) for _ in range(config.ensemble))
        self.register_buffer("calibration", torch.zeros(len(config.quantiles)))

    def forward(self, y: Tensor, past: Tensor, known: Tensor) -> Tensor:
        mean = torch.stack([member(y, past, known) for member in self.members]).mean(dim=0)  # (B, H, Q)
        return (mean + self.calibration).cummax(dim=2).values

    def for_inference(self, batch: int) -> nn.Module:
        """The network to run ``batch`` windows through without gradients: :meth:`fused` up to
        ``FUSED_MAX_BATCH`` windows, where a recurrent call costs mostly its fixed overhead and
        one call replaces one per member; itself above, where the fused block-diagonal product's
        multiplications by zero (as many more as there are members) cost more than the calls saved."""
        return self.fused() if batch <= FUSED_MAX_BATCH else self

    def fused(self) -> "FusedEnsemble":
        """The same ensemble as one network (:class:`FusedEnsemble`), for inference: built once, and
        again after a weight or the calibration changes."""
        fused = self.__dict__.get("_fused")
        if fused is None or not fused.current():
            self.__dict__["_fused"] = fused = FusedEnsemble(self)  # not a submodule: never saved
        return fused

    @torch.no_grad()
    def calibrate(self, held_out: list[Optional[tuple[Tensor, ...]]], quantiles: tuple[float, ...]) -> None:
        """Shift each quantile but the median so that a share ``q`` of new targets falls below it.

        Split-conformal calibration, one-sided per quantile: ``held_out[m]`` (``y, past, known,
        target``, or ``None``) holds windows member ``m`` neither trained on nor was stopped on
        (none of their target values; see :func:`rnnkit.data.series.holdout_fold`);
        ``calibration[k]`` is a quantile of ``target - prediction_k`` of each member on its own
        held-out windows, over every window and step. Quantile regression fitted on training
        windows is usually too confident; this widens (or narrows) the interval from evidence no
        member was trained on. A member is less accurate than the mean of all, so the shift errs wide.

        The level is split conformal's finite-sample one, counting windows, not values: the
        values of one window share an origin and move together, so ``n`` held-out windows are
        ``n`` exchangeable draws, and covering a new one with probability ``q`` takes the
        empirical ``q (n + 1) / n`` quantile (``1 - (1 - q)(n + 1) / n`` below the median). With
        the few windows a short series holds out, the plain ``q`` quantile under-covers.
        """
        self.calibration.zero_()
        residuals = [data[3].unsqueeze(2) - member(*data[:3])  # (N_m, H, Q)
                     for member, data in zip(self.members, held_out) if data is not None]
        if not residuals:
            return
        residual = torch.cat(residuals)  # (N, H, Q)
        for k, q in enumerate(quantiles):
            if q != 0.5:
                level = conformal_level(q, windows=residual.size(0))
                self.calibration[k] = torch.quantile(residual[:, :, k].flatten(), level)


class FusedEnsemble(nn.Module):
    """A :class:`ForecastEnsemble`'s members run side by side as one network, for inference.

    The members read the same inputs, so their recurrent layers stack into one ``torch.nn``
    layer of ``M x hidden`` units: input weights stacked, recurrent weights block-diagonal (a
    member's units only see its own), each gate's units member by member. One ATen call then
    runs the encoder of every member (and one the decoders) instead of one call per member;
    at these sizes a recurrent call costs mostly its fixed overhead. The heads and highways
    stack the same way, their outputs ordered step by step, then member, then quantile. The
    outputs equal the ensemble's up to float rounding (the zeros of the block-diagonal weights
    add nothing); a test checks it.
    """

    def __init__(self, ensemble: ForecastEnsemble) -> None:
        super().__init__()
        members = list(ensemble.members)
        first = members[0]
        self.horizon, self.num_members, self.head_type = first.horizon, len(members), first.head_type
        hidden, steps = first.encoder.hidden_size, (len(members), first.horizon)
        self.encoder = _stacked_recurrent([m.encoder for m in members])
        self.highway = _stacked_linear([m.highway for m in members], shared=first.highway.in_features, steps=steps)
        if self.head_type == "direct":  # reads [its member's final state, the horizon's known features]
            self.head = _stacked_linear([m.head for m in members], shared=first.head.in_features - hidden,
                                        steps=steps)
        else:
            self.decoder = _stacked_recurrent([m.decoder for m in members])
            self.head = _stacked_linear([m.head for m in members], shared=0)
            self.register_buffer("position", torch.eye(self.horizon))  # (H, H): each step's one-hot
        self.register_buffer("calibration", ensemble.calibration.clone())
        self.requires_grad_(False)
        self.sources = [*ensemble.parameters(), *ensemble.buffers()]  # what it was built from
        self.stamp = self._stamp()

    def current(self) -> bool:
        """Whether the ensemble's weights and calibration are still those it was built from (a tensor
        counts its in-place writes; a new storage has a new address)."""
        stamp = self._stamp()
        return stamp is not None and stamp == self.stamp

    def _stamp(self) -> Optional[list[tuple[int, int]]]:
        try:
            return [(t.data_ptr(), t._version) for t in self.sources]
        except RuntimeError:  # tensors made under inference_mode count no writes: never taken as current
            return None

    def forward(self, y: Tensor, past: Tensor, known: Tensor) -> Tensor:
        batch, lookback = y.shape
        _, state = _run(self.encoder, torch.cat([y.unsqueeze(2), past, known[:, :lookback]], dim=2))
        future = known[:, lookback:]  # (B, H, K)
        if self.head_type == "direct":
            h = (state[0] if isinstance(state, tuple) else state)[-1]  # (B, M * hidden)
            raw = _linear(self.head, torch.cat([h, future.flatten(1)], dim=1))  # (B, H * M * Q)
        else:
            position = self.position.expand(batch, -1, -1)  # (B, H, H)
            outputs, _ = _run(self.decoder, torch.cat([future, position], dim=2), state)  # (B, H, M * hidden)
            raw = _linear(self.head, outputs)  # (B, H, M * Q)
        raw = (raw.view(batch, self.horizon, self.num_members, -1)
               + _linear(self.highway, y).view(batch, self.horizon, self.num_members, -1))  # (B, H, M, Q)
        return (ordered_quantiles(raw).mean(dim=2) + self.calibration).cummax(dim=2).values


_KERNELS = {"LSTM": _VF.lstm, "GRU": _VF.gru, "RNN_TANH": _VF.rnn_tanh, "RNN_RELU": _VF.rnn_relu}


def _run(layer: nn.RNNBase, x: Tensor, state: Optional[LayerState] = None) -> tuple[Tensor, LayerState]:
    """``layer(x, state)`` (batch first, inference) straight to ATen's kernel, without ``torch.nn``'s
    per-call argument checks: the layer and its weights are built here, its inputs by the forward."""
    if state is None:
        zeros = x.new_zeros(layer.num_layers, x.size(0), layer.hidden_size)
        state = (zeros, zeros) if layer.mode == "LSTM" else zeros
    out = _KERNELS[layer.mode](x, state, layer._flat_weights, layer.bias, layer.num_layers, 0.0, False, False, True)
    return out[0], (tuple(out[1:]) if layer.mode == "LSTM" else out[1])


def _linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """``layer(x)`` without the module call's hook machinery, which a product this small notices."""
    return nn.functional.linear(x, layer.weight, layer.bias)


def _stacked_recurrent(layers: list[Recurrent]) -> nn.RNNBase:
    """Members' recurrent layers (same shapes, same input) as one ``torch.nn`` layer of all their units."""
    modules = [layer.to_torch() for layer in layers]
    gates = modules[0].weight_ih_l0.size(0) // modules[0].hidden_size  # 4 LSTM, 3 GRU, 1 Elman
    stacked = type(modules[0])(modules[0].input_size, len(modules) * modules[0].hidden_size,
                               num_layers=modules[0].num_layers, bias=modules[0].bias, batch_first=True,
                               **({"nonlinearity": modules[0].nonlinearity} if gates == 1 else {}))
    state = {}
    for name, _ in modules[0].named_parameters():
        shared = modules[0].input_size if name == "weight_ih_l0" else 0  # layer 0 reads the input; others their own units
        state[name] = _stacked([dict(m.named_parameters())[name] for m in modules], gates, shared)
    stacked.load_state_dict(state)
    return stacked.eval()


def _stacked_linear(linears: list[nn.Linear], shared: int, steps: Optional[tuple[int, int]] = None) -> nn.Linear:
    """Members' linear maps as one: the last ``shared`` input features are read by every member, the
    rest are each member's own (block-diagonal). Outputs member by member; with ``steps`` (members,
    horizon), outputs laid out ``(members, horizon, Q)`` are reordered to ``(horizon, members, Q)``."""
    weights = [linear.weight for linear in linears]
    own = weights[0].size(1) - shared
    weight = torch.cat([_stacked([w[:, :own] for w in weights], 1, 0),
                        _stacked([w[:, own:] for w in weights], 1, shared)], dim=1)
    bias = torch.cat([linear.bias.detach() for linear in linears])
    if steps is not None:
        order = torch.arange(len(bias)).view(*steps, -1).transpose(0, 1).flatten()
        weight, bias = weight[order], bias[order]
    stacked = nn.Linear(weight.size(1), weight.size(0))
    stacked.load_state_dict({"weight": weight, "bias": bias})
    return stacked


def _stacked(tensors: list[Tensor], gates: int, shared: int) -> Tensor:
    """Members' ``(gates * H, I)`` weights (or ``(gates * H,)`` biases) as one ``(gates * M * H, ...)``:
    within each gate the members' units one after another; the inputs read by all (``shared`` of
    them, all or none) stay columns, the members' own inputs go block-diagonal."""
    parts = [t.detach().reshape(gates, t.size(0) // gates, *t.shape[1:]) for t in tensors]  # (gates, H[, I])
    if parts[0].dim() == 2 or shared:
        return torch.cat(parts, dim=1).flatten(0, 1)
    blocks = parts[0].new_zeros(gates, len(parts), parts[0].size(1), len(parts), parts[0].size(2))
    for m, part in enumerate(parts):
        blocks[:, m, :, m] = part
    return blocks.flatten(0, 2).flatten(1)


def conformal_level(q: float, windows: int) -> float:
    """The empirical quantile level that covers a new draw with probability ``q`` (above the
    median) or leaves ``q`` below it (below), from ``windows`` exchangeable draws."""
    if q > 0.5:
        return min(1.0, q * (windows + 1) / windows)
    return max(0.0, 1 - (1 - q) * (windows + 1) / windows)


def pinball_loss(predicted: Tensor, target: Tensor, quantiles: Tensor) -> Tensor:
    """Mean quantile loss: ``predicted`` ``(B, H, Q)``, ``target`` ``(B, H)``."""
    diff = target.unsqueeze(2) - predicted  # (B, H, Q)
    return torch.maximum(quantiles * diff, (quantiles - 1) * diff).mean()


def quantile_column(q: float) -> str:
    """``0.1`` to ``"y_hat_q10"``; the median is ``"y_hat"``."""
    return "y_hat" if q == 0.5 else f"y_hat_q{round(q * 100):02d}"

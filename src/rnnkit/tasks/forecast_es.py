"""The ES-RNN-style forecaster: per-series Holt-Winters smoothing learned jointly with a global recurrent net.

As in Smyl's M4 winner (ES-RNN), each series ``s`` owns a level smoothing coefficient
``α_s``, a seasonal one ``γ_s`` and ``m`` initial seasonal indices; multiplicative
Holt-Winters runs over the series (``z`` is the series made positive, see
:func:`positive_scaler`)::

    l_t     = α z_t / s_t + (1 - α) l_{t-1}          level
    s_{t+m} = γ z_t / l_t + (1 - γ) s_t              seasonal index, m steps ahead

A window ending at origin ``e`` reads ``x_i = log(z_i / (l_{e-1} s_i))`` over its lookback (the
series divided by its current level and deseasonalised) and the shared network
(:class:`~rnnkit.tasks.forecast_model.ForecastNet`) forecasts ``log(z_{e+j} / (l_{e-1} s_{e+j}))``;
level and season are re-applied to its output. The coefficients are trained with the network
by the same pinball loss through the smoothing recursion, so each series' normalisation is
the one under which the global net forecasts it best. The loss lives in log space, which
weighs relative errors, as sMAPE and MASE-on-panels do.

Shapes: ``S`` series, ``T`` steps of the longest, ``B`` windows, ``L`` lookback, ``H`` horizon,
``Q`` quantiles, ``m`` season length (1: level only).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ..data.series import SeriesScaler, future_dates, holdout_fold
from .forecast_model import ForecasterConfig, ForecastNet, pinball_loss, quantile_column
from .forecast_stats import damped_forecast, seasonal_indices, theta_forecast


def positive_scaler(series: dict[str, np.ndarray]) -> SeriesScaler:
    """Per series ``z = (y - shift) / scale`` with ``z > 0`` and mean 1: what a multiplicative model needs.

    A series with a value at or below zero is shifted up by its minimum and a tenth of its
    range, so its smallest value maps to a small positive number rather than to zero.
    """
    stats = {}
    for uid, y in series.items():
        low = float(y.min())
        shift = 0.0 if low > 0 else low - 0.1 * (float(y.max()) - low) - 1e-6
        scale = float(np.mean(y - shift))
        stats[uid] = (shift, scale if scale > 1e-8 else 1.0)
    return SeriesScaler(stats)


def initial_log_season(z: np.ndarray, season: int) -> np.ndarray:
    """Log seasonal indices ``(m,)`` of positive values ``z`` by classical decomposition
    (:func:`~rnnkit.tasks.forecast_stats.seasonal_indices`), for positions ``0 .. m-1``; zeros
    when :func:`seasonality_test` finds no season: fitting indices to noise costs more than it
    gains, as the Theta method's authors found."""
    return np.log(np.clip(seasonal_indices(z, season), 0.05, 20))


GAIN = 3.0 # scale of the per-series coefficients' parameters (see SmoothedNet)


class SmoothedNet(nn.Module):
    """Per-series Holt-Winters coefficients and a global :class:`ForecastNet` over the normalised windows.

    The smoothing's own forecast, the base the net corrects, is the level times the season
    times a drift: half the series' log-linear trend up to the origin, carried on from the
    level as the Theta method carries its trend (``b/2 · (j + 1/α)`` at step ``j``). The net
    reads the window and that trend, and starts out forecasting the base itself.
    """

    def __init__(self, config: ForecasterConfig, num_series: int, season: int) -> None:
        super().__init__()
        self.season, self.lookback, self.horizon = season, config.lookback, config.horizon
        # Stored divided by GAIN: a series' coefficients get a gradient only when one of its windows is in
        # the batch, and Adam moves a parameter about lr per step, so they take GAIN-times larger steps.
        self.alpha_logit = nn.Parameter(torch.zeros(num_series))  # α = sigmoid: set from data before training
        self.gamma_logit = nn.Parameter(torch.full((num_series,), -2.0 / GAIN))  # γ: likewise
        self.log_season = nn.Parameter(torch.zeros(num_series, max(season, 1)))  # likewise
        self.net = ForecastNet(config, 2, 0)  # past channels: the trend and the observed flag; no known features
        for parameter in (self.alpha_logit, self.gamma_logit, self.log_season):
            parameter.requires_grad_(config.learn_smoothing)
        self.start_at_smoothing(len(config.quantiles))

    @torch.no_grad()
    def start_at_smoothing(self, num_quantiles: int) -> None:
        """Zero the net's output maps and set their bias so that it starts by forecasting the base as the
        median, with quantiles 0.1 apart in log space: the net then learns corrections to the smoothing
        rather than a forecast from random outputs."""
        net = self.net
        nn.init.zeros_(net.highway.weight)
        nn.init.zeros_(net.head.weight)
        nn.init.zeros_(net.head.bias)
        gap = float(np.log(np.expm1(0.1)))  # softplus(gap) = 0.1
        bias = torch.full((self.horizon, num_quantiles), gap)
        bias[:, 0] = -0.1 * (num_quantiles // 2)
        net.highway.bias.copy_(bias.flatten())

    @torch.no_grad()
    def start_coefficients(self, alpha: Tensor, gamma: Tensor, log_season: Tensor) -> None:
        """Set every series' coefficients (α, γ in (0, 1), log seasons ``(S, m)``)."""
        logit = lambda p: torch.logit(p.clamp(1e-3, 1 - 1e-3)) / GAIN  # noqa: E731
        self.alpha_logit.copy_(logit(alpha))
        self.gamma_logit.copy_(logit(gamma))
        self.log_season.copy_(log_season / GAIN)

    def coefficients(self, index: Tensor, init: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """α ``(B,)``, γ ``(B,)`` and initial log seasons ``(B, m)`` of series ``index``; a series
        the model was not fitted on (index -1) takes the mean coefficients and ``init``, its data's indices."""
        known = index >= 0
        row = index.clamp_min(0)
        pick = lambda p: torch.where(known, GAIN * p[row], GAIN * p.mean())  # noqa: E731
        log_season = torch.where(known[:, None], GAIN * self.log_season[row], init)
        return torch.sigmoid(pick(self.alpha_logit)), torch.sigmoid(pick(self.gamma_logit)), log_season

    def normalise(self, z: Tensor, index: Tensor, ends: Tensor, init: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Windows ending at ``ends`` ``(B,)`` (origin: ``z[:, e]`` is the first forecast step).

        Returns the input ``x`` ``(B, L)`` (0 where unobserved), the past channels ``(B, L, 2)``
        (trend times horizon, observed flag) and the base forecast ``(B, H)``: level at the origin
        x seasonal index of each step (beyond one season, the last season repeats) x drift.
        """
        alpha, gamma, log_season = self.coefficients(index, init)
        levels, seasons = holt_winters(z, alpha, gamma, log_season, int(ends.max()), self.season)
        rows = torch.arange(z.size(0), device=z.device)[:, None]
        level = levels[rows[:, 0], ends - 1][:, None]  # (B, 1)
        position = ends[:, None] - self.lookback + torch.arange(self.lookback, device=z.device)  # (B, L)
        observed = (position >= 0).float()
        position = position.clamp_min(0)
        steps = torch.arange(self.horizon, device=z.device)
        ahead = ends[:, None] + steps % max(self.season, 1)  # (B, H)
        x = torch.log(z[rows, position].clamp_min(1e-6) / (level * seasons[rows, position])) * observed
        steps_in = levels.size(1)
        slope = log_trend(torch.log(z[:, :steps_in].clamp_min(1e-6) / seasons[:, :steps_in]), ends)
        drift = 0.5 * slope[:, None] * (steps[None] + 1 / alpha[:, None])  # (B, H)
        base = level * seasons[rows, ahead] * torch.exp(drift)
        trend = (slope * self.horizon)[:, None].expand(-1, self.lookback) * observed
        return x, torch.stack([trend, observed], dim=2), base

    def forward(self, z: Tensor, index: Tensor, ends: Tensor, init: Tensor) -> tuple[Tensor, Tensor]:
        """Log-space quantiles relative to the base ``(B, H, Q)``, and the base ``(B, H)``."""
        x, past, base = self.normalise(z, index, ends, init)
        empty = x.new_zeros(x.size(0), self.lookback + self.horizon, 0)
        return self.net(x, past, empty), base

    def log_target(self, z: Tensor, ends: Tensor, base: Tensor) -> Tensor:
        """The values after each origin in the network's log space ``(B, H)``."""
        rows = torch.arange(z.size(0), device=z.device)[:, None]
        ahead = ends[:, None] + torch.arange(self.horizon, device=z.device)  # (B, H)
        return torch.log(z[rows, ahead].clamp_min(1e-6) / base)


def log_trend(u: Tensor, ends: Tensor) -> Tensor:
    """Least-squares slope of ``u`` ``(B, T)`` over its first ``ends`` values, per row ``(B,)``."""
    t = torch.arange(u.size(1), device=u.device, dtype=u.dtype)[None]
    mask = (t < ends[:, None]).to(u.dtype)
    count = mask.sum(1, keepdim=True)
    t_mean, u_mean = (t * mask).sum(1, keepdim=True) / count, (u * mask).sum(1, keepdim=True) / count
    centred = (t - t_mean) * mask
    return (centred * (u - u_mean)).sum(1) / (centred ** 2).sum(1).clamp_min(1e-6)


def holt_winters(z: Tensor, alpha: Tensor, gamma: Tensor, log_season: Tensor, steps: int, season: int
                 ) -> tuple[Tensor, Tensor]:
    """Run the recursion over the first ``steps`` values of ``z`` ``(B, T)``: levels ``(B, steps)``
    and seasonal indices ``(B, steps + m)`` (index ``t`` divides ``z_t``; all ones without a season)."""
    if season <= 1:
        level, levels = z[:, 0], []
        for t in range(steps):
            level = alpha * z[:, t] + (1 - alpha) * level if t else level
            levels.append(level)
        return torch.stack(levels, 1), torch.ones(z.size(0), steps + 1, device=z.device)
    seasons = list(log_season.exp().unbind(1))  # m tensors (B,)
    level, levels = z[:, 0] / seasons[0], []
    for t in range(steps):
        s_t = seasons[t]
        if t:
            level = alpha * z[:, t] / s_t + (1 - alpha) * level
        levels.append(level)
        seasons.append(gamma * z[:, t] / level + (1 - gamma) * s_t)
    return torch.stack(levels, 1), torch.stack(seasons, 1)


@torch.no_grad()
def grid_coefficients(z: Tensor, lengths: Tensor, log_season: Tensor, season: int) -> tuple[Tensor, Tensor]:
    """Per series the α and γ of a small grid with the least mean absolute one-step log error in sample,
    as ETS fits its coefficients, to start training from; γ = 0 (fixed indices) for a series
    without a season."""
    steps = z.size(1)
    alphas, gammas = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9), ((0.0, 0.01, 0.05, 0.1, 0.2, 0.3) if season > 1 else (0.0,))
    valid = (torch.arange(1, steps)[None] < lengths[:, None]).float()  # (S, T-1)
    best = torch.full((z.size(0),), float("inf"))
    best_alpha, best_gamma = torch.zeros(z.size(0)), torch.zeros(z.size(0))
    seasonal = log_season.abs().sum(1) > 0
    for a in alphas:
        for g in gammas:
            alpha, gamma = torch.full_like(best, a), torch.where(seasonal, g, 0.0)
            levels, seasons = holt_winters(z, alpha, gamma, log_season, steps, season)
            error = torch.log(z[:, 1:].clamp_min(1e-6) / (levels[:, :-1] * seasons[:, 1:steps])).abs()
            error = (error * valid).sum(1) / valid.sum(1).clamp_min(1)
            better = error < best
            best = torch.where(better, error, best)
            best_alpha, best_gamma = torch.where(better, a, best_alpha), torch.where(better, gamma, best_gamma)
    return best_alpha, best_gamma


class SmoothedEnsemble(nn.Module):
    """Several :class:`SmoothedNet` (own coefficients, own net), averaged in the scaled series' space,
    plus a calibration shift per quantile in log space (zero until calibrated)."""

    def __init__(self, config: ForecasterConfig, num_series: int, season: int) -> None:
        super().__init__()
        self.members = nn.ModuleList(SmoothedNet(config, num_series, season) for _ in range(config.ensemble))
        self.register_buffer("calibration", torch.zeros(len(config.quantiles)))

    def forward(self, z: Tensor, index: Tensor, ends: Tensor, init: Tensor) -> Tensor:
        """Quantiles of the scaled series ``(B, H, Q)``, ordered."""
        outputs = []
        for member in self.members:
            log_q, base = member(z, index, ends, init)
            outputs.append(torch.exp(log_q + self.calibration) * base.unsqueeze(2))
        return torch.stack(outputs).mean(dim=0).cummax(dim=2).values

    @torch.no_grad()
    def calibrate(self, z: Tensor, init: Tensor, held_out: list[Optional[tuple[Tensor, Tensor]]],
                  quantiles: tuple[float, ...]) -> None:
        """Shift each quantile but the median so that a share ``q`` of each member's held-out targets
        (``index, ends`` windows it neither trained nor stopped on) falls below it, in log space
        (see :meth:`rnnkit.tasks.forecast_model.ForecastEnsemble.calibrate`)."""
        self.calibration.zero_()
        residuals = []
        for member, data in zip(self.members, held_out):
            if data is None:
                continue
            index, ends = data
            log_q, base = member(z[index], index, ends, init[index])
            residuals.append(member.log_target(z[index], ends, base).unsqueeze(2) - log_q)
        if not residuals:
            return
        residual = torch.cat(residuals).flatten(0, 1)  # (N * H, Q)
        for k, q in enumerate(quantiles):
            if q != 0.5:
                self.calibration[k] = torch.quantile(residual[:, k], q)


class SmoothedPanel:
    """A panel as the smoothed model reads it: positive scaled values ``z`` ``(S, T)`` (left-aligned,
    each series held at its last value past its end), lengths ``(S,)``, the rows of the fitted
    coefficients (``index``, -1 for a series the model was not fitted on) and data-estimated
    initial log seasons ``(S, m)``."""

    def __init__(self, series: dict[str, np.ndarray], scaler: SeriesScaler, rows: dict[str, int], season: int
                 ) -> None:
        self.uids = list(series)
        scaled = [scaler.transform(uid, values) for uid, values in series.items()]
        width = max(len(v) for v in scaled)
        self.z = torch.tensor(np.stack([np.pad(v, (0, width - len(v)), mode="edge") for v in scaled]),
                              dtype=torch.float32)  # (S, T)
        self.lengths = torch.tensor([len(v) for v in scaled])
        self.index = torch.tensor([rows.get(uid, -1) for uid in self.uids])
        self.init = torch.tensor(np.stack([initial_log_season(v, season) for v in scaled]), dtype=torch.float32)
        self.weight = torch.tensor([mase_weight(v, season) for v in scaled], dtype=torch.float32)
        self.weight /= self.weight.mean()

    def windows(self, first: int, horizon: int, shortest: int = 3) -> list[tuple[Tensor, Tensor]]:
        """Per series, in time order: its row and every origin from ``first`` to ``length - horizon``;
        a series too short for that starts at ``length - horizon`` (at least ``shortest`` values in)."""
        out = []
        for row, n in enumerate(self.lengths.tolist()):
            ends = torch.arange(max(shortest, min(first, n - horizon)), n - horizon + 1)
            out.append((torch.full_like(ends, row), ends))
        return out


def mase_weight(z: np.ndarray, season: int) -> float:
    """``1 / mean |z_t - z_{t-m}|`` of positive scaled values ``z`` (mean 1), clipped to [0.05, 20]: how much
    MASE magnifies a relative error of the series (``m`` = 1 when the series is shorter than two seasons)."""
    m = season if len(z) > 2 * season else 1
    spread = float(np.mean(np.abs(z[m:] - z[:-m]))) if len(z) > m else 1.0
    return float(np.clip(1 / max(spread, 1e-6), 0.05, 20))


def pinball_log_loss(panel: SmoothedPanel, quantiles: Tensor, weighted: bool = False):
    """The trainer's ``loss_fn`` for one member: pinball loss in the net's log space over ``(rows, ends)``
    batches; ``weighted``: each window's loss times its series' :func:`mase_weight` (normalised to mean 1)."""
    def loss_fn(member: nn.Module, batch: tuple[Tensor, Tensor], state: object):
        rows, ends = batch
        z = panel.z[rows]  # (B, T)
        log_q, base = member(z, panel.index[rows], ends, panel.init[rows])
        target = member.log_target(z, ends, base)
        if not weighted:
            return pinball_loss(log_q, target, quantiles), None
        diff = target.unsqueeze(2) - log_q  # (B, H, Q)
        loss = torch.maximum(quantiles * diff, (quantiles - 1) * diff).mean(dim=(1, 2))
        return (loss * panel.weight[rows]).mean(), None

    return loss_fn


def fit_smoothed(task, groups: list[tuple[str, pd.DataFrame]], season: int) -> bool:
    """Build and train ``task.model`` (a :class:`SmoothedEnsemble`) on the series of ``groups``
    (``(uid, rows)``) long enough to train; returns whether any member held out windows.

    ``task`` is the :class:`~rnnkit.tasks.forecast.Forecaster` (its ``scaler`` fitted by
    :func:`positive_scaler`): each fitted series gets a row of coefficients (``series_rows``);
    each member holds out its own stretch of windows per series for early stopping and
    calibration (:func:`~rnnkit.data.series.holdout_fold`), starts from its own seed, and starts
    its seasonal indices from the data's classical decomposition.
    """
    series = {uid: group["y"].to_numpy(dtype=float) for uid, group in groups if len(group) >= task.min_points}
    task.series_rows = {uid: k for k, uid in enumerate(series)}
    task.num_features = 1, 0
    task.model = task.build_model()
    task.train_results = []
    cfg = task.config
    panel = SmoothedPanel(series, task.scaler, task.series_rows, season)
    windows = panel.windows(min(cfg.lookback, max(3, season)), cfg.horizon, shortest=task.min_input)
    quantiles = torch.tensor(cfg.quantiles)
    alpha, gamma = grid_coefficients(panel.z, panel.lengths, panel.init, season)
    held_out = []
    for k, member, minutes in task.member_budgets(task.model.members):
        train, stop, calibration = holdout_fold(windows, cfg.horizon, k)
        torch.manual_seed(cfg.seed + k)
        member.load_state_dict(SmoothedNet(cfg, len(series), season).state_dict())
        member.start_coefficients(alpha, gamma, panel.init)
        task.train(member, pinball_log_loss(panel, quantiles, cfg.mase_weight), train, stop, member=k, minutes=minutes,
                   seed=cfg.seed + k, eval_every=20, patience=cfg.patience if stop is not None else None)
        held_out.append(calibration)
    task.model.cpu().eval()
    if cfg.calibrate:
        task.model.calibrate(panel.z, panel.init, held_out, cfg.quantiles)
    return any(windows is not None for windows in held_out)


def combine_stats(quantiles: np.ndarray, panel: SmoothedPanel, config: ForecasterConfig, season: int) -> np.ndarray:
    """Move each series' quantiles ``(S, H, Q)`` (scaled units) by ``w (stats - median)``: the median becomes
    the weighted mean of the net's forecast and ``stats``, the mean of the Theta and damped-trend forecasts
    (:mod:`~rnnkit.tasks.forecast_stats`); the interval keeps its width."""
    median = quantiles[:, :, list(config.quantiles).index(0.5)]
    stats = []
    for k, n in enumerate(panel.lengths.tolist()):
        z = panel.z[k, :n].numpy().astype(float)
        stats.append(0.5 * (theta_forecast(z, config.horizon, season) + damped_forecast(z, config.horizon, season)))
    return quantiles + (config.stats_weight * (np.stack(stats) - median))[:, :, None]


@torch.no_grad()
def predict_smoothed(task, groups: list[tuple[str, pd.DataFrame]], fallback: dict[str, pd.DataFrame],
                     scaler: SeriesScaler, season: int) -> pd.DataFrame:
    """The forecast frame of ``groups`` (``(uid, rows)``): the series not in ``fallback`` (their seasonal-naive
    rows) forecast in one batch, quantile columns in the series' own units."""
    series = {uid: group["y"].to_numpy(dtype=float) for uid, group in groups if uid not in fallback}
    forecasts = {}
    if series:
        panel = SmoothedPanel(series, scaler, task.series_rows, season)
        quantiles = task.model(panel.z, panel.index, panel.lengths, panel.init).numpy()  # (S, H, Q)
        if task.config.stats_weight > 0:
            quantiles = combine_stats(quantiles, panel, task.config, season)
        forecasts = {uid: scaler.inverse(uid, quantiles[k]) for k, uid in enumerate(panel.uids)}
    cfg, rows = task.config, []
    for uid, group in groups:
        if uid in fallback:
            rows.append(fallback[uid])
            continue
        dates = future_dates(group["ds"].iloc[-1], task.freq, cfg.horizon)
        rows.append(pd.DataFrame({"unique_id": uid, "ds": dates, **{
            quantile_column(q): forecasts[uid][:, k] for k, q in enumerate(cfg.quantiles)}}))
    return pd.concat(rows, ignore_index=True)

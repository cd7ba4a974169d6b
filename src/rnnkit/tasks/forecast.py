"""Forecasting: a global LSTM/GRU/RNN over many series, multi-horizon quantiles, covariates.

A thin estimator (``fit`` / ``predict`` / ``backtest`` / ``save``) on the task contract
(:mod:`rnnkit.tasks.base`) over the torch modules of :mod:`rnnkit.tasks.forecast_model`;
evaluation and baselines live in :mod:`rnnkit.tasks.forecast_eval`, and the JSON face
(``predict_json``) in :mod:`rnnkit.tasks.forecast_json`.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ..data.csv import parse_csv, parse_dates
from ..data.series import (SeriesScaler, calendar_features, future_dates, holdout_fold, holdout_span,
                           infer_frequency, season_length, split_series, validate_long_frame)
from ..errors import DataError
from ..inspection import InspectionInput, parse_series
from ..layers import Recurrent
from .base import Task
from .forecast_es import SmoothedEnsemble, fit_smoothed, positive_scaler, predict_smoothed
from .forecast_eval import BacktestResult, backtest, naive_forecasts
from .forecast_json import (REQUEST_SCHEMA, RESPONSE_SCHEMA, forecasts_json, plain_forecasts, plain_forecasts_many,
                            request_frames)
from .forecast_model import PANEL, ForecastEnsemble, ForecasterConfig, ForecastNet, pinball_loss, quantile_column

log = logging.getLogger("rnnkit")

MODEL_TYPE = "forecaster"
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]  # y (T,), past (T, P + 1: covariates, observed), known (T, K)


class Forecaster(Task):
    """A global recurrent forecaster: fit on a long frame, forecast ``horizon`` steps per series.

    Targets are scaled twice: per series (mean and standard deviation of its history,
    kept in the bundle) and per window (the last input value subtracted), so one model
    serves series of any level and follows trends past the training range. Covariates
    are standardised per column. Calendar features (sin/cos of month, week, ...) come
    from the timestamps, so they are known for the horizon too.

    Example::

        fc = Forecaster(horizon=11).fit(frame)
        fc.predict()            # unique_id, ds, y_hat, y_hat_q10, y_hat_q90
        fc.save("sunspots.rnnkit")
    """

    name = "forecast"
    model_type = MODEL_TYPE
    config_class = ForecasterConfig
    request_schema = REQUEST_SCHEMA
    response_schema = RESPONSE_SCHEMA
    config: ForecasterConfig

    def __init__(self, config: Optional[ForecasterConfig] = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.scaler: Optional[SeriesScaler] = None
        self.covariate_stats: dict[str, tuple[float, float]] = {}  # per covariate column: mean, std
        self.freq: Optional[str] = None
        self.num_features: tuple[int, int] = (0, 0)  # past channels P + 1 (covariates, observed), known features K
        self.history: dict[str, dict[str, Any]] = {}  # per series: last_ds and the last lookback rows
        self.too_short: list[str] = []  # series of the last fit too short to train on (fewer than min_points)
        self.held_out = True  # whether the last fit held out windows (early stopping, interval calibration)
        self.fallback: dict[str, str] = {}  # series of the last predict forecast by "seasonal_naive" or "naive"
        self.series_rows: dict[str, int] = {}  # model="esrnn": each fitted series' row of smoothing coefficients

    @property
    def covariates(self) -> tuple[str, ...]:
        return self.config.past_covariates + self.config.future_covariates

    # --------------------------------------------------------------------- training

    def _fit(self, frame: pd.DataFrame) -> None:
        """Train on every series of a long frame (``unique_id, ds, y`` and the covariate columns)."""
        with torch_threads(self.config.threads):
            self._fit_frame(frame)

    def _fit_frame(self, frame: pd.DataFrame) -> None:
        cfg = self.config
        frame = validate_long_frame(frame, covariates=self.covariates)
        self.freq = self._common_frequency(frame)
        if cfg.model == "auto":  # settled here, so the bundle records the model it holds
            panel = frame["unique_id"].nunique() >= PANEL and not self.covariates
            self.config = cfg = replace(cfg, model="esrnn" if panel else "rnn")  # its None options settle too
        self.scaler = self._fit_scaler(split_series(frame))
        self.covariate_stats = {c: (float(frame[c].mean()), float(frame[c].std()) or 1.0) for c in self.covariates}
        groups = [(str(uid), group) for uid, group in frame.groupby("unique_id", sort=False)]
        self.too_short = [uid for uid, group in groups if len(group) < self.min_points]
        if cfg.model == "esrnn":
            return self._fit_smoothed(groups)
        windows = [self._windows(*self._arrays(uid, group, pad=cfg.lookback - self.min_input))  # in time order
                   for uid, group in groups if len(group) >= self.min_points]
        if not windows:
            raise DataError(f"every series is shorter than one season + horizon = {self.min_points} points, the "
                            f"least that trains; use a shorter horizon (or forecast them by seasonal naive)")
        span = holdout_span(cfg.horizon)
        self.held_out = max(len(w[0]) for w in windows) > span
        if not self.held_out:
            log.warning("no series has the %d points (one season + horizon + %d) needed to hold out windows: "
                        "trained for max_steps without early stopping, intervals not calibrated",
                        self.holdout_points, span)
        self.num_features = windows[0][1].size(2), windows[0][2].size(2)
        self.model = self.build_model()
        self.train_results = []
        calibration = [self._train_member(k, member, minutes, windows)
                       for k, member, minutes in self.member_budgets(self.model.members)]
        self.model.cpu().eval()
        if cfg.calibrate:
            self.model.calibrate(calibration, cfg.quantiles)
        self.history = {uid: self._tail_of(group) for uid, group in groups}
        members = [{"best_val_loss": r.best_val_loss, "steps": r.steps, "stopped": r.stopped}
                   for r in self.train_results]
        self.metrics = {**self.training_summary(), "members": members, "held_out": self.held_out}

    @property
    def min_input(self) -> int:
        """The fewest observed values a window may hold: one season (at least 3), at most the lookback.

        Windows of a series start once it has this many values: the lookback before them
        is padded with zeros and flagged as unobserved (the last channel of ``past``), as
        NeuralForecast pads, so a series shorter than ``lookback + horizon`` still trains.
        """
        if self.config.model == "esrnn":  # its smoothing carries the season; three values start a window
            return min(self.config.lookback, 3)
        return min(self.config.lookback, max(3, season_length(self.freq)))

    @property
    def min_points(self) -> int:
        """The shortest series the model trains on and forecasts; shorter ones get seasonal naive."""
        return self.min_input + self.config.horizon

    @property
    def holdout_points(self) -> int:
        """The shortest series that holds out windows for early stopping and calibration."""
        return self.min_points + holdout_span(self.config.horizon)

    def _fit_scaler(self, series: dict[str, np.ndarray]) -> SeriesScaler:
        """Per-series scaling: standardised, or for ``model="esrnn"`` positive with mean 1."""
        return positive_scaler(series) if self.config.model == "esrnn" else SeriesScaler.fit(series)

    def _fit_smoothed(self, groups: list[tuple[str, pd.DataFrame]]) -> None:
        """``model="esrnn"``: train on the series long enough (see :mod:`rnnkit.tasks.forecast_es`)."""
        series = {uid: group["y"].to_numpy(dtype=float) for uid, group in groups if len(group) >= self.min_points}
        if not series:
            raise DataError(f"every series is shorter than one season + horizon = {self.min_points} points, the "
                            f"least that trains; use a shorter horizon (or forecast them by seasonal naive)")
        self.series_rows = {uid: k for k, uid in enumerate(series)}
        self.num_features = 1, 0
        self.model = self.build_model()
        self.train_results = []
        held_out = fit_smoothed(self, series, season_length(self.freq))
        self.held_out = any(windows is not None for windows in held_out)
        self.history = {uid: self._tail_of(group) for uid, group in groups}
        members = [{"best_val_loss": r.best_val_loss, "steps": r.steps, "stopped": r.stopped}
                   for r in self.train_results]
        self.metrics = {**self.training_summary(), "members": members, "held_out": self.held_out}

    def _train_member(self, k: int, member: nn.Module, minutes: Optional[float],
                      windows: list[tuple[Tensor, ...]]) -> Optional[tuple[Tensor, ...]]:
        """Train ensemble member ``k`` on its fold of ``windows``; return its calibration windows.

        Each member holds out its own purged stretch per series (see :func:`holdout_fold`)
        and starts from its own seed, so the members differ in data and initial weights.
        """
        cfg = self.config
        train, stop, calibration = holdout_fold(windows, cfg.horizon, k)
        torch.manual_seed(cfg.seed + k)
        member.load_state_dict(ForecastNet(cfg, *self.num_features).state_dict())
        quantiles = torch.tensor(cfg.quantiles)

        def loss_fn(model: nn.Module, batch: tuple[Tensor, ...], state: Any):
            y, past, known, target = batch
            return pinball_loss(model(y, past, known), target, quantiles.to(y.device)), None

        self.train(member, loss_fn, train, stop, member=k, minutes=minutes, seed=cfg.seed + k, eval_every=20,
                   patience=cfg.patience if stop is not None else None)
        return calibration

    def build_model(self) -> nn.Module:
        if self.config.model == "esrnn":
            return SmoothedEnsemble(self.config, len(self.series_rows), season_length(self.freq))
        return ForecastEnsemble(self.config, *self.num_features)

    def preprocessing(self) -> dict[str, Any]:
        return {"scaler": self.scaler.to_dict(), "covariates": self.covariate_stats, "freq": self.freq,
                "num_features": list(self.num_features), "series": self.history, "rows": list(self.series_rows)}

    def restore(self, state: dict[str, Any]) -> None:
        num_past, num_known = (int(n) for n in state["num_features"])
        if num_past != len(self.config.past_covariates) + 1:
            # Bundles written before short series were padded read no "observed" channel.
            raise ValueError(f"its model reads {num_past} past channel(s), this rnnkit's reads "
                             f"{len(self.config.past_covariates) + 1} (the covariates and the observed flag)")
        self.num_features = num_past, num_known
        self.scaler = SeriesScaler.from_dict(state["scaler"])
        self.covariate_stats = {c: (float(m), float(s)) for c, (m, s) in state["covariates"].items()}
        self.freq, self.history = state["freq"], state["series"]
        self.series_rows = {uid: k for k, uid in enumerate(state.get("rows", []))}

    def _common_frequency(self, frame: pd.DataFrame) -> str:
        freqs = {infer_frequency(g["ds"], f"series {uid!r}") for uid, g in frame.groupby("unique_id", sort=False)}
        if len(freqs) > 1:
            raise DataError(f"series have different frequencies ({', '.join(sorted(freqs))}); one model needs "
                            f"one frequency: resample them or fit one forecaster per frequency")
        return freqs.pop()

    def _arrays(self, uid: str, group: pd.DataFrame, future: Optional[pd.DataFrame] = None, pad: int = 0,
                scaler: Optional[SeriesScaler] = None) -> Arrays:
        """Scaled target ``(T,)``, past channels ``(T, P + 1)`` and known features ``(T [+ H], K)``
        of one series' rows (see :meth:`series_arrays`), scaled by ``scaler`` (default the
        training one); with ``future`` (the horizon's rows), the known features also cover the horizon."""
        cfg = self.config
        ds = pd.DatetimeIndex(group["ds"])
        futr = self._scaled(group, cfg.future_covariates)
        if future is not None:
            ds = ds.append(pd.DatetimeIndex(future["ds"]))
            futr = np.concatenate([futr, self._scaled(future, cfg.future_covariates)])
        y = (scaler or self.scaler).transform(uid, group["y"].to_numpy(dtype=float))
        known = np.concatenate([self.calendar(ds), futr], axis=1)
        return self.series_arrays(y, self._scaled(group, cfg.past_covariates), known, pad)

    def calendar(self, ds: pd.DatetimeIndex) -> np.ndarray:
        """The calendar features of timestamps ``ds`` ``(T, K)``; ``K = 0`` when the model reads none."""
        return calendar_features(ds, self.freq) if self.config.calendar else np.zeros((len(ds), 0))

    def series_arrays(self, y: np.ndarray, past: np.ndarray, known: np.ndarray, pad: int) -> Arrays:
        """The model's inputs from plain arrays: the scaled target ``y`` ``(T,)``, scaled past
        covariates ``(T, P)`` and the known features ``(T [+ H], K)`` (:meth:`calendar` of the
        timestamps, then the scaled future covariates).

        ``pad`` rows of zeros go before the series (in every channel, calendar included); the
        last past channel is 1 where a value was observed and 0 on the padding.
        """
        zeros = lambda a: np.concatenate([np.zeros((pad, *a.shape[1:])), a])  # noqa: E731
        observed = zeros(np.ones((len(y), 1)))
        past = np.concatenate([zeros(past), observed], axis=1)
        return zeros(y), past, zeros(known)

    def _scaled(self, frame: pd.DataFrame, columns: tuple[str, ...]) -> np.ndarray:
        values = frame[list(columns)].to_numpy(dtype=float, copy=True).reshape(len(frame), len(columns))
        for j, column in enumerate(columns):
            mean, std = self.covariate_stats[column]
            values[:, j] = (values[:, j] - mean) / std
        return values

    def _windows(self, y: np.ndarray, past: np.ndarray, known: np.ndarray) -> tuple[Tensor, ...]:
        """All windows of one series: y ``(N, L)``, past ``(N, L, P + 1)``, known ``(N, L+H, K)``, target ``(N, H)``.

        Window ``i`` reads rows ``i .. i+L-1`` and forecasts rows ``i+L .. i+L+H-1``.
        """
        lookback, span = self.config.lookback, self.config.lookback + self.config.horizon
        as_windows = lambda a: torch.as_tensor(a, dtype=torch.float32).unfold(0, span, 1)  # (N, [F,] L+H)
        y_w, past_w, known_w = as_windows(y), as_windows(past), as_windows(known)
        past_w = past_w[:, :, :lookback].transpose(1, 2)  # (N, L, P + 1)
        inputs, targets, observed = y_w[:, :lookback], y_w[:, lookback:], past_w[:, :, -1]
        level, scale = self._window_norm(inputs, observed)
        return (inputs - level) / scale * observed, past_w, known_w.transpose(1, 2), (targets - level) / scale

    def _window_norm(self, inputs: Tensor, observed: Tensor) -> tuple[Tensor, Tensor]:
        """Per window ``(N, L)``: the level (last value) and, with ``window_scale``, the spread, both ``(N, 1)``.

        Dividing by the window's own spread (at least 0.1 series standard deviations, so a
        flat stretch does not blow up) lets one model serve a season whose amplitude grows
        with the level, as RevIN and NeuralForecast's per-window scalers do. The spread is
        taken over the observed values only (``observed`` is 1 there, 0 on padding).
        """
        level = inputs[:, -1:]
        if not self.config.window_scale:
            return level, torch.ones_like(level)
        count = observed.sum(dim=1, keepdim=True)
        mean = (inputs * observed).sum(dim=1, keepdim=True) / count
        variance = ((inputs - mean) ** 2 * observed).sum(dim=1, keepdim=True) / (count - 1).clamp_min(1)
        return level, variance.sqrt().clamp_min(0.1)

    def _tail_of(self, group: pd.DataFrame) -> dict[str, Any]:
        """What ``predict`` needs of a series: its length and its last ``lookback`` (or season) rows."""
        # The smoothed model re-runs its recursion from the start of each series: it keeps all of it.
        tail = group if self.config.model == "esrnn" else group.iloc[-max(self.config.lookback,
                                                                              season_length(self.freq)):]
        return {"last_ds": tail["ds"].iloc[-1].isoformat(), "points": len(group), "y": tail["y"].tolist(),
                **{c: tail[c].tolist() for c in self.covariates}}

    def history_frame(self) -> pd.DataFrame:
        """The end of each training series kept in the model (its last ``lookback`` or season rows)."""
        frames = []
        for uid, info in self.history.items():
            dates = pd.date_range(end=pd.Timestamp(info["last_ds"]), periods=len(info["y"]), freq=self.freq)
            frames.append(pd.DataFrame({"unique_id": uid, "ds": dates, "y": info["y"],
                                        **{c: info[c] for c in self.covariates}}))
        return pd.concat(frames, ignore_index=True)

    # ------------------------------------------------------------------- prediction

    def predict(self, frame: Optional[pd.DataFrame] = None, future: Optional[pd.DataFrame] = None) -> pd.DataFrame:
        """Forecast the ``horizon`` steps after each series ends.

        Without ``frame``, continues the series seen in training; with it, forecasts after
        the end of each series in ``frame`` (new series are scaled by their own history).
        ``future`` holds the future covariates for the horizon (``unique_id, ds`` and the
        ``future_covariates`` columns, ``horizon`` rows per series); it is needed exactly
        when the model has future covariates.

        Returns columns ``unique_id, ds, y_hat`` and ``y_hat_qNN`` per other quantile. A series
        shorter than ``min_points`` (one season + horizon) is forecast by seasonal naive (naive
        below one season), without an interval (NaN), and named in ``self.fallback``.
        """
        self.require_fitted()
        cfg = self.config
        scaler = self.scaler
        if frame is None:
            frame = self.history_frame()
            points = {uid: info["points"] for uid, info in self.history.items()}
        else:
            frame = validate_long_frame(frame, covariates=self.covariates)
            if self._common_frequency(frame) != self.freq:
                raise DataError(f"the series are at frequency {self._common_frequency(frame)}, but this model "
                                f"forecasts {self.freq} series; resample them to {self.freq}")
            series = split_series(frame)
            known = {uid: self.scaler.stats[uid] for uid in series if uid in self.scaler.stats}
            scaler = SeriesScaler({**self._fit_scaler(series).stats, **known})
            points = {uid: len(values) for uid, values in series.items()}
        groups = [(str(uid), group) for uid, group in frame.groupby("unique_id", sort=False)]
        short = [uid for uid, _ in groups if points[uid] < self.min_points]
        self.fallback = {}
        fallback = self._fallback(frame[frame["unique_id"].isin(short)]) if short else {}
        if cfg.model == "esrnn":
            with torch_threads(cfg.threads):
                return predict_smoothed(self, groups, fallback, scaler, season_length(self.freq))
        model = [(uid, group.iloc[-cfg.lookback:]) for uid, group in groups if uid not in fallback]
        inputs = [self._window_inputs(uid, window, future, scaler) for uid, window in model]
        values = self.forecast_windows([arrays for _, arrays in inputs], [scaler.stats[uid] for uid, _ in model])
        forecasts = {uid: pd.DataFrame({"unique_id": uid, "ds": dates, **{
                         quantile_column(q): v[:, k] for k, q in enumerate(cfg.quantiles)}})
                     for (uid, _), (dates, _), v in zip(model, inputs, values)}
        return pd.concat([fallback.get(uid, forecasts.get(uid)) for uid, _ in groups], ignore_index=True)

    def _fallback(self, frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
        """Seasonal-naive forecasts (naive below one season) of the series too short for the model.

        Their interval columns are NaN: no interval is claimed. ``self.fallback`` names the
        method used per series, so callers can say how many series were not the model's.
        """
        season = season_length(self.freq)
        forecast = naive_forecasts(frame, self.config.horizon, season, self.freq)["seasonal_naive"]
        columns = [quantile_column(q) for q in self.config.quantiles]
        forecast = forecast.assign(**{c: np.nan for c in columns if c != "y_hat"})[["unique_id", "ds", *columns]]
        lengths = frame.groupby("unique_id", sort=False).size()
        self.fallback = {str(uid): "seasonal_naive" if n >= season else "naive" for uid, n in lengths.items()}
        return {str(uid): rows.reset_index(drop=True) for uid, rows in forecast.groupby("unique_id", sort=False)}

    def _window_inputs(self, uid: str, window: pd.DataFrame, future: Optional[pd.DataFrame],
                       scaler: SeriesScaler) -> tuple[pd.DatetimeIndex, Arrays]:
        """The forecast dates after ``window`` (a series' last rows) and the model's inputs for it."""
        cfg = self.config
        dates = future_dates(window["ds"].iloc[-1], self.freq, cfg.horizon)
        horizon_rows = self._future_rows(uid, dates, future)
        return dates, self._arrays(uid, window, horizon_rows, pad=cfg.lookback - len(window), scaler=scaler)

    def forecast_windows(self, inputs: list[Arrays], stats: list[tuple[float, float]]) -> list[np.ndarray]:
        """Every series' quantiles ``(H, Q)`` in its own units, from one batched forward.

        ``inputs`` come from :meth:`series_arrays` (all ``lookback`` long, padded), ``stats`` are each
        series' scaler mean and standard deviation. One batch of all series rather than one forward
        per series, and for a few series the ensemble fused into one network
        (``ForecastEnsemble.for_inference``): the recurrence's fixed and per-step overheads are paid
        once, not per series and member.
        """
        if not inputs:
            return []
        stack = lambda k: torch.from_numpy(np.stack([a[k] for a in inputs], dtype=np.float32))  # noqa: E731
        y, past, known = stack(0), stack(1), stack(2)
        with torch.inference_mode(), torch_threads(self.config.threads):
            level, scale = self._window_norm(y, past[:, :, -1])
            model = self.model.for_inference(len(y))
            out = model((y - level) / scale * past[:, :, -1], past, known)  # (B, H, Q)
            quantiles = (out * scale.unsqueeze(2) + level.unsqueeze(2)).numpy()  # (B, H, Q)
        return [values * std + mean for values, (mean, std) in zip(quantiles, stats)]

    def _future_rows(self, uid: str, dates: pd.DatetimeIndex, future: Optional[pd.DataFrame]) -> pd.DataFrame:
        """The horizon's rows with the future covariates of series ``uid``."""
        columns = self.config.future_covariates
        if not columns:
            return pd.DataFrame({"ds": dates})
        if future is None:
            raise DataError(f"this model uses future covariates ({', '.join(columns)}); pass their values for "
                            f"the {len(dates)} forecast steps (future=... / --future FILE)")
        rows = future[future["unique_id"].astype(str) == uid].assign(ds=lambda f: pd.to_datetime(f["ds"]))
        rows = rows.set_index("ds").reindex(dates)
        missing = [c for c in columns if c not in rows.columns]
        if missing or rows[list(columns)].isna().any().any():
            raise DataError(f"future covariates for series {uid!r} must give {', '.join(columns)} at each of "
                            f"{dates[0].date()} .. {dates[-1].date()}; some are missing")
        return rows.rename_axis("ds").reset_index()

    def backtest(self, frame: pd.DataFrame, windows: int = 3, season_length: int = 1,
                 baselines: tuple[str, ...] = ("naive", "seasonal_naive", "auto")) -> BacktestResult:
        """Rolling-origin evaluation of forecasters with this one's config (this one is left as it is);
        see :func:`rnnkit.tasks.forecast_eval.backtest`."""
        return backtest(self, frame, windows=windows, season_length=season_length, baselines=baselines)

    def predict_json(self, request: dict[str, Any]) -> dict[str, Any]:
        """Forecast the series of a ``request`` (see :mod:`rnnkit.tasks.forecast_json` for both shapes)."""
        plain = plain_forecasts(self, request)
        if plain is not None:
            return plain
        frame, future = request_frames(self, request)
        return forecasts_json(self, self.predict(frame, future=future), request)

    def predict_many(self, requests: Sequence[Any]) -> list[Any]:
        """Plain requests (see :mod:`rnnkit.tasks.forecast_json`) answered in one forward; a turn
        holding any other is answered request by request (see :meth:`Task.predict_many`)."""
        if len(requests) > 1 and all(self.refusal(request) is None for request in requests):
            try:
                answers = plain_forecasts_many(self, list(requests))
            except Exception:  # a failure is answered request by request, each on its own
                answers = None
            if answers is not None:
                return answers
        return super().predict_many(requests)

    # -------------------------------------------------------------------- inspection

    def inspection_recurrent(self) -> Recurrent:
        """The first ensemble member's encoder, for ``rnnkit inspect`` (see :class:`rnnkit.inspection.Inspectable`)."""
        self.require_fitted()
        member = self.model.members[0]
        return member.net.encoder if self.config.model == "esrnn" else member.encoder

    def inspection_input(self, source: str) -> InspectionInput:
        """A series as the encoder reads a window: scaled, relative to its last value, with calendar features.

        ``source``: numbers, or a CSV with a value column (``y`` or ``value``) and, when the
        model reads calendar features, a date column (``ds``, ``date`` or the first one).
        """
        self.require_fitted()
        if self.covariates:
            raise DataError(f"inspect feeds the series alone, but this forecaster also reads covariates "
                            f"{', '.join(self.covariates)}; inspect a forecaster trained without them")
        values = parse_series(source, "forecaster input")
        scaled = SeriesScaler.fit({"input": values}).transform("input", values)
        y = torch.as_tensor(scaled, dtype=torch.float32)[None]  # (1, T)
        observed = torch.ones_like(y)
        level, scale = self._window_norm(y, observed)
        channels = [((y - level) / scale).unsqueeze(2), observed.unsqueeze(2)]  # (1, T, 1) each: y, observed flag
        if self.config.calendar:
            calendar = calendar_features(_dates_in(source, len(values)), self.freq)  # (T, K)
            channels.append(torch.as_tensor(calendar, dtype=torch.float32)[None])
        return InspectionInput(torch.cat(channels, dim=2), [f"{v:.4g}" for v in values], {"value": values},
                               "forecaster")


@contextmanager
def torch_threads(count: Optional[int]):
    """Run the block with ``count`` torch threads (``None``: leave them), then restore the previous number."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _dates_in(source: str, count: int) -> pd.DatetimeIndex:
    """The ``count`` dates of a series CSV given as text: column ``ds``, ``date``, or the first."""
    hint = "this forecaster reads calendar features: give a CSV with a date column (ds) and a value column (y)"
    try:
        frame = parse_csv(source, source="the input")
        column = next((c for c in ("ds", "date") if c in frame.columns), frame.columns[0])
        dates = parse_dates(frame[column], source="the input", column=column)
    except DataError:
        raise DataError(hint) from None
    if len(dates) != count:
        raise DataError(hint)
    return pd.DatetimeIndex(dates)


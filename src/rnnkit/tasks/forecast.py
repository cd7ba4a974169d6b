"""Forecasting: a global LSTM/GRU/RNN over many series, multi-horizon quantiles, covariates.

A thin estimator (``fit`` / ``predict`` / ``backtest`` / ``save``) on the task contract
(:mod:`rnnkit.tasks.base`) over the torch modules of :mod:`rnnkit.tasks.forecast_model`; the
windowed net's inputs are cut in :mod:`rnnkit.tasks.forecast_inputs`, the ES-RNN-style model
(``model="esrnn"``) trains and predicts in :mod:`rnnkit.tasks.forecast_es`, evaluation and
baselines live in :mod:`rnnkit.tasks.forecast_eval`, and the JSON face (``predict_json``) in
:mod:`rnnkit.tasks.forecast_json`.
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

from ..data.series import (SeriesScaler, calendar_features, future_dates, holdout_fold, holdout_span, infer_frequency,
                           season_length, split_series, validate_long_frame)
from ..errors import DataError
from ..inspection import InspectionInput
from ..layers import Recurrent
from .base import Task
from .forecast_es import SmoothedEnsemble, fit_smoothed, positive_scaler, predict_smoothed
from .forecast_eval import BacktestResult, backtest, naive_forecasts
from .forecast_inputs import (Arrays, cut_windows, horizon_rows, padded_arrays, scaled_columns, series_input,
                              window_norm)
from .forecast_json import (REQUEST_SCHEMA, RESPONSE_SCHEMA, forecasts_json, plain_forecasts, plain_forecasts_many,
                            request_frames)
from .forecast_model import PANEL, ForecastEnsemble, ForecasterConfig, ForecastNet, pinball_loss, quantile_column

log = logging.getLogger("rnnkit")

MODEL_TYPE = "forecaster"


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
        if len(self.too_short) == len(groups):
            raise DataError(f"every series is shorter than one season + horizon = {self.min_points} points, the "
                            f"least that trains; use a shorter horizon (or forecast them by seasonal naive)")
        if cfg.model == "esrnn":
            self.held_out = fit_smoothed(self, groups, season_length(self.freq))
        else:
            self._fit_windows(groups)
        self.history = {uid: self._tail_of(group) for uid, group in groups}
        members = [{"best_val_loss": r.best_val_loss, "steps": r.steps, "stopped": r.stopped}
                   for r in self.train_results]
        self.metrics = {**self.training_summary(), "members": members, "held_out": self.held_out}

    def _fit_windows(self, groups: list[tuple[str, pd.DataFrame]]) -> None:
        """``model="rnn"``: train the ensemble on every window of the series long enough to train."""
        cfg = self.config
        windows = [self._windows(*self._arrays(uid, group, pad=cfg.lookback - self.min_input))  # in time order
                   for uid, group in groups if len(group) >= self.min_points]
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
        futr = scaled_columns(group, cfg.future_covariates, self.covariate_stats)
        if future is not None:
            ds = ds.append(pd.DatetimeIndex(future["ds"]))
            futr = np.concatenate([futr, scaled_columns(future, cfg.future_covariates, self.covariate_stats)])
        y = (scaler or self.scaler).transform(uid, group["y"].to_numpy(dtype=float))
        known = np.concatenate([self.calendar(ds), futr], axis=1)
        return self.series_arrays(y, scaled_columns(group, cfg.past_covariates, self.covariate_stats), known, pad)

    def calendar(self, ds: pd.DatetimeIndex) -> np.ndarray:
        """The calendar features of timestamps ``ds`` ``(T, K)``; ``K = 0`` when the model reads none."""
        return calendar_features(ds, self.freq) if self.config.calendar else np.zeros((len(ds), 0))

    def series_arrays(self, y: np.ndarray, past: np.ndarray, known: np.ndarray, pad: int) -> Arrays:
        """The model's inputs from plain arrays (see :func:`~rnnkit.tasks.forecast_inputs.padded_arrays`)."""
        return padded_arrays(y, past, known, pad)

    def _windows(self, y: np.ndarray, past: np.ndarray, known: np.ndarray) -> tuple[Tensor, ...]:
        """All windows of one series (see :func:`~rnnkit.tasks.forecast_inputs.cut_windows`)."""
        return cut_windows(y, past, known, self.config)

    def _window_norm(self, inputs: Tensor, observed: Tensor) -> tuple[Tensor, Tensor]:
        """Per window its level and spread (see :func:`~rnnkit.tasks.forecast_inputs.window_norm`)."""
        return window_norm(inputs, observed, self.config.window_scale)

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
        horizon = horizon_rows(uid, dates, future, cfg.future_covariates)
        return dates, self._arrays(uid, window, horizon, pad=cfg.lookback - len(window), scaler=scaler)

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
        return series_input(source, self.freq, self.config)


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

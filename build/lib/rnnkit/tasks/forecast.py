"""Forecasting: a global LSTM/GRU/RNN over many series, multi-horizon quantiles, covariates.

A thin estimator (``fit`` / ``predict`` / ``backtest`` / ``save``) over the torch modules of
:mod:`rnnkit.tasks.forecast_model`; evaluation and baselines live in
:mod:`rnnkit.tasks.forecast_eval`.
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ..bundle import Bundle, load_weights, register, save_bundle
from ..data.series import (SeriesScaler, calendar_features, check_length, future_dates, infer_frequency,
                           split_series, validate_long_frame)
from ..errors import DataError, RnnkitError
from ..inspection import InspectionInput, parse_series
from ..layers import Recurrent
from ..training import TrainConfig, TrainResult, budget_shares, fit
from .forecast_model import ForecastEnsemble, ForecasterConfig, ForecastNet, pinball_loss, quantile_column

MODEL_TYPE = "forecaster"
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]  # y (T,), past (T, P), known (T, K)


class Forecaster:
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

    def __init__(self, config: Optional[ForecasterConfig] = None, **options: Any) -> None:
        self.config = config or ForecasterConfig(**options)
        self.model: Optional[ForecastEnsemble] = None
        self.scaler: Optional[SeriesScaler] = None
        self.covariate_stats: dict[str, tuple[float, float]] = {}  # per covariate column: mean, std
        self.freq: Optional[str] = None
        self.num_features: tuple[int, int] = (0, 0)  # past covariates P, known-future features K
        self.history: dict[str, dict[str, Any]] = {}  # per series: last_ds and the last lookback rows
        self.train_results: list[TrainResult] = []

    @property
    def covariates(self) -> tuple[str, ...]:
        return self.config.past_covariates + self.config.future_covariates

    # --------------------------------------------------------------------- training

    def fit(self, frame: pd.DataFrame) -> "Forecaster":
        """Train on every series of a long frame (``unique_id, ds, y`` and the covariate columns)."""
        with torch_threads(self.config.threads):
            return self._fit(frame)

    def _fit(self, frame: pd.DataFrame) -> "Forecaster":
        cfg = self.config
        frame = validate_long_frame(frame, covariates=self.covariates)
        series = split_series(frame)
        check_length(series, cfg.lookback + cfg.horizon, "one training window (lookback + horizon)")
        if max(len(v) for v in series.values()) < cfg.lookback + 2 * cfg.horizon:
            raise DataError(f"no series has lookback + 2 x horizon = {cfg.lookback + 2 * cfg.horizon} points, "
                            f"needed to train and validate; use a shorter lookback or horizon")
        self.freq = self._common_frequency(frame)
        self.scaler = SeriesScaler.fit(series)
        self.covariate_stats = {c: (float(frame[c].mean()), float(frame[c].std()) or 1.0) for c in self.covariates}
        windows = [self._windows(*self._arrays(str(uid), group))  # per series, in time order
                   for uid, group in frame.groupby("unique_id", sort=False)]
        num_past, num_known = self.num_features = windows[0][1].size(2), windows[0][2].size(2)
        self.model = ForecastEnsemble(cfg, num_past, num_known)
        self.train_results, held_out = [], []
        for k, (member, budget) in enumerate(zip(self.model.members, budget_shares(cfg.minutes, cfg.ensemble))):
            train_data, val_data = blocked_fold(windows, cfg.horizon, k, cfg.purge)
            torch.manual_seed(cfg.seed + k)
            member.load_state_dict(ForecastNet(cfg, num_past, num_known).state_dict())
            self.train_results.append(self._train_member(member, train_data, val_data, cfg.seed + k, budget))
            held_out.append(val_data)
        self.model.cpu().eval()
        if cfg.calibrate:
            self.model.calibrate(held_out, cfg.quantiles)
        self.history = {str(uid): self._tail_of(group) for uid, group in frame.groupby("unique_id", sort=False)}
        return self

    def _train_member(self, member: nn.Module, train: tuple[Tensor, ...], val: Optional[tuple[Tensor, ...]],
                      seed: int, minutes: Optional[float]) -> TrainResult:
        cfg = self.config
        quantiles = torch.tensor(cfg.quantiles)

        def loss_fn(model: nn.Module, batch: tuple[Tensor, ...], state: Any):
            y, past, known, target = batch
            return pinball_loss(model(y, past, known), target, quantiles.to(y.device)), None

        steps_per_epoch = -(-len(train[0]) // cfg.batch_size)
        train_config = TrainConfig(epochs=-(-cfg.max_steps // steps_per_epoch), max_steps=cfg.max_steps,
                                   minutes=minutes, batch_size=cfg.batch_size, lr=cfg.lr,
                                   patience=cfg.patience if val is not None else None, eval_every=20, seed=seed,
                                   progress=cfg.progress)
        return fit(member, loss_fn, train, val, train_config)

    def _common_frequency(self, frame: pd.DataFrame) -> str:
        freqs = {infer_frequency(g["ds"], f"series {uid!r}") for uid, g in frame.groupby("unique_id", sort=False)}
        if len(freqs) > 1:
            raise DataError(f"series have different frequencies ({', '.join(sorted(freqs))}); one model needs "
                            f"one frequency: resample them or fit one forecaster per frequency")
        return freqs.pop()

    def _arrays(self, uid: str, group: pd.DataFrame, future: Optional[pd.DataFrame] = None) -> Arrays:
        """Scaled target ``(T,)``, past covariates ``(T, P)`` and known features ``(T [+ H], K)``.

        With ``future`` (the horizon's rows), the known features also cover the horizon.
        """
        cfg = self.config
        y = self.scaler.transform(uid, group["y"].to_numpy(dtype=float))
        past = self._scaled(group, cfg.past_covariates)
        ds = pd.DatetimeIndex(group["ds"])
        futr = self._scaled(group, cfg.future_covariates)
        if future is not None:
            ds = ds.append(pd.DatetimeIndex(future["ds"]))
            futr = np.concatenate([futr, self._scaled(future, cfg.future_covariates)])
        calendar = calendar_features(ds, self.freq) if cfg.calendar else np.zeros((len(ds), 0))
        return y, past, np.concatenate([calendar, futr], axis=1)

    def _scaled(self, frame: pd.DataFrame, columns: tuple[str, ...]) -> np.ndarray:
        values = frame[list(columns)].to_numpy(dtype=float, copy=True).reshape(len(frame), len(columns))
        for j, column in enumerate(columns):
            mean, std = self.covariate_stats[column]
            values[:, j] = (values[:, j] - mean) / std
        return values

    def _windows(self, y: np.ndarray, past: np.ndarray, known: np.ndarray) -> tuple[Tensor, ...]:
        """All windows of one series: y ``(N, L)``, past ``(N, L, P)``, known ``(N, L+H, K)``, target ``(N, H)``."""
        span = self.config.lookback + self.config.horizon
        as_windows = lambda a: torch.as_tensor(a, dtype=torch.float32).unfold(0, span, 1)  # (N, [F,] L+H)
        y_w, past_w, known_w = as_windows(y), as_windows(past), as_windows(known)
        inputs, targets = y_w[:, : self.config.lookback], y_w[:, self.config.lookback:]
        level, scale = self._window_norm(inputs)
        past_w = past_w[:, :, : self.config.lookback].transpose(1, 2)  # (N, L, P)
        return (inputs - level) / scale, past_w, known_w.transpose(1, 2), (targets - level) / scale

    def _window_norm(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """Per window ``(N, L)``: the level (last value) and, with ``window_scale``, the spread, both ``(N, 1)``.

        Dividing by the window's own spread (at least 0.1 series standard deviations, so a
        flat stretch does not blow up) lets one model serve a season whose amplitude grows
        with the level, as RevIN and NeuralForecast's per-window scalers do.
        """
        level = inputs[:, -1:]
        if not self.config.window_scale:
            return level, torch.ones_like(level)
        return level, inputs.std(dim=1, keepdim=True).clamp_min(0.1)

    def _tail_of(self, group: pd.DataFrame) -> dict[str, Any]:
        tail = group.iloc[-self.config.lookback:]
        return {"last_ds": tail["ds"].iloc[-1].isoformat(), "y": tail["y"].tolist(),
                **{c: tail[c].tolist() for c in self.covariates}}

    def history_frame(self) -> pd.DataFrame:
        """The end of each training series kept in the model (its last ``lookback`` rows)."""
        frames = []
        for uid, info in self.history.items():
            dates = pd.date_range(end=pd.Timestamp(info["last_ds"]), periods=len(info["y"]), freq=self.freq)
            frames.append(pd.DataFrame({"unique_id": uid, "ds": dates, "y": info["y"],
                                        **{c: info[c] for c in self.covariates}}))
        return pd.concat(frames, ignore_index=True)

    # ------------------------------------------------------------------- prediction

    @torch.no_grad()
    def predict(self, frame: Optional[pd.DataFrame] = None, future: Optional[pd.DataFrame] = None) -> pd.DataFrame:
        """Forecast the ``horizon`` steps after each series ends.

        Without ``frame``, continues the series seen in training; with it, forecasts after
        the end of each series in ``frame`` (new series are scaled by their own history).
        ``future`` holds the future covariates for the horizon (``unique_id, ds`` and the
        ``future_covariates`` columns, ``horizon`` rows per series); it is needed exactly
        when the model has future covariates.

        Returns columns ``unique_id, ds, y_hat`` and ``y_hat_qNN`` per other quantile.
        """
        self._require_fitted()
        cfg = self.config
        scaler = self.scaler
        if frame is None:
            frame = self.history_frame()
        else:
            frame = validate_long_frame(frame, covariates=self.covariates)
            series = split_series(frame)
            check_length(series, cfg.lookback, "a forecast window (lookback)")
            known = {uid: self.scaler.stats[uid] for uid in series if uid in self.scaler.stats}
            scaler = SeriesScaler({**SeriesScaler.fit(series).stats, **known})
        saved, self.scaler = self.scaler, scaler
        try:
            with torch_threads(cfg.threads):
                rows = [self._predict_one(str(uid), group.iloc[-cfg.lookback:], future)
                        for uid, group in frame.groupby("unique_id", sort=False)]
        finally:
            self.scaler = saved
        return pd.concat(rows, ignore_index=True)

    def _predict_one(self, uid: str, window: pd.DataFrame, future: Optional[pd.DataFrame]) -> pd.DataFrame:
        cfg = self.config
        dates = future_dates(window["ds"].iloc[-1], self.freq, cfg.horizon)
        horizon_rows = self._future_rows(uid, dates, future)
        y, past, known = self._arrays(uid, window, horizon_rows)
        as_batch = lambda a: torch.as_tensor(a, dtype=torch.float32)[None]  # (1, ...)
        level, scale = self._window_norm(as_batch(y))
        out = self.model((as_batch(y) - level) / scale, as_batch(past), as_batch(known))  # (1, H, Q)
        quantiles = (out * scale.unsqueeze(2) + level.unsqueeze(2))[0].numpy()  # (H, Q)
        values = self.scaler.inverse(uid, quantiles)
        return pd.DataFrame({"unique_id": uid, "ds": dates,
                             **{quantile_column(q): values[:, k] for k, q in enumerate(cfg.quantiles)}})

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
                 baselines: tuple[str, ...] = ("naive", "seasonal_naive", "auto")):
        """Rolling-origin evaluation; see :func:`rnnkit.tasks.forecast_eval.backtest`."""
        from .forecast_eval import backtest

        return backtest(self.config, frame, windows=windows, season_length=season_length, baselines=baselines)

    # ----------------------------------------------------------------------- bundles

    def save(self, path: Union[str, Path]) -> Path:
        """Write a bundle directory (config, safetensors weights, scalers and history as JSON, metrics)."""
        self._require_fitted()
        metrics_json = {"members": [{"best_val_loss": r.best_val_loss, "steps": r.steps, "stopped": r.stopped}
                                    for r in self.train_results]}
        preprocessing = {"scaler": self.scaler.to_dict(), "covariates": self.covariate_stats, "freq": self.freq,
                         "num_features": list(self.num_features),
                         "series": self.history}
        return save_bundle(path, model_type=MODEL_TYPE, config=self.config.to_dict(), model=self.model,
                           preprocessing=preprocessing, metrics=metrics_json)

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> "Forecaster":
        """Rebuild a fitted forecaster from a bundle read by :func:`rnnkit.bundle.read_bundle`."""
        forecaster = cls(ForecasterConfig.from_dict(bundle.config))
        pre = bundle.preprocessing
        forecaster.num_features = tuple(pre["num_features"])
        forecaster.model = ForecastEnsemble(forecaster.config, *forecaster.num_features)
        load_weights(forecaster.model, bundle)
        forecaster.model.eval()
        forecaster.scaler = SeriesScaler.from_dict(pre["scaler"])
        forecaster.covariate_stats = {c: (float(m), float(s)) for c, (m, s) in pre["covariates"].items()}
        forecaster.freq, forecaster.history = pre["freq"], pre["series"]
        return forecaster

    def _require_fitted(self) -> None:
        if self.model is None:
            raise RnnkitError("this forecaster is not fitted yet; call fit(frame) or load a bundle")

    # -------------------------------------------------------------------- inspection

    def inspection_recurrent(self) -> Recurrent:
        """The first ensemble member's encoder, for ``rnnkit inspect`` (see :class:`rnnkit.inspection.Inspectable`)."""
        self._require_fitted()
        return self.model.members[0].encoder

    def inspection_input(self, source: str) -> InspectionInput:
        """A series as the encoder reads a window: scaled, relative to its last value, with calendar features.

        ``source``: numbers, or a CSV with a value column (``y`` or ``value``) and, when the
        model reads calendar features, a date column (``ds``, ``date`` or the first one).
        """
        self._require_fitted()
        if self.covariates:
            raise DataError(f"inspect feeds the series alone, but this forecaster also reads covariates "
                            f"{', '.join(self.covariates)}; inspect a forecaster trained without them")
        values = parse_series(source, "forecaster input")
        scaled = SeriesScaler.fit({"input": values}).transform("input", values)
        y = torch.as_tensor(scaled, dtype=torch.float32)[None]  # (1, T)
        level, scale = self._window_norm(y)
        channels = [((y - level) / scale).unsqueeze(2)]  # (1, T, 1)
        if self.config.calendar:
            calendar = calendar_features(_dates_in(source, len(values)), self.freq)  # (T, K)
            channels.append(torch.as_tensor(calendar, dtype=torch.float32)[None])
        return InspectionInput(torch.cat(channels, dim=2), [f"{v:.4g}" for v in values], {"value": values},
                               "forecaster")


register(MODEL_TYPE)(Forecaster.from_bundle)


def blocked_fold(windows: list[tuple[Tensor, ...]], horizon: int, k: int, purge: bool = False
                 ) -> tuple[tuple[Tensor, ...], Optional[tuple[Tensor, ...]]]:
    """``(train, val)`` of ensemble member ``k``: in every series, the ``k``-th block of ``horizon``
    windows from the end validates, and the others train.

    ``windows`` holds each series' windows in time order (``_windows``). Member 0 validates on
    the most recent windows, member 1 on the block before, and so on: together the members are
    checked on several stretches of the past, which calibrates the intervals on more than one
    year's luck, and all but one member train on the most recent windows. With ``purge`` the
    windows whose targets overlap the block's targets are left out of training too, so neither
    early stopping nor calibration sees a value the member was trained to predict (a series
    shorter than two blocks is not purged). A series too short for block ``k`` uses an
    earlier block; one too short for any only trains.
    """
    train, val = [], []
    for series in windows:
        n = len(series[0])
        gap = horizon - 1 if purge and n >= 2 * horizon else 0
        blocks = (n - 1 - gap) // horizon  # each block leaves at least one window to train on
        if blocks == 0:
            train.append(series)
            continue
        end = n - (k % blocks) * horizon
        start = end - horizon
        index = torch.arange(n)
        keep = (index < start - gap) | (index >= end + gap)
        train.append(tuple(t[keep] for t in series))
        val.append(tuple(t[start:end] for t in series))
    join = lambda parts: tuple(torch.cat(p) for p in zip(*parts))  # noqa: E731
    return join(train), (join(val) if val else None)


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
        frame = pd.read_csv(io.StringIO(source))
    except (pd.errors.ParserError, pd.errors.EmptyDataError):
        raise DataError(hint) from None
    column = next((c for c in ("ds", "date") if c in frame.columns), frame.columns[0])
    dates = pd.to_datetime(frame[column], errors="coerce")
    if len(dates) != count or dates.isna().any():
        raise DataError(hint)
    return pd.DatetimeIndex(dates)


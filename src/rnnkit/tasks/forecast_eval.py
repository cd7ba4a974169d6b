"""Judging forecasts: metrics, baselines (naive, seasonal naive, statsforecast) and rolling-origin backtests.

This module does not import the forecaster (which imports it for its seasonal-naive fallback):
:func:`backtest` is handed one and refits copies of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional, Protocol

import numpy as np
import pandas as pd

from .. import metrics
from ..data.series import infer_frequency, validate_long_frame
from ..errors import RnnkitError
from .forecast_model import ForecasterConfig, quantile_column

STATSFORECAST = ("Theta", "AutoETS", "AutoARIMA")  # the statistical baselines, strongest on the M competitions first
BASELINES = ("naive", "seasonal_naive", "auto", *STATSFORECAST)  # "auto": the statsforecast ones if installed


def evaluate_forecast(y: np.ndarray, forecast: pd.DataFrame, past: np.ndarray, quantiles: tuple[float, ...],
                      season_length: int) -> dict[str, float]:
    """Metrics of one series' forecast against the truth ``y``; interval metrics are NaN without quantiles
    (a baseline, or a series the forecaster gave seasonal naive: its interval columns are NaN).

    ``coverage`` is the share of ``y`` inside the outermost quantiles; ``below_qNN`` the
    share below each quantile (a calibrated ``q10`` has about 0.10 of the truth below it).
    """
    y_hat = forecast["y_hat"].to_numpy()[: len(y)]
    scores = {"mae": metrics.mae(y, y_hat), "rmse": metrics.rmse(y, y_hat), "smape": metrics.smape(y, y_hat),
              "mase": metrics.mase(y, y_hat, past, season_length)}
    columns = [quantile_column(q) for q in quantiles]
    if all(c in forecast.columns for c in columns) and not forecast[columns].isna().any().any():
        band = {q: forecast[quantile_column(q)].to_numpy()[: len(y)] for q in quantiles}
        scores["quantile_loss"] = float(np.mean([metrics.pinball(y, band[q], q) for q in quantiles]))
        scores["coverage"] = metrics.coverage(y, band[quantiles[0]], band[quantiles[-1]])
        scores.update({f"below_{quantile_column(q)[6:]}": float(np.mean(y <= band[q])) for q in quantiles if q != 0.5})
    else:
        scores.update(quantile_loss=float("nan"), coverage=float("nan"))
    return scores


def naive_forecasts(train: pd.DataFrame, horizon: int, season_length: int, freq: str) -> dict[str, pd.DataFrame]:
    """Naive (last value) and seasonal naive (the last season repeated) forecasts of every series."""
    naive, seasonal = [], []
    for uid, group in train.groupby("unique_id", sort=False):
        values = group["y"].to_numpy()
        dates = pd.date_range(group["ds"].iloc[-1], periods=horizon + 1, freq=freq)[1:]
        m = season_length if len(values) >= season_length else 1
        naive.append(pd.DataFrame({"unique_id": uid, "ds": dates, "y_hat": np.repeat(values[-1], horizon)}))
        seasonal.append(pd.DataFrame({"unique_id": uid, "ds": dates, "y_hat": np.resize(values[-m:], horizon)}))
    return {"naive": pd.concat(naive, ignore_index=True), "seasonal_naive": pd.concat(seasonal, ignore_index=True)}


def statsforecast_forecasts(train: pd.DataFrame, horizon: int, season_length: int, freq: str,
                            quantiles: tuple[float, ...], names: tuple[str, ...] = STATSFORECAST,
                            ) -> dict[str, tuple[pd.DataFrame, float]]:
    """statsforecast's Theta / AutoETS / AutoARIMA forecasts with the interval of the outermost quantiles.

    Returns ``{name: (forecast, fit_seconds)}``; raises ``RnnkitError`` naming the install
    command when statsforecast is missing. AutoETS handles seasons up to 24 steps (as R's
    ``ets``); longer ones fall back to a non-seasonal ETS.
    """
    try:
        from statsforecast import StatsForecast
        from statsforecast.models import AutoARIMA, AutoETS, Theta
    except ImportError:
        raise RnnkitError("the Theta/AutoETS/AutoARIMA baselines need statsforecast: pip install 'rnnkit[bench]'"
                          ) from None
    level = round(100 * (quantiles[-1] - quantiles[0]))
    makers = {"Theta": lambda: Theta(season_length=season_length),
              "AutoARIMA": lambda: AutoARIMA(season_length=season_length),
              "AutoETS": lambda: AutoETS(season_length=season_length if season_length <= 24 else 1)}
    frame = train[["unique_id", "ds", "y"]]
    results = {}
    for name in names:
        start = time.perf_counter()
        raw = StatsForecast(models=[makers[name]()], freq=freq, n_jobs=1).forecast(df=frame, h=horizon, level=[level])
        seconds = time.perf_counter() - start
        forecast = pd.DataFrame({"unique_id": raw["unique_id"].astype(str).to_numpy(), "ds": raw["ds"].to_numpy(),
                                 "y_hat": raw[name].to_numpy(),
                                 quantile_column(quantiles[0]): raw[f"{name}-lo-{level}"].to_numpy(),
                                 quantile_column(quantiles[-1]): raw[f"{name}-hi-{level}"].to_numpy()})
        results[name] = (forecast, seconds)
    return results


def statsforecast_installed() -> bool:
    """Whether the optional statsforecast baselines can run."""
    try:
        import statsforecast  # noqa: F401
    except ImportError:
        return False
    return True


class Refittable(Protocol):
    """What :func:`backtest` needs of a forecaster: its config, and a class that builds, fits and predicts."""

    config: ForecasterConfig

    def fit(self, frame: pd.DataFrame) -> Any: ...

    def predict(self, frame: Optional[pd.DataFrame] = None, future: Optional[pd.DataFrame] = None
                ) -> pd.DataFrame: ...


@dataclass
class BacktestResult:
    """Per window, series and model: ``metrics`` (one row each) and ``forecasts`` (one row per step, with ``y``)."""

    metrics: pd.DataFrame
    forecasts: pd.DataFrame

    def summary(self) -> pd.DataFrame:
        """Mean metrics per model over windows and series, best MASE first; ``fit_s`` is the mean fit time."""
        numeric = self.metrics.drop(columns=["window", "unique_id", "cutoff"]).groupby("model").mean()
        return numeric.sort_values("mase").reset_index()


def backtest(forecaster: Refittable, frame: pd.DataFrame, *, windows: int = 3, season_length: int = 1,
             baselines: tuple[str, ...] = ("naive", "seasonal_naive", "auto")) -> BacktestResult:
    """Rolling origin: before each of the last ``windows`` horizons, refit on all data before it and forecast it.

    Each window fits a new ``type(forecaster)(forecaster.config)`` (``forecaster`` itself, fitted
    or not, is left alone): the rnnkit model (``"rnnkit"``) is scored next to ``baselines``: ``"naive"``,
    ``"seasonal_naive"``, and ``"Theta"``/``"AutoETS"``/``"AutoARIMA"`` (statsforecast; ``"auto"`` adds
    all three when statsforecast is installed). Future covariates of each window come from
    ``frame``, as they would be known in advance.
    """
    config = forecaster.config
    unknown = set(baselines) - set(BASELINES)
    if unknown:
        raise RnnkitError(f"unknown baseline(s) {', '.join(sorted(unknown))}; choose from {', '.join(BASELINES)}")
    if not isinstance(windows, int) or windows < 1:
        raise RnnkitError(f"windows must be a positive integer, got {windows!r}")
    covariates = config.past_covariates + config.future_covariates
    frame = validate_long_frame(frame, covariates=covariates)
    horizon = config.horizon
    freq = infer_frequency(frame["ds"][frame["unique_id"] == frame["unique_id"].iloc[0]], "data")
    stats = tuple(b for b in baselines if b in STATSFORECAST)
    if "auto" in baselines and statsforecast_installed():
        stats = tuple(dict.fromkeys(stats + STATSFORECAST))
    metric_rows, forecast_frames = [], []
    for window, train, actual in rolling_splits(frame, horizon, windows):
        start = time.perf_counter()
        model = type(forecaster)(config).fit(train)
        fit_s = time.perf_counter() - start
        candidates = {"rnnkit": (model.predict(future=actual if config.future_covariates else None), fit_s)}
        start = time.perf_counter()
        simple = naive_forecasts(train, horizon, season_length, freq)
        simple_s = (time.perf_counter() - start) / 2
        candidates.update({name: (simple[name], simple_s) for name in ("naive", "seasonal_naive") if name in baselines})
        if stats:
            candidates.update(statsforecast_forecasts(train, horizon, season_length, freq, config.quantiles, stats))
        for model, (forecast, seconds) in candidates.items():
            scored = score_window(train, actual, forecast, config.quantiles, season_length)
            metric_rows += [{"window": window, "model": model, "fit_s": seconds, **row} for row in scored[0]]
            forecast_frames.append(scored[1].assign(window=window, model=model))
    return BacktestResult(pd.DataFrame(metric_rows), pd.concat(forecast_frames, ignore_index=True))


def rolling_splits(frame: pd.DataFrame, horizon: int, windows: int):
    """Yield ``(window, train, actual)``: window ``k`` of ``windows`` holds out the ``k``-th of the last horizons."""
    groups = frame.groupby("unique_id", group_keys=False, sort=False)[frame.columns]
    for window in range(1, windows + 1):
        cut = (windows - window + 1) * horizon
        train = groups.apply(lambda g: g.iloc[:-cut]).reset_index(drop=True)
        actual = groups.apply(lambda g: g.iloc[len(g) - cut:][:horizon]).reset_index(drop=True)
        yield window, train, actual


def score_window(train: pd.DataFrame, actual: pd.DataFrame, forecast: pd.DataFrame, quantiles: tuple[float, ...],
                  season_length: int) -> tuple[list[dict], pd.DataFrame]:
    """Metric rows per series of one window's ``forecast``, and the forecast with the actual ``y`` beside it."""
    rows, frames = [], []
    for uid, truth in actual.groupby("unique_id", sort=False):
        pred = forecast[forecast["unique_id"] == uid].reset_index(drop=True)
        past = train.loc[train["unique_id"] == uid, "y"].to_numpy()
        rows.append({"unique_id": uid, "cutoff": str(train.loc[train["unique_id"] == uid, "ds"].iloc[-1].date()),
                     **evaluate_forecast(truth["y"].to_numpy(), pred, past, quantiles, season_length)})
        frames.append(pred.assign(y=truth["y"].to_numpy()[: len(pred)]))
    return rows, pd.concat(frames, ignore_index=True)


def backtest_plot_frames(result: BacktestResult, model: str = "rnnkit") -> tuple[pd.DataFrame, pd.DataFrame]:
    """The forecasts of ``model`` over all windows and the actual values there, for :func:`plot_forecast`."""
    forecasts = result.forecasts[result.forecasts["model"] == model]
    actual = forecasts[["unique_id", "ds", "y"]]
    return forecasts.drop(columns=["y"]), actual


def coverage_report(result: BacktestResult, quantiles: tuple[float, ...], model: Optional[str] = "rnnkit") -> str:
    """One line: how often the truth fell inside the interval and below each quantile, against the nominal rate."""
    rows = result.metrics if model is None else result.metrics[result.metrics["model"] == model]
    nominal = quantiles[-1] - quantiles[0]
    parts = [f"{nominal:.0%} interval covered {rows['coverage'].mean():.0%} of held-out points"]
    for q in quantiles:
        column = f"below_{quantile_column(q)[6:]}"
        if column in rows:
            parts.append(f"{rows[column].mean():.0%} fell below q{round(100 * q):02d} (nominal {q:.0%})")
    return "; ".join(parts)

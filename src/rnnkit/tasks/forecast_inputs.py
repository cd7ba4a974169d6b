"""What the windowed forecaster's net reads: a series' rows as scaled, padded arrays, cut into windows.

:class:`~rnnkit.tasks.forecast.Forecaster` (``model="rnn"``) trains on and forecasts from
windows of ``L`` (lookback) input steps followed by ``H`` (horizon) target steps. Each window
is normalised by its own last value (and, with ``window_scale``, its own spread), so one model
serves series of any level and follows a trend past the training range. The same channels
feed ``rnnkit inspect`` (:func:`series_input`).

Shapes: ``T`` rows of a series, ``N`` windows, ``L`` lookback, ``H`` horizon, ``P`` past
covariates (plus the observed flag as the last past channel), ``K`` known features (calendar,
then future covariates).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..data.csv import parse_csv, parse_dates
from ..data.series import SeriesScaler, calendar_features
from ..errors import DataError
from ..inspection import InspectionInput, parse_series
from .forecast_model import ForecasterConfig

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]  # y (T,), past (T, P + 1: covariates, observed), known (T, K)


def padded_arrays(y: np.ndarray, past: np.ndarray, known: np.ndarray, pad: int) -> Arrays:
    """The model's inputs from plain arrays: the scaled target ``y`` ``(T,)``, scaled past
    covariates ``(T, P)`` and the known features ``(T [+ H], K)`` (the calendar features of the
    timestamps, then the scaled future covariates).

    ``pad`` rows of zeros go before the series (in every channel, calendar included); the
    last past channel is 1 where a value was observed and 0 on the padding.
    """
    zeros = lambda a: np.concatenate([np.zeros((pad, *a.shape[1:])), a])  # noqa: E731
    observed = zeros(np.ones((len(y), 1)))
    past = np.concatenate([zeros(past), observed], axis=1)
    return zeros(y), past, zeros(known)


def scaled_columns(frame: pd.DataFrame, columns: tuple[str, ...], stats: dict[str, tuple[float, float]]
                   ) -> np.ndarray:
    """``frame``'s ``columns`` ``(T, len(columns))``, each standardised by its ``stats`` (mean, std)."""
    values = frame[list(columns)].to_numpy(dtype=float, copy=True).reshape(len(frame), len(columns))
    for j, column in enumerate(columns):
        mean, std = stats[column]
        values[:, j] = (values[:, j] - mean) / std
    return values


def cut_windows(y: np.ndarray, past: np.ndarray, known: np.ndarray, config: ForecasterConfig) -> tuple[Tensor, ...]:
    """All windows of one series: y ``(N, L)``, past ``(N, L, P + 1)``, known ``(N, L+H, K)``, target ``(N, H)``.

    Window ``i`` reads rows ``i .. i+L-1`` and forecasts rows ``i+L .. i+L+H-1``.
    """
    lookback, span = config.lookback, config.lookback + config.horizon
    as_windows = lambda a: torch.as_tensor(a, dtype=torch.float32).unfold(0, span, 1)  # (N, [F,] L+H)
    y_w, past_w, known_w = as_windows(y), as_windows(past), as_windows(known)
    past_w = past_w[:, :, :lookback].transpose(1, 2)  # (N, L, P + 1)
    inputs, targets, observed = y_w[:, :lookback], y_w[:, lookback:], past_w[:, :, -1]
    level, scale = window_norm(inputs, observed, config.window_scale)
    return (inputs - level) / scale * observed, past_w, known_w.transpose(1, 2), (targets - level) / scale


def window_norm(inputs: Tensor, observed: Tensor, window_scale: bool) -> tuple[Tensor, Tensor]:
    """Per window ``(N, L)``: the level (last value) and, with ``window_scale``, the spread, both ``(N, 1)``.

    Dividing by the window's own spread (at least 0.1 series standard deviations, so a
    flat stretch does not blow up) lets one model serve a season whose amplitude grows
    with the level, as RevIN and NeuralForecast's per-window scalers do. The spread is
    taken over the observed values only (``observed`` is 1 there, 0 on padding).
    """
    level = inputs[:, -1:]
    if not window_scale:
        return level, torch.ones_like(level)
    count = observed.sum(dim=1, keepdim=True)
    mean = (inputs * observed).sum(dim=1, keepdim=True) / count
    variance = ((inputs - mean) ** 2 * observed).sum(dim=1, keepdim=True) / (count - 1).clamp_min(1)
    return level, variance.sqrt().clamp_min(0.1)


def horizon_rows(uid: str, dates: pd.DatetimeIndex, future: Optional[pd.DataFrame], columns: tuple[str, ...]
                 ) -> pd.DataFrame:
    """The horizon's rows (``dates``) with the future covariates ``columns`` of series ``uid``."""
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


def series_input(source: str, freq: Optional[str], config: ForecasterConfig) -> InspectionInput:
    """A series as the encoder reads a window: scaled, relative to its last value, with calendar features.

    ``source``: numbers, or a CSV with a value column (``y`` or ``value``) and, when the
    model reads calendar features, a date column (``ds``, ``date`` or the first one).
    """
    values = parse_series(source, "forecaster input")
    scaled = SeriesScaler.fit({"input": values}).transform("input", values)
    y = torch.as_tensor(scaled, dtype=torch.float32)[None]  # (1, T)
    observed = torch.ones_like(y)
    level, scale = window_norm(y, observed, config.window_scale)
    channels = [((y - level) / scale).unsqueeze(2), observed.unsqueeze(2)]  # (1, T, 1) each: y, observed flag
    if config.calendar:
        calendar = calendar_features(_dates_in(source, len(values)), freq)  # (T, K)
        channels.append(torch.as_tensor(calendar, dtype=torch.float32)[None])
    return InspectionInput(torch.cat(channels, dim=2), [f"{v:.4g}" for v in values], {"value": values},
                           "forecaster")


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

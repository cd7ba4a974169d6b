"""Time series in, clean arrays out: reading, validating, scaling and windowing long frames.

A long frame has one row per (series, timestamp): columns ``unique_id``, ``ds``, ``y``.
Everything a user can get wrong about one is caught here with a message that says what
and where, before a model sees it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..errors import DataError
from .csv import parse_dates, read_csv

REQUIRED = ("unique_id", "ds", "y")


def read_series_csv(path: Union[str, Path], covariates: tuple[str, ...] = (),
                    dayfirst: Optional[bool] = None) -> pd.DataFrame:
    """Read a CSV as a long frame: ``unique_id, ds, y`` (plus ``covariates``) or a single series ``date, value``.

    Any delimiter and date order a spreadsheet writes (see :mod:`rnnkit.data.csv`);
    ``dayfirst`` settles dates such as ``01/02/2000`` that the data leaves ambiguous.
    """
    path = Path(path)
    frame = read_csv(path, expect="columns unique_id, ds, y (or date, value)")
    if not set(REQUIRED) <= set(frame.columns) and frame.shape[1] == 2:
        # A single series: the first column holds dates, the second values.
        date_col, value_col = frame.columns
        frame = pd.DataFrame({"unique_id": path.stem, "ds": frame[date_col], "y": frame[value_col]})
    return validate_long_frame(frame, source=str(path), covariates=covariates, dayfirst=dayfirst)


def validate_long_frame(frame: pd.DataFrame, source: str = "data", covariates: tuple[str, ...] = (),
                        dayfirst: Optional[bool] = None) -> pd.DataFrame:
    """Check and normalise a long frame; returns a copy sorted by series and time.

    ``covariates`` name extra numeric columns that must be present and complete.
    Missing values are refused, never filled silently: the message says how to fill them.
    """
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"expected a pandas DataFrame with columns {', '.join(REQUIRED)}, got {type(frame).__name__}")
    missing = [c for c in REQUIRED + tuple(covariates) if c not in frame.columns]
    if missing:
        raise DataError(
            f"{source} lacks column(s) {', '.join(missing)}; it has {', '.join(map(str, frame.columns))}. "
            f"Rename them to unique_id, ds, y (or give a two-column date,value CSV)"
        )
    if frame.empty:
        raise DataError(f"{source} has no rows")
    frame = frame.copy()
    frame["unique_id"] = frame["unique_id"].astype(str)
    frame["ds"] = parse_dates(frame["ds"], dayfirst=dayfirst, groups=frame["unique_id"], source=source)
    for column in ("y",) + tuple(covariates):
        frame[column] = _numeric_column(frame, column, source)
    duplicated = frame.duplicated(["unique_id", "ds"])
    if duplicated.any():
        row = frame[duplicated].iloc[0]
        raise DataError(f"{source}: duplicated timestamp {row['ds']} in series {row['unique_id']!r}")
    frame = frame.sort_values(["unique_id", "ds"]).reset_index(drop=True)
    for uid, group in frame.groupby("unique_id", sort=False):
        infer_frequency(group["ds"], f"{source}, series {uid!r}")
    return frame


def _numeric_column(frame: pd.DataFrame, column: str, source: str) -> pd.Series:
    """A column as floats; text that is not a number, or a missing value, is an error naming the row."""
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() & frame[column].notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{source}: non-numeric value {frame[column].iloc[row]!r} in column {column} (row {row + 1})")
    if values.isna().any():
        row = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise DataError(f"{source}: {int(values.isna().sum())} missing value(s) (NaN) in column {column}, first at "
                        f"row {row + 1}; fill them (e.g. interpolate) or drop those rows")
    return values.astype(float)


def infer_frequency(ds: pd.Series, where: str) -> str:
    """The pandas frequency of evenly spaced timestamps; a gap is an error."""
    if len(ds) < 3:
        raise DataError(f"{where}: only {len(ds)} timestamp(s); need at least 3 to infer the frequency")
    with warnings.catch_warnings():  # pandas 3 announces an offset return type; the string is what we keep
        warnings.simplefilter("ignore")
        freq = pd.infer_freq(pd.DatetimeIndex(ds))
    if freq is None:
        raise DataError(f"{where}: timestamps are not evenly spaced ({_first_gap(pd.DatetimeIndex(ds))}); "
                        f"fill the missing timestamps (e.g. interpolate) or resample to a regular frequency")
    return freq


_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_WEEKDAYS = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")


def day_frequency(days: np.ndarray) -> Optional[str]:
    """:func:`infer_frequency`'s answer for dates without a time of day (``datetime64[D]``), in
    numpy, or None where pandas' other rules would have to judge (business days, irregular or
    unordered dates, fixed steps of four weeks or more, fewer than 3 dates).

    It reads calendar month starts or ends every few months, quarters or years (``"MS"``,
    ``"2ME"``, ``"QS-JAN"``, ``"YE-DEC"``) and fixed steps of days or weeks (``"D"``,
    ``"W-SUN"``), by pandas' rules in pandas' order (``pandas.tseries.frequencies``); a test
    checks that it never names another frequency than pandas. A serving path checks a
    request's dates with it: pandas inspects timestamps one by one in Python.
    """
    if len(days) < 3:
        return None
    day = days.astype(np.int64)
    gaps = np.diff(day)
    if (gaps <= 0).any():
        return None
    months = days.astype("datetime64[M]")
    steps = np.diff(months.astype(np.int64))
    step, gap = int(steps[0]), int(gaps[0])
    edge = "S" if (days == months).all() else "E" if (days + 1 == months + 1).all() else None  # 1st / last day
    if edge and (steps == step).all():  # pandas' annual, quarterly and monthly rules, in its order
        first = int(months[0].astype(np.int64)) % 12  # January = 0
        if step % 12 == 0:
            return _counted(step // 12, f"Y{edge}-{_MONTHS[first]}")
        if step % 3 == 0:
            named = {1: 10, 2: 11, 0: 12}[(first + 1) % 3]  # pandas names a quarter by a month of Oct-Dec
            return _counted(step // 3, f"Q{edge}-{_MONTHS[named - 1]}")
        return _counted(step, f"M{edge}")
    if gap >= 28 or not (gaps == gap).all():  # from four weeks, month rules may claim a fixed step first
        return None
    if gap % 7 == 0:
        return _counted(gap // 7, f"W-{_WEEKDAYS[(int(day[0]) + 3) % 7]}")  # 1970-01-01 was a Thursday
    return _counted(gap, "D")


def _counted(count: int, alias: str) -> str:
    return alias if count == 1 else f"{count}{alias}"


def _first_gap(ds: pd.DatetimeIndex) -> str:
    """Where regular spacing breaks first, judged by the frequency most runs of three timestamps show."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        votes = [pd.infer_freq(ds[i:i + 3]) for i in range(min(len(ds) - 2, 200))]
    votes = [v for v in votes if v is not None]
    if not votes:
        return f"a gap or jump at {ds[1]}"
    freq = max(set(votes), key=votes.count)
    expected = pd.date_range(ds[0], periods=len(ds), freq=freq)
    i = int(np.flatnonzero(ds != expected)[0])
    return f"a gap or jump at {ds[i]}, after {ds[i - 1]}; expected {expected[i]} at frequency {freq}"


@dataclass
class SeriesScaler:
    """Per-series standardisation: ``(y - mean) / std``, with the statistics kept as JSON."""

    stats: dict[str, tuple[float, float]]

    @classmethod
    def fit(cls, series: dict[str, np.ndarray]) -> "SeriesScaler":
        stats = {}
        for uid, values in series.items():
            std = float(values.std())
            stats[uid] = (float(values.mean()), std if std > 1e-8 else 1.0)  # a flat series stays flat
        return cls(stats)

    def transform(self, uid: str, values: np.ndarray) -> np.ndarray:
        mean, std = self.stats[uid]
        return (values - mean) / std

    def inverse(self, uid: str, values: np.ndarray) -> np.ndarray:
        mean, std = self.stats[uid]
        return values * std + mean

    def to_dict(self) -> dict:
        return {uid: list(pair) for uid, pair in self.stats.items()}

    @classmethod
    def from_dict(cls, data: dict) -> "SeriesScaler":
        return cls({uid: (float(m), float(s)) for uid, (m, s) in data.items()})


def sliding_windows(values: np.ndarray, lookback: int, horizon: int) -> tuple[Tensor, Tensor]:
    """All (input, target) pairs of a series: inputs ``(N, lookback)``, targets ``(N, horizon)``."""
    series = torch.as_tensor(values, dtype=torch.float32)
    windows = series.unfold(0, lookback + horizon, 1)  # (N, lookback + horizon)
    return windows[:, :lookback], windows[:, lookback:]


def split_series(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """A validated long frame to one float array per series, in time order."""
    return {str(uid): group["y"].to_numpy(dtype=float) for uid, group in frame.groupby("unique_id", sort=False)}


def future_dates(last: pd.Timestamp, freq: str, steps: int) -> pd.DatetimeIndex:
    """The ``steps`` timestamps after ``last`` at frequency ``freq``."""
    return pd.date_range(start=last, periods=steps + 1, freq=freq)[1:]


def holdout_fold(windows: list[tuple[Tensor, ...]], horizon: int, k: int
                 ) -> tuple[tuple[Tensor, ...], Optional[tuple[Tensor, ...]], Optional[tuple[Tensor, ...]]]:
    """``(train, stop, calibrate)`` windows of ensemble member ``k``, none sharing a target value.

    ``windows`` holds each series' windows in time order, window ``i`` forecasting values
    ``i .. i+H-1`` (counted from the first target). In every series member ``k`` holds out
    the ``k``-th stretch of ``holdout_span(H)`` windows from the end: ``W = holdout_width(H)``
    consecutive windows decide early stopping, and the ``W`` windows whose targets start right
    after the stopping targets end supply the calibration residuals (member 0: the last ``W``
    windows, whose targets end with the series). Every window whose targets touch either part
    is left out of training (purged, on both sides), so the member is never stopped or
    calibrated on a value it was trained to predict, and stopping and calibration read
    separate values. Windows after the stretch still train (their inputs, never their targets,
    may hold its values), so all but member 0 train on the most recent windows and the members
    together calibrate on several stretches of the past. A series with at most
    ``holdout_span(H)`` windows only trains; one too short for stretch ``k`` uses an earlier
    one (``k`` modulo the stretches it has).
    Returns ``None`` for ``stop`` and ``calibrate`` when no series holds anything out.
    """
    width, span = holdout_width(horizon), holdout_span(horizon)
    train, stop, calibrate = [], [], []
    for series in windows:
        n = len(series[0])
        stretches = (n - 1) // span  # each leaves at least one window to train on
        if stretches == 0:
            train.append(series)
            continue
        end = n - span * (k % stretches)  # one past the last calibration window
        last = end - width  # the first calibration window
        first = last - horizon - width + 1  # the first stopping window; its targets end before the calibration ones
        index = torch.arange(n)
        keep = (index <= first - horizon) | (index >= end - 1 + horizon)
        train.append(tuple(t[keep] for t in series))
        stop.append(tuple(t[first:first + width] for t in series))
        calibrate.append(tuple(t[last:end] for t in series))
    join = lambda parts: tuple(torch.cat(p) for p in zip(*parts)) if parts else None  # noqa: E731
    return join(train), join(stop), join(calibrate)


def holdout_width(horizon: int) -> int:
    """Windows per series in each held-out part (stopping, calibration): half a horizon."""
    return max(1, horizon // 2)


def holdout_span(horizon: int) -> int:
    """Windows one held-out stretch takes out of training at the end of a series: both parts and
    the windows whose targets reach into them (``H - 1`` before each part)."""
    return 2 * (holdout_width(horizon) + horizon - 1)


def season_length(freq: str) -> int:
    """Steps in one season at frequency ``freq``: 12 monthly, 4 quarterly, 52 weekly, 7 daily,
    5 business-daily, 24 hourly, 60 by the minute; 1 (no season) for yearly and anything else."""
    return {"M": 12, "Q": 4, "W": 52, "D": 7, "B": 5, "h": 24, "min": 60}.get(_frequency_kind(freq), 1)


def calendar_features(ds: pd.DatetimeIndex, freq: str) -> np.ndarray:
    """Known-future calendar features of timestamps ``ds`` at frequency ``freq``: ``(T, F)``.

    Each cycle finer than a year but coarser than the sampling step becomes a
    ``(sin, cos)`` pair, so December sits next to January: month of year for monthly
    data, week of year for weekly, quarter for quarterly, day of week and of year for
    daily, hour of day and day of week for hourly. Yearly data has none (``F = 0``).
    """
    ds = pd.DatetimeIndex(ds)
    cycles = {  # lazily: only the fields of the frequency asked are computed, each is a pass over ds
        "Q": lambda: [(ds.quarter - 1, 4)],
        "M": lambda: [(ds.month - 1, 12)],
        "W": lambda: [(ds.isocalendar().week.to_numpy() - 1, 52.18)],
        "D": lambda: [(ds.day_of_week, 7), (ds.day_of_year - 1, 365.25)],
        "B": lambda: [(ds.day_of_week, 5), (ds.day_of_year - 1, 365.25)],
        "h": lambda: [(ds.hour, 24), (ds.day_of_week, 7)],
        "min": lambda: [(ds.minute, 60), (ds.hour, 24)],
    }.get(_frequency_kind(freq), list)()
    columns = []
    for position, period in cycles:
        angle = 2 * np.pi * np.asarray(position, dtype=float) / period
        columns += [np.sin(angle), np.cos(angle)]
    return np.stack(columns, axis=1) if columns else np.zeros((len(ds), 0))


def _frequency_kind(freq: str) -> str:
    """``"MS"``/``"ME"`` to ``"M"``, ``"W-SAT"`` to ``"W"``, ``"QS-OCT"`` to ``"Q"``, ``"2h"`` to ``"h"``."""
    code = freq.lstrip("0123456789").split("-")[0]
    if code in ("min", "T"):
        return "min"
    if code in ("h", "H", "BH", "bh"):
        return "h"
    if code in ("D", "C"):
        return "D"
    for kind in ("B", "W", "Q", "M"):  # B before M: "BMS" is monthly, "B" business-daily
        if code.startswith(kind) and not (kind == "B" and len(code) > 1):
            return kind
    if code.startswith("BM") or code.startswith("SM"):
        return "M"
    if code.startswith("BQ"):
        return "Q"
    return "Y" if code[:1] in ("Y", "A") else code

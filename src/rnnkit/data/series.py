"""Time series in, clean arrays out: reading, validating, scaling and windowing long frames.

A long frame has one row per (series, timestamp): columns ``unique_id``, ``ds``, ``y``.
Everything a user can get wrong about one is caught here with a message that says what
and where, before a model sees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..errors import DataError

REQUIRED = ("unique_id", "ds", "y")


def read_series_csv(path: Union[str, Path]) -> pd.DataFrame:
    """Read a CSV as a long frame: ``unique_id, ds, y`` or a single series ``date, value``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such file: {path}; pass the path of a CSV with columns unique_id, ds, y")
    try:
        frame = pd.read_csv(path)
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text; save it as UTF-8 CSV") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path} is not a readable CSV: {str(exc).splitlines()[0]}") from None
    if not set(REQUIRED) <= set(frame.columns) and frame.shape[1] == 2:
        # A single series: the first column holds dates, the second values.
        date_col, value_col = frame.columns
        frame = pd.DataFrame({"unique_id": path.stem, "ds": frame[date_col], "y": frame[value_col]})
    return validate_long_frame(frame, source=str(path))


def validate_long_frame(frame: pd.DataFrame, source: str = "data") -> pd.DataFrame:
    """Check and normalise a long frame; returns a copy sorted by series and time."""
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"expected a pandas DataFrame with columns {', '.join(REQUIRED)}, got {type(frame).__name__}")
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise DataError(
            f"{source} lacks column(s) {', '.join(missing)}; it has {', '.join(map(str, frame.columns))}. "
            f"Rename them to unique_id, ds, y (or give a two-column date,value CSV)"
        )
    if frame.empty:
        raise DataError(f"{source} has no rows")
    frame = frame.copy()
    frame["unique_id"] = frame["unique_id"].astype(str)
    ds = pd.to_datetime(frame["ds"], errors="coerce")
    if ds.isna().any():
        row = int(np.flatnonzero(ds.isna().to_numpy())[0])
        raise DataError(f"{source}: unparsable date {frame['ds'].iloc[row]!r} in column ds (row {row + 1})")
    frame["ds"] = ds
    y = pd.to_numeric(frame["y"], errors="coerce")
    bad = y.isna() & frame["y"].notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{source}: non-numeric value {frame['y'].iloc[row]!r} in column y (row {row + 1})")
    if y.isna().any():
        raise DataError(
            f"{source}: {int(y.isna().sum())} missing value(s) in y; fill them (e.g. interpolate) or drop the rows"
        )
    frame["y"] = y.astype(float)
    duplicated = frame.duplicated(["unique_id", "ds"])
    if duplicated.any():
        row = frame[duplicated].iloc[0]
        raise DataError(f"{source}: duplicated timestamp {row['ds']} in series {row['unique_id']!r}")
    frame = frame.sort_values(["unique_id", "ds"]).reset_index(drop=True)
    for uid, group in frame.groupby("unique_id", sort=False):
        infer_frequency(group["ds"], f"{source}, series {uid!r}")
    return frame


def infer_frequency(ds: pd.Series, where: str) -> str:
    """The pandas frequency of evenly spaced timestamps; a gap is an error."""
    if len(ds) < 3:
        raise DataError(f"{where}: only {len(ds)} timestamp(s); need at least 3 to infer the frequency")
    freq = pd.infer_freq(pd.DatetimeIndex(ds))
    if freq is None:
        steps = pd.Series(ds.to_numpy()).diff().dropna()
        usual = steps.mode().iloc[0]
        gap_at = ds.iloc[int(np.flatnonzero((steps != usual).to_numpy())[0]) + 1]
        raise DataError(f"{where}: timestamps are not evenly spaced (a gap or jump at {gap_at}); fill the gaps")
    return freq


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


def check_length(series: dict[str, np.ndarray], needed: int, what: str, source: Optional[str] = None) -> None:
    """Every series must have at least ``needed`` points."""
    for uid, values in series.items():
        if len(values) < needed:
            raise DataError(
                f"series {uid!r} has {len(values)} points; {what} needs at least {needed}; "
                f"use a shorter lookback or horizon"
            )

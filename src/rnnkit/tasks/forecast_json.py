"""The forecaster's JSON face: the request and response of ``predict_json``, and their conversion.

A request holds the recent history of each series to forecast, as an HTTP client has it::

    {"series": [{"id": "AirPassengers", "values": [340, 318, ...], "dates": ["1959-01-01", ...]}],
     "horizon": 6}

- ``values``: the series, oldest first (at least 3: the frequency must be readable);
- ``dates``: one ISO date per value, evenly spaced at the model's frequency; needed when the
  model reads calendar features (the default), and echoed as forecast dates when given;
- ``id``: names the series in the response (default: its position, ``"0"``, ``"1"``, ...); a
  series the model was trained on keeps its training scale;
- ``covariates``: ``{column: [one value per value]}`` for each covariate the model reads;
- ``future``: ``{column: [one value per forecast step]}`` for each future covariate, over the
  model's whole horizon;
- ``horizon``: forecast steps wanted, at most the model's (default: the model's).

The response gives, per series in request order, the point forecast (the median), every
quantile the model predicts, and the method: ``"model"``, or ``"seasonal_naive"``/``"naive"``
for a series shorter than the model needs (one season + horizon), which gets no interval.
Everything is checked before the model runs, with one line naming the place that is wrong.

A plain request (no covariates, ISO dates or none, every series long enough for the model, at
the model's frequency) takes a lean path, :func:`plain_forecasts`: arrays straight from the
JSON, dates read in numpy, one batched forward of the fused ensemble, no data frames; it answers
as the frame path does (to float rounding). Anything else, including every request with a
mistake, goes through the frames, whose checks name it.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pandas as pd

from ..data.series import SeriesScaler, day_frequency, future_dates, validate_long_frame
from ..errors import DataError
from .forecast_model import quantile_column
from .schema import Schema

_NUMBERS: Schema = {"type": "array", "items": {"type": "number"}}
_COLUMNS: Schema = {"type": "object", "description": "column -> values"}

REQUEST_SCHEMA: Schema = {"type": "object", "required": ["series"], "additionalProperties": False, "properties": {
    "series": {"type": "array", "minItems": 1, "items": {
        "type": "object", "required": ["values"], "additionalProperties": False, "properties": {
            "id": {"type": "string", "description": "names the series; default its position"},
            "values": {**_NUMBERS, "minItems": 3, "description": "the history, oldest first"},
            "dates": {"type": "array", "items": {"type": "string"}, "description": "ISO dates, one per value"},
            "covariates": {**_COLUMNS, "description": "column -> one value per value"},
            "future": {**_COLUMNS, "description": "future-covariate column -> one value per horizon step"}}}},
    "horizon": {"type": "integer", "minimum": 1, "description": "steps to forecast; default the model's"}}}

RESPONSE_SCHEMA: Schema = {"type": "object", "properties": {"forecasts": {"type": "array", "items": {
    "type": "object", "properties": {
        "id": {"type": "string"},
        "dates": {"type": "array", "items": {"type": "string"}, "description": "when the request gave dates"},
        "median": {**_NUMBERS, "description": "the point forecast"},
        "quantiles": {"type": "object", "description": "level ('0.1') -> values; empty for a naive forecast"},
        "method": {"type": "string", "enum": ["model", "seasonal_naive", "naive"]}}}}}}


def request_frames(forecaster: Any, request: dict[str, Any]) -> tuple[pd.DataFrame, Optional[pd.DataFrame]]:
    """A request (checked against ``REQUEST_SCHEMA``) as ``predict``'s arguments: the long frame
    of the histories and the future covariates' frame (None without future covariates)."""
    cfg = forecaster.config
    horizon = request.get("horizon", cfg.horizon)
    if horizon > cfg.horizon:
        raise DataError(f"request.horizon is {horizon}, but this model forecasts at most {cfg.horizon} steps; "
                        f"ask for fewer, or train a model with --horizon {horizon}")
    series, ids = request["series"], _ids(request)
    repeated = next((uid for uid in ids if ids.count(uid) > 1), None)
    if repeated is not None:
        raise DataError(f"request.series: id {repeated!r} appears twice; give each series its own id")
    dated = [("dates" in item) for item in series]
    if any(dated) != all(dated):
        raise DataError(f"request.series[{dated.index(False)}] has no dates while others have; give every "
                        "series its dates, or none")
    if not all(dated) and cfg.calendar:
        raise DataError("request.series[0] needs \"dates\" (ISO dates, one per value): this forecaster reads "
                        "calendar features from them")
    history, future = [], []
    for i, (uid, item) in enumerate(zip(ids, series)):
        where, n = f"request.series[{i}]", len(item["values"])
        dates = item["dates"] if all(dated) else pd.date_range("2000-01-01", periods=n, freq=forecaster.freq)
        covariates = _columns(item, "covariates", forecaster.covariates, n, where, "value")
        history.append(pd.DataFrame({"unique_id": uid, "ds": _sized(dates, n, f"{where}.dates", "value"),
                                     "y": item["values"], **covariates}))
        if cfg.future_covariates:
            future.append((uid, _columns(item, "future", cfg.future_covariates, cfg.horizon, where, "forecast step")))
        elif "future" in item:
            raise DataError(f"{where}.future: this model reads no future covariates; leave it out")
    frame = validate_long_frame(pd.concat(history, ignore_index=True), "request", forecaster.covariates)
    if not future:
        return frame, None
    last = frame.groupby("unique_id")["ds"].max()
    return frame, pd.concat([pd.DataFrame({"unique_id": uid, "ds": future_dates(last[uid], forecaster.freq,
                                                                                  cfg.horizon), **columns})
                             for uid, columns in future], ignore_index=True)


def plain_forecasts(forecaster: Any, request: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The response to a plain request (see the module docstring) without data frames; None when
    the request needs the frame path (:func:`request_frames`, ``predict``, :func:`forecasts_json`)."""
    answers = plain_forecasts_many(forecaster, [request])
    return answers[0] if answers else None


def plain_forecasts_many(forecaster: Any, requests: list[dict[str, Any]]) -> Optional[list[dict[str, Any]]]:
    """The responses to several plain requests, every series of every request in one forward; None
    when any of them needs the frame path.

    Per series: its values as an array, its dates checked to be ISO days at the model's
    frequency, scaled by its training statistics (or its own), its last ``lookback`` values and
    the calendar of those and the forecast dates.
    """
    if forecaster.config.model == "esrnn":  # its smoothing runs over whole series: the frame path
        return None
    prepared = [_plain_inputs(forecaster, request) for request in requests]
    if any(p is None for p in prepared):
        return None
    values = iter(forecaster.forecast_windows([a for p in prepared for a in p[0]], [s for p in prepared for s in p[1]]))
    forecaster.fallback = {}
    cfg, answers = forecaster.config, []
    for request, (_, _, dates) in zip(requests, prepared):
        horizon, entries = request.get("horizon", cfg.horizon), []
        for uid, future in zip(_ids(request), dates):
            entry: dict[str, Any] = {"id": uid}
            if future is not None:
                entry["dates"] = future[:horizon]
            columns = dict(zip(cfg.quantiles, next(values)[:horizon].astype(float).T.tolist()))
            entries.append({**entry, "median": columns[0.5], "quantiles": {str(q): v for q, v in columns.items()},
                            "method": "model"})
        answers.append({"forecasts": entries})
    return answers


def _plain_inputs(forecaster: Any, request: dict[str, Any]) -> Optional[tuple[list, list, list]]:
    """A plain request's model inputs, scaler statistics and forecast dates (ISO strings) per series;
    None if not plain."""
    cfg, series, ids = forecaster.config, request["series"], _ids(request)
    horizon, dated = request.get("horizon", cfg.horizon), all("dates" in item for item in series)
    if (forecaster.covariates or horizon > cfg.horizon or len(set(ids)) < len(ids)
            or (not dated and (cfg.calendar or any("dates" in item for item in series)))):
        return None
    inputs, stats, dates = [], [], []
    for uid, item in zip(ids, series):
        y = _plain_values(item, forecaster.min_points)
        days = _plain_days(item, len(y), forecaster.freq) if dated and y is not None else None
        if y is None or (dated and days is None):
            return None
        window = y[-cfg.lookback:]
        known, future = _origin(forecaster, days[-len(window):]) if dated else (
            np.zeros((len(window) + cfg.horizon, 0)), None)
        mean, std = forecaster.scaler.stats.get(uid) or SeriesScaler.fit({uid: y}).stats[uid]
        inputs.append(forecaster.series_arrays((window - mean) / std, np.zeros((len(window), 0)), known,
                                               cfg.lookback - len(window)))
        stats.append((mean, std))
        dates.append(future)
    return inputs, stats, dates


def _plain_values(item: dict[str, Any], min_points: int) -> Optional[np.ndarray]:
    """A series' values as floats when there are enough for the model and no covariates; else None."""
    if "covariates" in item or "future" in item or len(item["values"]) < min_points:
        return None
    try:
        y = np.asarray(item["values"], dtype=float)
    except (TypeError, ValueError):
        return None
    return y if y.ndim == 1 and np.isfinite(y).all() else None


def _plain_days(item: dict[str, Any], count: int, freq: str) -> Optional[np.ndarray]:
    """A series' dates (``datetime64[D]``) when they are ``count`` ISO days (``2000-01-31``) at
    frequency ``freq``, read in numpy (:func:`day_frequency`); else None."""
    dates = item["dates"]
    if len(dates) != count or set(map(type, dates)) != {str} or set(map(len, dates)) != {10}:
        return None
    try:
        days = np.array(dates, dtype="datetime64[D]")
    except ValueError:
        return None
    return days if day_frequency(days) == freq else None


_ORIGINS: dict[tuple, tuple[np.ndarray, list[str]]] = {}  # see _origin


def _origin(forecaster: Any, window: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """The known features (calendar) of a window's dates and of the forecast dates after them
    ``(len(window) + horizon, K)``, and those forecast dates as ISO strings.

    Evenly spaced dates at the model's frequency are fixed by their last one and their number,
    so both are kept under that key (with the frequency, horizon and calendar option that
    shape them) for the next series that ends on the same day: the series of a panel, and
    the requests of one day, share it. Computed by the frame path's own functions.
    """
    cfg = forecaster.config
    key = (forecaster.freq, cfg.horizon, cfg.calendar, window[-1], len(window))
    origin = _ORIGINS.get(key)
    if origin is None:
        if len(_ORIGINS) >= 4096:
            _ORIGINS.clear()
        future = future_dates(pd.Timestamp(window[-1]), forecaster.freq, cfg.horizon)
        origin = _ORIGINS[key] = forecaster.calendar(pd.DatetimeIndex(window).append(future)), [_iso(d) for d in future]
    return origin


def _ids(request: dict[str, Any]) -> list[str]:
    return [item.get("id", str(i)) for i, item in enumerate(request["series"])]


def _columns(item: dict[str, Any], key: str, names: tuple[str, ...], size: int, where: str,
             unit: str) -> dict[str, list]:
    """``item[key]``: exactly the columns ``names``, each ``size`` numbers long (one per ``unit``)."""
    given = item.get(key, {})
    if set(given) != set(names):
        expected = ", ".join(names) or "none"
        raise DataError(f"{where}.{key} gives {', '.join(map(repr, sorted(given))) or 'no columns'}; this "
                        f"model reads {expected}")
    for name in names:
        values = given[name]
        if not isinstance(values, list) or not all(_is_number(v) for v in values):
            raise DataError(f"{where}.{key}.{name} must be an array of numbers (no NaN or null)")
        _sized(values, size, f"{where}.{key}.{name}", unit)
    return {name: given[name] for name in names}


def _sized(values: Any, size: int, where: str, unit: str) -> Any:
    if len(values) != size:
        raise DataError(f"{where} has {len(values)} item(s); it needs {size}, one per {unit}")
    return values


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value \
        and abs(value) != float("inf")


def forecasts_json(forecaster: Any, forecast: pd.DataFrame, request: dict[str, Any]) -> dict[str, Any]:
    """``predict``'s frame as the response: one entry per series in request order, the first
    ``horizon`` steps of each."""
    horizon, dated = request.get("horizon", forecaster.config.horizon), "dates" in request["series"][0]
    by_id = dict(list(forecast.groupby("unique_id", sort=False)))
    entries = []
    for uid in _ids(request):
        rows = by_id[uid].iloc[:horizon]
        method = forecaster.fallback.get(uid, "model")
        entry: dict[str, Any] = {"id": uid}
        if dated:
            entry["dates"] = [_iso(d) for d in rows["ds"]]
        entry["median"] = rows["y_hat"].astype(float).tolist()
        entry["quantiles"] = {} if method != "model" else {
            str(q): rows[quantile_column(q)].astype(float).tolist() for q in forecaster.config.quantiles}
        entry["method"] = method
        entries.append(entry)
    return {"forecasts": entries}


def _iso(stamp: pd.Timestamp) -> str:
    """A date as ``2000-01-31``, or with its time of day when it has one."""
    return stamp.date().isoformat() if stamp == stamp.normalize() else stamp.isoformat()


__all__ = ["REQUEST_SCHEMA", "RESPONSE_SCHEMA", "forecasts_json", "plain_forecasts", "plain_forecasts_many",
           "request_frames"]

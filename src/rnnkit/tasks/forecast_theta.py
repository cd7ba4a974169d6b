"""The Theta method (Assimakopoulos & Nikolopoulos 2000) in numpy, for the esrnn forecaster's combination.

The M3 competition's winner and the benchmark every M4 entry had to beat; the M4 winners
combined their learned forecasts with statistical ones like it. Per series:

1. if the autocorrelation at the seasonal lag passes the 90 % test
   (:func:`seasonality_test`), divide out the classical multiplicative
   decomposition's seasonal indices;
2. fit simple exponential smoothing (level ``l_t = α y_t + (1 - α) l_{t-1}``, ``l_0 = y_0``),
   ``α`` from a grid by the least in-sample squared one-step error;
3. forecast the last level plus half the least-squares trend ``b``, carried as Hyndman & Billah
   (2003) showed Theta equals SES with drift: ``l_n + b/2 ((h - 1) + 1/α - (1 - α)^n / α)``;
4. reseasonalise.

Values must be positive where a season is found (the esrnn panel's scaled values always are).
"""

from __future__ import annotations

import numpy as np

ALPHAS = np.linspace(0.02, 0.98, 49)  # the SES coefficients tried, one fit per series for all of them at once


def seasonality_test(z: np.ndarray, season: int) -> bool:
    """Whether the autocorrelation at the seasonal lag exceeds 1.645 of its standard error (the 90 %
    test of the M3 and M4 organisers' benchmarks; series shorter than three seasons have none)."""
    if season <= 1 or len(z) < 3 * season:
        return False
    x = z - z.mean()
    acf = np.array([np.sum(x[k:] * x[:len(x) - k]) for k in range(season + 1)]) / max(np.sum(x * x), 1e-12)
    limit = 1.645 * np.sqrt((1 + 2 * np.sum(acf[1:season] ** 2)) / len(x))
    return bool(abs(acf[season]) > limit)


def seasonal_indices(y: np.ndarray, season: int) -> np.ndarray:
    """Multiplicative seasonal indices ``(m,)`` of positions ``0 .. m-1`` (mean 1); ones without a season."""
    if not seasonality_test(y, season):
        return np.ones(max(season, 1))
    kernel = np.r_[0.5, np.ones(season - 1), 0.5] / season if season % 2 == 0 else np.ones(season) / season
    trend = np.convolve(y, kernel, mode="valid")  # centred at offset len(kernel) // 2
    offset = len(kernel) // 2
    ratio = y[offset:offset + len(trend)] / trend
    positions = (np.arange(len(ratio)) + offset) % season
    index = np.array([ratio[positions == j].mean() for j in range(season)])
    return index / index.mean()


def ses_fit(y: np.ndarray) -> tuple[float, float]:
    """The grid ``α`` with the least in-sample squared one-step error of SES on ``y``, and its last level."""
    level = np.full(len(ALPHAS), y[0])
    sse = np.zeros(len(ALPHAS))
    for value in y[1:]:
        error = value - level
        sse += error * error
        level = level + ALPHAS * error
    best = int(np.argmin(sse))
    return float(ALPHAS[best]), float(level[best])


def theta_forecast(y: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """Theta's point forecast ``(horizon,)`` of one series ``y`` (see the module doc)."""
    y = np.asarray(y, dtype=float)
    if len(y) < 3:
        return np.repeat(y[-1], horizon)
    index = seasonal_indices(y, season)
    n = len(y)
    adjusted = y / index[np.arange(n) % len(index)]
    alpha, level = ses_fit(adjusted)
    t = np.arange(n)
    slope = float(np.polyfit(t, adjusted, 1)[0])
    steps = np.arange(1, horizon + 1)
    forecast = level + 0.5 * slope * ((steps - 1) + 1 / alpha - (1 - alpha) ** n / alpha)
    return forecast * index[(n + steps - 1) % len(index)]

"""Two statistical forecasts in numpy, Theta and damped trend, for the esrnn forecaster's combination.

The M4 winners combined their learned forecasts with statistical ones; the esrnn forecaster
averages its net's median with the mean of these two (``ForecasterConfig.stats_weight``). Both
run on the series deseasonalised by classical multiplicative decomposition where the autocorrelation
at the seasonal lag passes the 90 % test (:func:`seasonality_test`), and reseasonalise.

Theta (Assimakopoulos & Nikolopoulos 2000, the M3 winner and M4's benchmark): simple exponential
smoothing (``l_t = α y_t + (1 - α) l_{t-1}``, ``l_0 = y_0``, ``α`` from a grid by the least
in-sample squared one-step error) plus half the least-squares trend ``b``, carried as Hyndman &
Billah (2003) showed Theta equals SES with drift: ``l_n + b/2 ((h - 1) + 1/α - (1 - α)^n / α)``.
Damped trend: :func:`damped_forecast`, a trend that fades where Theta's runs straight; the pair
differ from each other and from the net, which is what a combination needs.

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


def deseasonalised(y: np.ndarray, season: int) -> tuple[np.ndarray, np.ndarray]:
    """The seasonal indices of ``y`` (:func:`seasonal_indices`) and ``y`` divided by them."""
    index = seasonal_indices(y, season)
    return index, y / index[np.arange(len(y)) % len(index)]


def theta_forecast(y: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """Theta's point forecast ``(horizon,)`` of one series ``y`` (see the module doc)."""
    y = np.asarray(y, dtype=float)
    if len(y) < 3:
        return np.repeat(y[-1], horizon)
    index, adjusted = deseasonalised(y, season)
    n = len(y)
    alpha, level = ses_fit(adjusted)
    t = np.arange(n)
    slope = float(np.polyfit(t, adjusted, 1)[0])
    steps = np.arange(1, horizon + 1)
    forecast = level + 0.5 * slope * ((steps - 1) + 1 / alpha - (1 - alpha) ** n / alpha)
    return forecast * index[(n + steps - 1) % len(index)]


#: Damped-trend grid: (α, β, φ) tried at once, every combination.
DAMPED_GRID = np.array(np.meshgrid([0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9], [0.01, 0.05, 0.1, 0.2],
                                   [0.8, 0.9, 0.95, 0.98])).reshape(3, -1)


def damped_forecast(y: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """Holt's linear trend, damped (Gardner & McKenzie 1985), on the deseasonalised series ``(horizon,)``.

    ``l_t = α a_t + (1 - α)(l_{t-1} + φ b_{t-1})``, ``b_t = β (l_t - l_{t-1}) + (1 - β) φ b_{t-1}``,
    forecast ``l_n + (φ + ... + φ^h) b_n``; ``(α, β, φ)`` from :data:`DAMPED_GRID` by the least
    in-sample squared one-step error. A trend that fades, unlike Theta's straight drift.
    """
    y = np.asarray(y, dtype=float)
    if len(y) < 3:
        return np.repeat(y[-1], horizon)
    index, a = deseasonalised(y, season)
    n = len(y)
    alpha, beta, phi = DAMPED_GRID
    level, trend = np.full(alpha.shape, a[0]), np.full(alpha.shape, np.mean(np.diff(a[:min(n, 4)])))
    sse = np.zeros(alpha.shape)
    for value in a[1:]:
        predicted = level + phi * trend
        error = value - predicted
        sse += error * error
        new_level = predicted + alpha * error
        trend = beta * (new_level - level) + (1 - beta) * phi * trend
        level = new_level
    best = int(np.argmin(sse))
    steps = np.arange(1, horizon + 1)
    damping = np.cumsum(phi[best] ** steps)
    forecast = level[best] + damping * trend[best]
    return forecast * index[(n + steps - 1) % len(index)]

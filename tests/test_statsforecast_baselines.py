"""The backtest's statsforecast rows (Theta, AutoETS, AutoARIMA): present and sane where statsforecast is installed.

`make test` installs the `bench` extra, so these run there; without statsforecast they skip.
"""

import numpy as np
import pandas as pd
import pytest

from rnnkit.tasks.forecast_eval import backtest, statsforecast_forecasts
from rnnkit.tasks.forecast import Forecaster
from rnnkit.tasks.forecast_model import ForecasterConfig

pytest.importorskip("statsforecast", reason="pip install -c constraints.txt 'rnnkit[bench]'")

H = 12


def _seasonal_series(n: int = 120) -> pd.DataFrame:
    """Ten years of monthly values, trend plus a yearly season plus small noise: a series
    AutoARIMA and AutoETS model well, and on which the last value (naive) is a poor forecast."""
    t = np.arange(n)
    y = 100 + 0.5 * t + 20 * np.sin(2 * np.pi * t / 12) + np.random.default_rng(0).normal(0, 1, n)
    return pd.DataFrame({"unique_id": "sales", "ds": pd.date_range("2010-01-01", periods=n, freq="MS"), "y": y})


def test_statsforecast_forecasts_carry_the_interval_of_the_outer_quantiles():
    frame = _seasonal_series()
    train, actual = frame.iloc[:-H], frame["y"].to_numpy()[-H:]
    results = statsforecast_forecasts(train, H, 12, "MS", (0.1, 0.5, 0.9))
    assert set(results) == {"Theta", "AutoARIMA", "AutoETS"}
    for name, (forecast, seconds) in results.items():
        assert list(forecast.columns) == ["unique_id", "ds", "y_hat", "y_hat_q10", "y_hat_q90"], name
        assert forecast["ds"].tolist() == frame["ds"].iloc[-H:].tolist() and seconds > 0
        assert (forecast["y_hat_q10"] < forecast["y_hat"]).all() and (forecast["y_hat"] < forecast["y_hat_q90"]).all()
        mae = np.abs(forecast["y_hat"].to_numpy() - actual).mean()
        # noise sd 1; the naive forecast's MAE here is ~20. Theta's multiplicative season and damped
        # drift fit this additive trend less closely than the two searches do.
        assert mae < (3 if name != "Theta" else 10), (name, mae)


def test_backtest_reports_autoarima_and_autoets_beside_rnnkit_with_sane_scores():
    config = ForecasterConfig(horizon=H, hidden_size=8, ensemble=1, max_steps=20, minutes=None, progress=False)
    result = backtest(Forecaster(config), _seasonal_series(), windows=2, season_length=12)
    rows = result.metrics.set_index(["model", "window"])
    assert {"rnnkit", "naive", "seasonal_naive", "Theta", "AutoARIMA", "AutoETS"} == set(result.metrics["model"])
    for window in (1, 2):  # Theta's drift is half the trend: far better than the last value, if not the best
        assert rows.loc[("Theta", window), "mae"] < rows.loc[("naive", window), "mae"] / 2
    for name in ("AutoARIMA", "AutoETS"):
        for window in (1, 2):
            row = rows.loc[(name, window)]
            assert row["fit_s"] > 0 and 0 <= row["coverage"] <= 1
            # Trend and season are what these models capture: far better than the last value and
            # than last year's values (which miss a year of trend, 6 units).
            assert row["mase"] < 0.5 and row["mae"] < rows.loc[("naive", window), "mae"] / 4, (name, window, row)
            assert row["mae"] < rows.loc[("seasonal_naive", window), "mae"] / 2
    forecasts = result.forecasts[result.forecasts["model"] == "AutoETS"]
    assert len(forecasts) == 2 * H and forecasts["y"].notna().all()
    assert result.summary()["model"].iloc[0] in ("AutoARIMA", "AutoETS", "Theta")  # best MASE first

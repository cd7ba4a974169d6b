"""The numpy Theta method and its combination with the esrnn forecaster."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rnnkit.errors import RnnkitError
from rnnkit.tasks import Forecaster, ForecasterConfig
from rnnkit.tasks.forecast_stats import damped_forecast, seasonal_indices, ses_fit, theta_forecast


def test_ses_fit_follows_a_level_shift_and_theta_carries_half_the_trend() -> None:
    alpha, level = ses_fit(np.r_[np.ones(20), np.full(20, 3.0)])
    assert alpha > 0.9 and level == pytest.approx(3.0, abs=1e-3)  # a clean step: follow at once
    line = 10 + 0.5 * np.arange(40)
    forecast = theta_forecast(line, 6, 1)
    steps = np.diff(forecast)
    np.testing.assert_allclose(steps, 0.25, atol=1e-6)  # Theta's drift: half the least-squares slope
    assert line[-1] < forecast[0] < line[-1] + 1.0


def test_damped_trend_fades_a_trend() -> None:
    line = 10 + 0.5 * np.arange(40)
    forecast = theta_forecast(line, 24, 1), damped_forecast(line, 24, 1)
    steps = np.diff(forecast[1])
    assert np.all(steps > 0) and steps[-1] < steps[0]  # still rising, ever more slowly
    assert abs(forecast[1][0] - 30.0) < 0.6


def test_seasonal_indices_and_forecast_keep_a_multiplicative_season() -> None:
    t = np.arange(72)
    pattern = 1 + 0.3 * np.sin(2 * np.pi * t / 12)
    y = 100 * pattern
    index = seasonal_indices(y, 12)
    np.testing.assert_allclose(index, pattern[:12] / pattern[:12].mean(), rtol=1e-6)
    np.testing.assert_allclose(theta_forecast(y, 12, 12), 100 * pattern[:12], rtol=1e-3)
    noise = np.random.default_rng(1).normal(size=72) + 10
    np.testing.assert_allclose(seasonal_indices(noise, 12), np.ones(12))  # no season found: none divided out


def test_stats_weight_moves_the_median_to_the_mean_of_net_and_statistics() -> None:
    rng = np.random.default_rng(1)
    frames = []
    for k in range(20):
        t = np.arange(48)
        y = (20 + k) * (1 + 0.2 * np.sin(2 * np.pi * (t + k) / 12)) * np.exp(0.05 * rng.standard_normal(48))
        frames.append(pd.DataFrame({"unique_id": f"s{k}", "ds": pd.date_range("2000-01-01", periods=48, freq="MS"),
                                    "y": y}))
    frame = pd.concat(frames, ignore_index=True)
    options = dict(horizon=6, model="esrnn", hidden_size=8, ensemble=1, max_steps=20, progress=False, minutes=None)
    net = Forecaster(**options, stats_weight=0.0).fit(frame).predict()
    both = Forecaster(**options, stats_weight=0.5).fit(frame).predict()
    values = {uid: g["y"].to_numpy() for uid, g in frame.groupby("unique_id")}
    stats = np.concatenate([theta_forecast(values[uid], 6, 12) + damped_forecast(values[uid], 6, 12)
                            for uid in both["unique_id"].unique()]) / 2
    np.testing.assert_allclose(both["y_hat"], 0.5 * net["y_hat"] + 0.5 * stats, rtol=1e-4)
    np.testing.assert_allclose(both["y_hat_q90"] - both["y_hat"], net["y_hat_q90"] - net["y_hat"], rtol=1e-4)


def test_stats_weight_outside_zero_one_is_refused() -> None:
    with pytest.raises(RnnkitError, match="stats_weight must lie in"):
        ForecasterConfig(stats_weight=1.5)


def test_a_bundle_config_from_before_the_combination_keeps_forecasting_as_it_did():
    from rnnkit.tasks.forecast_model import ForecasterConfig

    new = ForecasterConfig(model="esrnn")
    assert ForecasterConfig.from_dict(new.to_dict()) == new and new.stats_weight == 0.5 and new.mase_weight
    old = {k: v for k, v in new.to_dict().items() if k not in ("stats_weight", "mase_weight")}
    loaded = ForecasterConfig.from_dict(old)
    assert loaded.stats_weight == 0.0 and not loaded.mase_weight

"""The ES-RNN-style forecaster (model="esrnn"): smoothing shapes and gradients, short series, learning, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import rnnkit
from rnnkit.errors import RnnkitError
from rnnkit.tasks import Forecaster, ForecasterConfig
from rnnkit.tasks.forecast_es import (SmoothedEnsemble, SmoothedNet, grid_coefficients, holt_winters,
                                      initial_log_season, log_trend, positive_scaler)
from rnnkit.tasks.forecast_stats import seasonality_test

FAST = dict(model="esrnn", hidden_size=8, ensemble=1, max_steps=40, progress=False, minutes=None)


def panel(series: int = 24, n: int = 72, seed: int = 0, noise: float = 0.03) -> pd.DataFrame:
    """Monthly multiplicative panel: level x (1 + trend) x a yearly season of its own phase and depth, with noise."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(series):
        t = np.arange(n)
        season = 1 + (0.1 + 0.2 * rng.random()) * np.sin(2 * np.pi * (t + rng.integers(12)) / 12)
        y = (50 + 30 * rng.random()) * (1 + 0.004 * t) * season * np.exp(noise * rng.standard_normal(n))
        frames.append(pd.DataFrame({"unique_id": f"s{k}", "ds": pd.date_range("2000-01-01", periods=n, freq="MS"),
                                    "y": y}))
    return pd.concat(frames, ignore_index=True)


def test_holt_winters_shapes_and_a_constant_series_stays_put() -> None:
    z = torch.full((3, 30), 2.0)
    levels, seasons = holt_winters(z, torch.full((3,), 0.3), torch.full((3,), 0.1), torch.zeros(3, 12), 30, 12)
    assert levels.shape == (3, 30) and seasons.shape == (3, 42)
    torch.testing.assert_close(levels, torch.full((3, 30), 2.0))
    torch.testing.assert_close(seasons, torch.ones(3, 42))
    levels, seasons = holt_winters(z, torch.full((3,), 0.3), torch.zeros(3), torch.zeros(3, 1), 30, 1)
    assert levels.shape == (3, 30) and seasons.shape == (3, 31)


def test_smoothed_net_shapes_and_gradients_reach_every_coefficient() -> None:
    config = ForecasterConfig(horizon=6, lookback=10, hidden_size=8, model="esrnn", learn_smoothing=True)
    net = SmoothedNet(config, num_series=4, season=12)
    z = torch.rand(4, 40) + 0.5
    index, ends = torch.arange(4), torch.tensor([8, 20, 30, 34])  # 8 < lookback: a padded window
    log_q, base = net(z, index, ends, torch.zeros(4, 12))
    assert log_q.shape == (4, 6, 3) and base.shape == (4, 6)
    assert torch.all(log_q[:, :, 0] <= log_q[:, :, 1]) and torch.all(log_q[:, :, 1] <= log_q[:, :, 2])
    torch.testing.assert_close(log_q[:, :, 1], torch.zeros(4, 6))  # it starts at the smoothing's forecast
    target = net.log_target(z, ends, base)
    (target - log_q[:, :, 1]).abs().mean().backward()
    for name in ("alpha_logit", "gamma_logit", "log_season"):
        assert getattr(net, name).grad.abs().sum() > 0, name
    assert net.net.highway.weight.grad.abs().sum() > 0
    frozen = SmoothedNet(ForecasterConfig(horizon=6, lookback=10, model="esrnn"), 4, 12)
    assert not frozen.alpha_logit.requires_grad  # learn_smoothing=False: fitted in sample, not by gradient


def test_data_helpers() -> None:
    t = np.arange(60)
    seasonal = 10 * (1 + 0.3 * np.sin(2 * np.pi * t / 12))
    assert seasonality_test(seasonal, 12) and not seasonality_test(np.random.default_rng(0).random(60) + 5, 12)
    index = np.exp(initial_log_season(seasonal, 12))
    np.testing.assert_allclose(index, 1 + 0.3 * np.sin(2 * np.pi * np.arange(12) / 12), atol=0.02)
    assert not initial_log_season(np.ones(60), 12).any()
    scaler = positive_scaler({"a": np.array([-3.0, 0.0, 5.0]), "b": np.array([2.0, 4.0])})
    assert (scaler.transform("a", np.array([-3.0, 0.0, 5.0])) > 0).all()
    np.testing.assert_allclose(scaler.transform("b", np.array([2.0, 4.0])).mean(), 1.0)
    u = torch.tensor([[0.0, 1.0, 2.0, 3.0, 100.0]])
    torch.testing.assert_close(log_trend(u, torch.tensor([4])), torch.tensor([1.0]))
    z = torch.tensor(np.stack([seasonal, np.linspace(1, 2, 60)]), dtype=torch.float32)
    alpha, gamma = grid_coefficients(z, torch.tensor([60, 60]), torch.zeros(2, 12), 12)
    assert alpha.shape == gamma.shape == (2,) and (gamma == 0).all()  # no season found: none fitted


def test_short_series_are_trained_padded_and_never_refused() -> None:
    frame = panel(series=21, n=72)
    short = frame[~((frame["unique_id"] == "s0") & (frame["ds"] < "2004-10-01"))]  # s0: 15 points < lookback
    fc = Forecaster(horizon=6, lookback=36, **FAST).fit(short)
    forecast = fc.predict()
    assert fc.config.model == "esrnn" and fc.too_short == []
    assert forecast.groupby("unique_id").size().eq(6).all() and not forecast["y_hat"].isna().any()


def test_auto_picks_esrnn_for_a_panel_and_rnn_for_a_few_series() -> None:
    options = {k: v for k, v in FAST.items() if k != "model"}
    assert Forecaster(horizon=6, **options).fit(panel(series=20, n=48)).config.model == "esrnn"
    assert Forecaster(horizon=6, **options).fit(panel(series=2, n=48)).config.model == "rnn"


def test_bundle_round_trip_and_new_series(tmp_path: Path) -> None:
    frame = panel(series=20, n=60)
    fc = Forecaster(horizon=6, **FAST).fit(frame)
    before = fc.predict()
    loaded = rnnkit.load(fc.save(tmp_path / "es.rnnkit"))
    pd.testing.assert_frame_equal(before, loaded.predict())
    new = panel(series=2, n=40, seed=5).assign(unique_id=lambda f: "new-" + f["unique_id"])
    forecast = loaded.predict(new)
    assert set(forecast["unique_id"]) == {"new-s0", "new-s1"} and not forecast["y_hat"].isna().any()
    series = [{"id": uid, "values": group["y"].tolist(), "dates": [d.date().isoformat() for d in group["ds"]]}
              for uid, group in new.groupby("unique_id", sort=False)]
    answer = loaded.predict_checked({"series": series})  # the JSON face: predict's numbers
    first = forecast[forecast["unique_id"] == "new-s0"]
    assert answer["forecasts"][0]["median"] == pytest.approx(first["y_hat"].tolist())


def test_learns_a_seasonal_panel_better_than_seasonal_naive() -> None:
    frame = panel(series=24, n=84, noise=0.02)
    train = frame.groupby("unique_id").head(72)
    test = frame.groupby("unique_id").tail(12)
    fc = Forecaster(horizon=12, model="esrnn", hidden_size=16, ensemble=1, max_steps=150, progress=False,
                    minutes=None).fit(train)
    forecast = fc.predict().merge(test, on=["unique_id", "ds"])
    naive = train.groupby("unique_id").tail(12).assign(ds=lambda f: f["ds"] + pd.DateOffset(years=1))
    naive = naive.merge(test, on=["unique_id", "ds"], suffixes=("_naive", ""))
    model_error = np.abs(forecast["y_hat"] - forecast["y"]).mean()
    naive_error = np.abs(naive["y_naive"] - naive["y"]).mean()
    assert model_error < 0.7 * naive_error, (model_error, naive_error)


def test_bad_options_are_one_line_errors() -> None:
    with pytest.raises(RnnkitError, match="model must be one of"):
        ForecasterConfig(model="nbeats")
    with pytest.raises(RnnkitError, match="reads the series alone"):
        ForecasterConfig(model="esrnn", past_covariates=("price",))
    ensemble = SmoothedEnsemble(ForecasterConfig(horizon=3, lookback=6, ensemble=2, model="esrnn"), 5, 4)
    assert len(ensemble.members) == 2

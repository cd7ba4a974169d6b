"""Forecasting: scaling, non-crossing quantiles, learning a seasonal series, covariates, bundles, backtests."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import rnnkit
from rnnkit.data.series import SeriesScaler, calendar_features, holdout_fold, holdout_span, holdout_width
from rnnkit.errors import BundleError, DataError, RnnkitError
from rnnkit.tasks import Forecaster, ForecasterConfig
from rnnkit.tasks.forecast_eval import backtest_plot_frames, coverage_report, evaluate_forecast
from rnnkit.tasks.forecast_json import forecasts_json, plain_forecasts, request_frames
from rnnkit.tasks.forecast_model import FUSED_MAX_BATCH, ForecastEnsemble, ForecastNet, conformal_level
from rnnkit.plotting import plot_forecast

FAST = dict(hidden_size=16, ensemble=1, max_steps=60, progress=False, minutes=None)


def seasonal_frame(n: int = 120, series: int = 1, noise: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """Monthly series: level + trend + a yearly sine, one per ``unique_id``."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(series):
        t = np.arange(n)
        y = 50 + 10 * k + 0.2 * t + 8 * np.sin(2 * np.pi * t / 12) + noise * rng.standard_normal(n)
        frames.append(pd.DataFrame({"unique_id": f"s{k}", "ds": pd.date_range("2000-01-01", periods=n, freq="MS"),
                                    "y": y}))
    return pd.concat(frames, ignore_index=True)


def test_scaler_round_trip_and_json() -> None:
    rng = np.random.default_rng(0)
    series = {"a": rng.normal(1000, 50, 40), "flat": np.full(10, 3.0)}
    scaler = SeriesScaler.fit(series)
    for uid, values in series.items():
        scaled = scaler.transform(uid, values)
        np.testing.assert_allclose(scaler.inverse(uid, scaled), values, rtol=1e-12)
    assert abs(scaler.transform("a", series["a"]).mean()) < 1e-9
    assert np.all(scaler.transform("flat", series["flat"]) == 0)  # a flat series stays flat, no division by 0
    assert SeriesScaler.from_dict(scaler.to_dict()).stats == scaler.stats


@pytest.mark.parametrize("window_scale", [False, True])
def test_window_scaling_is_relative_to_the_last_input(window_scale: bool) -> None:
    fc = Forecaster(horizon=3, lookback=4, window_scale=window_scale, **FAST)
    y = np.arange(10.0)  # an already standardised series
    y_w, past, known, target = fc._windows(y, np.ones((10, 1)), np.zeros((10, 2)))  # past: the observed flag
    assert y_w.shape == (4, 4) and past.shape == (4, 4, 1) and known.shape == (4, 7, 2) and target.shape == (4, 3)
    spread = float(np.std([0, 1, 2, 3], ddof=1)) if window_scale else 1.0
    torch.testing.assert_close(y_w[0], torch.tensor([-3.0, -2.0, -1.0, 0.0]) / spread)
    torch.testing.assert_close(target[0], torch.tensor([1.0, 2.0, 3.0]) / spread)
    level, scale = fc._window_norm(torch.zeros(2, 4), torch.ones(2, 4))  # flat: the spread floor, no division by 0
    assert torch.all(scale == (0.1 if window_scale else 1.0))


def test_padded_windows_ignore_the_padding() -> None:
    fc = Forecaster(horizon=2, lookback=5, **FAST)
    y = np.array([0.0, 0.0, 4.0, 6.0, 8.0, 9.0, 10.0])  # two rows of padding, then a series of 5
    observed = np.array([0, 0, 1, 1, 1, 1, 1.0])[:, None]
    y_w, past, _, target = fc._windows(y, observed, np.zeros((7, 0)))
    spread = float(np.std([4.0, 6.0, 8.0], ddof=1))  # the observed inputs only
    torch.testing.assert_close(y_w[0], torch.tensor([0.0, 0.0, -4.0, -2.0, 0.0]) / spread)  # padding stays 0
    torch.testing.assert_close(target[0], torch.tensor([1.0, 2.0]) / spread)
    assert past[0, :, 0].tolist() == [0, 0, 1, 1, 1]


@pytest.mark.parametrize("head", ["direct", "decoder"])
def test_quantiles_never_cross(head: str) -> None:
    config = ForecasterConfig(horizon=5, lookback=7, head=head, quantiles=(0.05, 0.1, 0.5, 0.9, 0.95), hidden_size=8)
    torch.manual_seed(0)
    net = ForecastNet(config, num_past=2, num_known=3)
    for param in net.parameters():  # wild weights: ordering must hold by construction, not by luck
        torch.nn.init.normal_(param, std=3.0)
    out = net(torch.randn(64, 7) * 10, torch.randn(64, 7, 2), torch.randn(64, 12, 3))
    assert out.shape == (64, 5, 5)
    assert torch.all(out[..., 1:] >= out[..., :-1])


def test_calibration_covers_the_nominal_share_of_new_data() -> None:
    config = ForecasterConfig(horizon=4, lookback=6, quantiles=(0.1, 0.5, 0.9), hidden_size=8, ensemble=1)
    torch.manual_seed(0)
    model = ForecastEnsemble(config, num_past=0, num_known=0).eval()  # untrained: its raw intervals are wrong
    draw = lambda n: (torch.randn(n, 6), torch.zeros(n, 6, 0), torch.zeros(n, 10, 0), 3 * torch.randn(n, 4))
    calibration, new = draw(2000), draw(2000)  # the second set is never seen by calibrate

    def below(data: tuple[torch.Tensor, ...]) -> torch.Tensor:  # share of targets below each quantile
        return (data[3].unsqueeze(2) <= model(*data[:3])).float().mean(dim=(0, 1))

    raw = below(new)
    assert raw[2] - raw[0] < 0.6  # uncalibrated, the 80 % interval covers far less: the test can fail
    model.calibrate([calibration], config.quantiles)
    assert model.calibration[1] == 0  # the median is left alone
    torch.testing.assert_close(below(new)[[0, 2]], torch.tensor([0.1, 0.9]), atol=0.02, rtol=0)
    predicted = model(*new[:3])
    assert torch.all(predicted[..., 1:] >= predicted[..., :-1])
    model.calibrate([None], config.quantiles)  # a member with nothing held out calibrates nothing
    assert torch.equal(model.calibration, torch.zeros(3))


def member_target_sets(horizon: int, lookback: int, lengths: list[int], members: int) -> list[dict[str, set]]:
    """Per member, the (series, time index) of every target its train / stop / calibration windows hold.

    The windows are the forecaster's own (``_windows``, padded as ``fit`` pads); each
    series' known-feature channels carry its number and the time index, so a window's
    target indices are read off the windows themselves, not recomputed.
    """
    fc = Forecaster(horizon=horizon, lookback=lookback, **FAST)
    fc.freq = "MS"
    pad = lookback - fc.min_input
    windows = []
    for s, n in enumerate(lengths):
        observed = np.r_[np.zeros(pad), np.ones(n)][:, None]
        index = np.stack([np.full(n + pad, s), np.arange(-pad, n)], axis=1).astype(float)  # (series, t)
        windows.append(fc._windows(np.r_[np.zeros(pad), np.arange(n, dtype=float)], observed, index))
    targets = lambda part: {tuple(map(int, row)) for w in part[2][:, lookback:] for row in w} if part else set()
    return [dict(zip(("train", "stop", "calibrate"), map(targets, holdout_fold(windows, horizon, k))))
            for k in range(members)]


@pytest.mark.parametrize("horizon, lookback", [(3, 9), (6, 18), (4, 30)])
def test_each_member_is_stopped_and_calibrated_on_values_it_never_trains_on_its_targets(horizon: int,
                                                                                        lookback: int) -> None:
    least = min(lookback, 12)  # a window's fewest observed values: a (monthly) season, at most the lookback
    needed = least + horizon + holdout_span(horizon)  # one window to train on, one stretch held out
    lengths = [130, 70, needed, needed - 1]  # the last one too short to hold out
    sets = member_target_sets(horizon, lookback, lengths, members=5)
    for k, member in enumerate(sets):
        assert member["stop"] and member["calibrate"] and member["train"]
        assert not member["train"] & member["stop"], k  # never stopped on a value it was trained to predict
        assert not member["train"] & member["calibrate"], k  # never calibrated on one
        assert not member["stop"] & member["calibrate"], k  # stopping and calibration on separate values
        width = holdout_width(horizon)  # windows per part and series: W + H - 1 values
        assert len({t for s, t in member["calibrate"] if s == 0}) == width + horizon - 1
        assert len({t for s, t in member["stop"] if s == 0}) == width + horizon - 1
    assert sets[0]["calibrate"] >= {(0, t) for t in range(130 - horizon, 130)}  # member 0: the last horizon
    assert sets[1]["train"] >= {(0, t) for t in range(130 - horizon, 130)}  # member 1 trains on it
    assert len({frozenset(m["calibrate"]) for m in sets}) == 5  # five members, five calibration stretches
    short = [{t for s, t in m["calibrate"] | m["stop"] if s == 3} for m in sets]
    assert not any(short) and all({t for s, t in m["train"] if s == 3} for m in sets)  # the short one only trains


@pytest.mark.slow
def test_intervals_cover_their_share_of_the_held_out_future() -> None:
    rng = np.random.default_rng(0)
    frames = []
    for k in range(40):  # a season, and AR(1) noise the intervals have to account for
        noise = np.zeros(84)
        for i in range(1, 84):
            noise[i] = 0.5 * noise[i - 1] + 3 * rng.standard_normal()
        y = 50 + 5 * k + 8 * np.sin(2 * np.pi * np.arange(84) / 12 + k) + noise
        frames.append(pd.DataFrame({"unique_id": f"s{k:02d}", "ds": pd.date_range("2000-01-01", periods=84, freq="MS"),
                                    "y": y}))
    frame = pd.concat(frames, ignore_index=True)
    train, future = frame.groupby("unique_id").head(78), frame.groupby("unique_id").tail(6)
    fc = Forecaster(horizon=6, hidden_size=16, ensemble=3, max_steps=300, progress=False, minutes=None).fit(train)
    forecast = fc.predict().merge(future, on=["unique_id", "ds"])  # 240 values no part of fit has seen
    inside = (forecast["y"] >= forecast["y_hat_q10"]) & (forecast["y"] <= forecast["y_hat_q90"])
    assert len(forecast) == 240 and 0.7 <= inside.mean() <= 0.9, inside.mean()


def test_calendar_features() -> None:
    monthly = calendar_features(pd.date_range("2001-01-01", periods=13, freq="MS"), "MS")
    assert monthly.shape == (13, 2)
    np.testing.assert_allclose(monthly[0], [0.0, 1.0], atol=1e-12)  # January
    np.testing.assert_allclose(monthly[12], monthly[0])  # a year later: the same point on the circle
    np.testing.assert_allclose(monthly[3], [1.0, 0.0], atol=1e-12)  # April: a quarter round
    assert calendar_features(pd.date_range("2001-01-01", periods=5, freq="YS"), "YS").shape == (5, 0)
    assert calendar_features(pd.date_range("2001-01-01", periods=5, freq="D"), "D").shape == (5, 4)
    assert calendar_features(pd.date_range("2001-01-06", periods=5, freq="W-SAT"), "W-SAT").shape == (5, 2)


@pytest.mark.slow
@pytest.mark.parametrize("head", ["direct", "decoder"])
def test_learns_a_seasonal_series_almost_exactly(head: str) -> None:
    frame = seasonal_frame(n=132)
    train, test = frame.iloc[:-12], frame.iloc[-12:]
    fc = Forecaster(horizon=12, head=head, hidden_size=32, ensemble=1, max_steps=400, progress=False,
                    minutes=None).fit(train)
    forecast = fc.predict()
    assert list(forecast["ds"]) == list(test["ds"])
    mae = np.abs(forecast["y_hat"].to_numpy() - test["y"].to_numpy()).mean()
    assert mae < 0.6, mae  # amplitude 8: within a few percent of it
    assert np.all(forecast["y_hat_q10"] <= forecast["y_hat"]) and np.all(forecast["y_hat"] <= forecast["y_hat_q90"])


def test_bundle_predictions_equal_those_before_saving(tmp_path: Path) -> None:
    frame = seasonal_frame(n=60, series=2, noise=0.5)
    frame["price"] = np.tile(np.arange(60.0) % 7, 2)
    frame["visits"] = np.tile(np.arange(60.0) % 5, 2)
    fc = Forecaster(horizon=6, lookback=12, past_covariates=("visits",), future_covariates=("price",), **FAST)
    fc.fit(frame.iloc[:].groupby("unique_id").head(54))
    future = frame.groupby("unique_id").tail(6)
    before = fc.predict(future=future)
    loaded = rnnkit.load(fc.save(tmp_path / "m.rnnkit"))
    after = loaded.predict(future=future)
    pd.testing.assert_frame_equal(before, after)
    assert list(after.columns) == ["unique_id", "ds", "y_hat_q10", "y_hat", "y_hat_q90"]
    newer = loaded.predict(frame, future=future.assign(ds=future["ds"] + pd.DateOffset(months=6)))
    assert newer["ds"].min() == pd.Timestamp("2005-01-01")


@pytest.mark.slow
def test_future_covariates_are_required_and_used() -> None:
    rng = np.random.default_rng(1)
    n = 150
    promo = rng.integers(0, 2, n).astype(float)
    frame = pd.DataFrame({"unique_id": "shop", "ds": pd.date_range("2010-01-04", periods=n, freq="W-MON"),
                          "y": 20 + 6 * promo, "promo": promo})
    train, test = frame.iloc[:-4], frame.iloc[-4:]
    options = dict(horizon=4, lookback=8, calendar=False, hidden_size=16, ensemble=1, max_steps=500, lr=1e-2,
                   progress=False, minutes=None)
    with_promo = Forecaster(future_covariates=("promo",), **options).fit(train)
    with pytest.raises(DataError, match="future covariates"):
        with_promo.predict()
    with pytest.raises(DataError, match="some are missing"):
        with_promo.predict(future=test.iloc[:2])
    error = np.abs(with_promo.predict(future=test)["y_hat"].to_numpy() - test["y"].to_numpy()).mean()
    blind = Forecaster(**options).fit(train).predict()
    blind_error = np.abs(blind["y_hat"].to_numpy() - test["y"].to_numpy()).mean()
    assert error < 0.5 * blind_error, (error, blind_error)  # the promotions explain y; without them, guesses


def test_global_model_over_series_of_different_lengths() -> None:
    frame = seasonal_frame(n=80, series=3)
    frame = frame[~((frame["unique_id"] == "s2") & (frame["ds"] < "2003-07-01"))]  # s2: 38 points, train-only
    forecast = Forecaster(horizon=6, lookback=24, **FAST).fit(frame).predict()
    assert forecast.groupby("unique_id").size().to_dict() == {"s0": 6, "s1": 6, "s2": 6}


def test_config_round_trip_and_bad_options() -> None:
    config = ForecasterConfig(horizon=6, head="direct", past_covariates=["a"], quantiles=(0.9, 0.5, 0.1))
    assert config.lookback == 18 and config.quantiles == (0.1, 0.5, 0.9)
    assert ForecasterConfig.from_dict(config.to_dict()) == config
    with pytest.raises(RnnkitError, match="include 0.5"):
        ForecasterConfig(quantiles=(0.1, 0.9))
    with pytest.raises(RnnkitError, match="head must be"):
        ForecasterConfig(head="attention")
    with pytest.raises(RnnkitError, match="distinct"):
        ForecasterConfig(past_covariates=("a",), future_covariates=("a",))
    with pytest.raises(RnnkitError, match="not fitted"):
        Forecaster().predict()


def test_backtest_reports_baselines_coverage_and_plots(tmp_path: Path) -> None:
    frame = seasonal_frame(n=72, noise=0.3)
    result = Forecaster(horizon=6, lookback=12, **FAST).backtest(frame, windows=2, season_length=12)
    models = set(result.metrics["model"])
    assert {"rnnkit", "naive", "seasonal_naive"} <= models
    if importlib.util.find_spec("statsforecast"):
        assert {"AutoARIMA", "AutoETS"} <= models
    assert set(result.metrics["window"]) == {1, 2}
    assert {"mae", "rmse", "smape", "mase", "quantile_loss", "coverage", "below_q10", "fit_s"} <= set(result.metrics)
    summary = result.summary()
    assert summary["mase"].is_monotonic_increasing and "rnnkit" in set(summary["model"])
    assert "80% interval covered" in coverage_report(result, (0.1, 0.5, 0.9))
    forecasts, actual = backtest_plot_frames(result)
    assert len(forecasts) == 12 and np.allclose(actual["y"], frame["y"].iloc[-12:])
    path = plot_forecast(frame.iloc[:-12], None, tmp_path / "bt.png", actual=actual, backtest=forecasts)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_forecast_metrics() -> None:
    y = np.array([10.0, 20.0, 30.0, 40.0])
    forecast = pd.DataFrame({"y_hat": y + 1, "y_hat_q10": y - 5, "y_hat_q90": y + 0.5})
    scores = evaluate_forecast(y, forecast, np.arange(10.0), (0.1, 0.5, 0.9), 1)
    assert scores["mae"] == 1.0 and scores["mase"] == 1.0 and scores["coverage"] == 1.0
    assert scores["below_q10"] == 0.0 and scores["below_q90"] == 1.0


@pytest.fixture(scope="module")
def fitted() -> Forecaster:
    return Forecaster(horizon=6, lookback=12, **FAST).fit(seasonal_frame(n=60, series=2, noise=0.5))


def _request(frame: pd.DataFrame, **extra) -> dict:
    series = [{"id": uid, "values": group["y"].tolist(), "dates": [d.date().isoformat() for d in group["ds"]]}
              for uid, group in frame.groupby("unique_id", sort=False)]
    return {"series": series, **extra}


def test_predict_json_answers_as_predict_does(fitted: Forecaster) -> None:
    frame = seasonal_frame(n=60, series=2, noise=0.5)
    request = _request(frame, horizon=4)
    request["series"] = request["series"][::-1]  # s1 first
    response = fitted.predict_checked(request)
    expected = fitted.predict(frame)
    assert [f["id"] for f in response["forecasts"]] == ["s1", "s0"]  # request order
    s1 = expected[expected["unique_id"] == "s1"].iloc[:4]
    first = response["forecasts"][0]
    assert first["dates"] == ["2005-01-01", "2005-02-01", "2005-03-01", "2005-04-01"]
    assert first["median"] == pytest.approx(s1["y_hat"].tolist())
    assert first["quantiles"]["0.1"] == pytest.approx(s1["y_hat_q10"].tolist())
    assert set(first["quantiles"]) == {"0.1", "0.5", "0.9"} and first["method"] == "model"
    assert json.loads(json.dumps(response, allow_nan=False)) == response  # plain JSON
    short = fitted.predict_checked({"series": [{"values": [1.0, 2.0, 3.0, 4.0],
                                                "dates": ["2001-01-01", "2001-02-01", "2001-03-01", "2001-04-01"]}]})
    assert short["forecasts"][0] == {"id": "0", "dates": ["2001-05-01", "2001-06-01", "2001-07-01", "2001-08-01",
                                                          "2001-09-01", "2001-10-01"],
                                     "median": [4.0] * 6, "quantiles": {}, "method": "naive"}


def _through_frames(fc: Forecaster, request: dict) -> dict:
    frame, future = request_frames(fc, request)
    return forecasts_json(fc, fc.predict(frame, future=future), request)


def test_a_plain_request_takes_the_lean_path_and_answers_as_the_frames_do(fitted: Forecaster) -> None:
    frame = seasonal_frame(n=60, series=2, noise=0.5)
    two = _request(frame, horizon=5)
    two["series"][1]["id"] = "new"  # a series the model never saw: scaled by its own history
    long_lookback = Forecaster(horizon=3, lookback=24, **FAST).fit(frame)
    padded = _request(frame.iloc[:20])  # shorter than its lookback (24), long enough for it (12 + 3)
    for fc, request in ((fitted, two), (long_lookback, padded), (fitted, _request(frame.iloc[:30]))):
        lean = plain_forecasts(fc, request)
        assert lean is not None and fc.predict_checked(request) == lean
        expected = _through_frames(fc, request)
        for got, want in zip(lean["forecasts"], expected["forecasts"]):
            assert got.keys() == want.keys() and got["dates"] == want["dates"] and got["method"] == "model"
            assert got["median"] == pytest.approx(want["median"], rel=1e-6)
            for q in ("0.1", "0.9"):
                assert got["quantiles"][q] == pytest.approx(want["quantiles"][q], rel=1e-6)
    ragged = _request(frame)
    ragged["series"][0]["dates"][3] = "2000-04-02"  # not evenly spaced: the frames' check names it
    for request in (ragged, _request(frame.iloc[:5]), {**two, "horizon": 7},
                    {"series": [{**two["series"][0], "dates": [d + "T00:00" for d in two["series"][0]["dates"]]}]}):
        assert plain_forecasts(fitted, request) is None


@pytest.mark.parametrize("cell, head, layers", [("lstm", "decoder", 1), ("gru", "direct", 2), ("rnn", "decoder", 2)])
def test_the_fused_ensemble_equals_its_members_run_one_by_one(cell: str, head: str, layers: int) -> None:
    config = ForecasterConfig(horizon=5, lookback=9, cell=cell, head=head, num_layers=layers, ensemble=3,
                              hidden_size=8, model="rnn")
    torch.manual_seed(0)
    ensemble = ForecastEnsemble(config, num_past=2, num_known=3).eval()
    with torch.no_grad():
        ensemble.calibration.copy_(torch.tensor([-0.3, 0.0, 0.2]))
    for batch in (1, 4, 7):
        y, past, known = torch.randn(batch, 9), torch.randn(batch, 9, 2), torch.randn(batch, 14, 3)
        with torch.inference_mode():
            torch.testing.assert_close(ensemble.fused()(y, past, known), ensemble(y, past, known), rtol=1e-5, atol=1e-5)
    fused = ensemble.fused()
    assert ensemble.fused() is fused  # kept between calls
    assert ensemble.for_inference(1) is fused and ensemble.for_inference(FUSED_MAX_BATCH + 1) is ensemble
    with torch.no_grad():
        ensemble.members[1].head.bias.add_(1.0)  # a weight changes: built again from the new weights
    y, past, known = torch.randn(2, 9), torch.randn(2, 9, 2), torch.randn(2, 14, 3)
    with torch.inference_mode():
        assert ensemble.fused() is not fused
        torch.testing.assert_close(ensemble.fused()(y, past, known), ensemble(y, past, known), rtol=1e-5, atol=1e-5)


def test_the_lean_path_answers_as_the_members_one_by_one_through_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    frame = seasonal_frame(n=50, series=3, noise=0.5)
    fc = Forecaster(horizon=4, lookback=14, hidden_size=8, ensemble=3, max_steps=20, progress=False,
                    minutes=None).fit(frame)
    lengths = {"s0": 50, "s1": 17, "s2": 30}  # s1 shorter than the lookback: padded
    parts = [frame[frame["unique_id"] == uid].iloc[-n:] for uid, n in lengths.items()]
    new = seasonal_frame(n=25, seed=3).assign(unique_id="new", y=lambda f: f["y"] * 3)  # scaled by its own
    requests = [_request(pd.concat(parts + [new])), _request(parts[1], horizon=2), _request(new.iloc[-16:])]
    lean = [plain_forecasts(fc, request) for request in requests]
    monkeypatch.setattr(ForecastEnsemble, "fused", lambda self: self)  # the members one by one
    for got, request in zip(lean, requests):
        want = _through_frames(fc, request)
        assert got is not None and [f["dates"] for f in got["forecasts"]] == [f["dates"] for f in want["forecasts"]]
        for a, b in zip(got["forecasts"], want["forecasts"]):
            for q in ("0.1", "0.5", "0.9"):
                np.testing.assert_allclose(a["quantiles"][q], b["quantiles"][q], rtol=1e-5, atol=1e-5)


def test_predict_many_answers_plain_requests_in_one_forward_and_each_as_alone(fitted: Forecaster) -> None:
    frame = seasonal_frame(n=60, series=2, noise=0.5)
    s0, s1 = (_request(frame[frame["unique_id"] == uid]) for uid in ("s0", "s1"))
    plain = [s0, {**s1, "horizon": 3}, _request(frame)]
    batches = []
    forecast_windows = fitted.forecast_windows
    fitted.forecast_windows = lambda inputs, stats: batches.append(len(inputs)) or forecast_windows(inputs, stats)
    try:
        answers = fitted.predict_many(plain)
        assert batches == [4]  # the four series of three requests, one forward
        short = {"series": [{"values": [1.0, 2.0, 3.0, 4.0], "dates": ["2001-01-01", "2001-02-01", "2001-03-01",
                                                                        "2001-04-01"]}]}
        mixed = fitted.predict_many([s0, {**s0, "horizon": 7}, short])  # a refused and a naive one: one by one
    finally:
        del fitted.forecast_windows
    for request, answer in zip(plain, answers):
        alone = fitted.predict_checked(request)
        assert [f["id"] for f in answer["forecasts"]] == [f["id"] for f in alone["forecasts"]]
        for got, want in zip(answer["forecasts"], alone["forecasts"]):
            assert got["dates"] == want["dates"] and got["median"] == pytest.approx(want["median"], rel=1e-6)
    assert isinstance(mixed[1], DataError) and "forecasts at most 6 steps" in str(mixed[1])
    assert mixed[2]["forecasts"][0]["method"] == "naive" and mixed[0]["forecasts"][0]["method"] == "model"


@pytest.mark.parametrize("request_, message", [
    ({"values": [1, 2, 3]}, r"^request is missing 'series'"),
    ({"series": [{"values": [1.0, float("nan"), 3.0], "dates": ["2001-01-01"] * 3}]},
     r"^request.series\[0\].values\[1\] must be number, got nan$"),
    ({"series": [{"values": [1.0, 2.0], "dates": ["2001-01-01", "2001-02-01"]}]},
     r"^request.series\[0\].values needs at least 3 item\(s\), got 2$"),
    ({"series": [{"values": [1.0, True, 3], "dates": ["2001-01-01"] * 3}]},
     r"^request.series\[0\].values\[1\] must be number, got a boolean$"),
    ({"series": [{"values": [1.0, 2.0, "3"], "dates": ["2001-01-01"] * 3}]},
     r"^request.series\[0\].values\[2\] must be number, got a string$"),
    ({"series": [{"values": [1.0, 2.0, 3.0], "dates": ["2001-01-01", 2, "2001-03-01"]}]},
     r"^request.series\[0\].dates\[1\] must be string, got a number$"),
    ({"series": [{"values": [1.0, 2.0, 3.0]}]}, r"needs \"dates\" \(ISO dates, one per value\)"),
    ({"series": [{"values": [1.0, 2.0, 3.0], "dates": ["2001-01-01", "2001-02-01"]}]},
     r"^request.series\[0\].dates has 2 item\(s\); it needs 3, one per value$"),
    ({"series": [{"values": [1, 2, 3], "dates": ["2001-01-01", "2001-02-01", "2001-03-01"]}], "horizon": 7},
     r"^request.horizon is 7, but this model forecasts at most 6 steps"),
    ({"series": [{"values": [1, 2, 3], "dates": ["2001-01-01", "2001-01-02", "2001-01-03"]}]},
     r"frequency D, but this model forecasts MS series"),
    ({"series": [{"values": [1, 2, 3], "dates": ["2001-01-01", "2001-02-01", "2001-03-01"],
                  "covariates": {"price": [1, 2, 3]}}]}, r"covariates gives 'price'; this model reads none$"),
])
def test_predict_json_refuses_a_bad_request_in_one_line(fitted: Forecaster, request_: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        fitted.predict_checked(request_)


def test_save_and_load_keep_the_json_answers(fitted: Forecaster, tmp_path: Path) -> None:
    request = _request(seasonal_frame(n=40, series=1, noise=0.5))
    loaded = rnnkit.load(fitted.save(tmp_path / "fc.rnnkit"))
    assert isinstance(loaded, Forecaster) and loaded.config == fitted.config
    assert loaded.predict_json(request) == fitted.predict_json(request)
    assert loaded.metrics["members"][0]["steps"] == fitted.train_results[0].steps


def test_a_bundle_from_before_the_purged_holdout_is_refused_with_the_fix(fitted: Forecaster, tmp_path: Path) -> None:
    path = fitted.save(tmp_path / "old.rnnkit")
    header = json.loads((path / "config.json").read_text())
    header["config"]["purge"] = False  # the option the purged hold-out replaced
    (path / "config.json").write_text(json.dumps(header))
    with pytest.raises(BundleError, match=r"cannot read \(RnnkitError: unknown forecaster option\(s\): purge;.*"
                                          r"re-save it with the rnnkit that wrote it, or train it again"):
        rnnkit.load(path)
    del header["config"]["purge"]  # and without it, the missing observed channel is named
    (path / "config.json").write_text(json.dumps(header))
    pre = json.loads((path / "preprocessing.json").read_text())
    pre["num_features"][0] -= 1
    (path / "preprocessing.json").write_text(json.dumps(pre))
    with pytest.raises(BundleError, match=r"its model reads 0 past channel\(s\), this rnnkit's reads 1 .*"
                                          r"train it again"):
        rnnkit.load(path)


def test_each_member_checkpoints_and_resumes_on_its_own(tmp_path: Path) -> None:
    frame = seasonal_frame(n=60, series=2, noise=0.5)
    options = dict(FAST, horizon=6, lookback=12, ensemble=2, max_steps=20)
    plain = Forecaster(**options).fit(frame)
    checkpointed = Forecaster(**options).fit(frame, checkpoint_dir=tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"member0", "member1"}
    resumed = Forecaster(**options).fit(frame, checkpoint_dir=tmp_path, resume=True)
    for other in (checkpointed, resumed):
        for a, b in zip(plain.model.state_dict().values(), other.model.state_dict().values()):
            assert torch.equal(a, b)


def test_predict_json_takes_covariates_and_their_future() -> None:
    frame = seasonal_frame(n=60, series=1, noise=0.5)
    frame["price"], frame["visits"] = np.arange(60.0) % 7, np.arange(60.0) % 5
    fc = Forecaster(horizon=6, lookback=12, past_covariates=("visits",), future_covariates=("price",), **FAST)
    fc.fit(frame.iloc[:54])
    history, future = frame.iloc[:54], frame.iloc[54:]
    item = {"values": history["y"].tolist(), "dates": [d.date().isoformat() for d in history["ds"]],
            "covariates": {"price": history["price"].tolist(), "visits": history["visits"].tolist()},
            "future": {"price": future["price"].tolist()}}
    response = fc.predict_checked({"series": [item]})
    expected = fc.predict(history.assign(unique_id="0"), future=future.assign(unique_id="0"))
    assert response["forecasts"][0]["median"] == pytest.approx(expected["y_hat"].tolist())
    shifted = fc.predict_checked({"series": [{**item, "future": {"price": (future["price"] + 3).tolist()}}]})
    assert shifted["forecasts"][0]["median"] != response["forecasts"][0]["median"]  # the future prices are read
    with pytest.raises(DataError, match=r"^request.series\[0\].future.price has 2 item\(s\); it needs 6, one per "
                                        r"forecast step$"):
        fc.predict_checked({"series": [{**item, "future": {"price": [1.0, 2.0]}}]})
    with pytest.raises(DataError, match=r"^request.series\[0\].covariates gives 'price'; this model reads "
                                        r"visits, price$"):
        fc.predict_checked({"series": [{**item, "covariates": {"price": item["covariates"]["price"]}}]})


def test_the_calibration_level_is_split_conformal_over_windows() -> None:
    assert conformal_level(0.9, windows=9) == pytest.approx(1.0)  # 9 windows: the largest residual
    assert conformal_level(0.1, windows=9) == pytest.approx(0.0)
    assert conformal_level(0.9, windows=99) == pytest.approx(0.9 * 100 / 99)
    assert conformal_level(0.1, windows=99) == pytest.approx(1 - 0.9 * 100 / 99)
    assert conformal_level(0.9, windows=4) == 1.0 and conformal_level(0.1, windows=4) == 0.0  # clipped

"""Forecast input: every malformed CSV gets its own one-line error; the forecast CLI end to end; datasets."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from rnnkit.cli import app
from rnnkit.data import load_dataset
from rnnkit.data.series import day_frequency, infer_frequency, read_series_csv
from rnnkit.errors import DataError
from rnnkit.tasks import Forecaster

runner = CliRunner()


def write(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def monthly_csv(tmp_path: Path, n: int = 48, series: int = 2) -> Path:
    t = np.arange(n)
    frames = [pd.DataFrame({"unique_id": f"shop{k}", "ds": pd.date_range("2015-01-01", periods=n, freq="MS"),
                            "y": 100 + 10 * k + t + 10 * np.sin(2 * np.pi * t / 12)}) for k in range(series)]
    path = tmp_path / "sales.csv"
    pd.concat(frames).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("text, message", [
    ("id,date,value\na,2020-01-01,1\n", "lacks column(s) unique_id, ds, y"),
    ("unique_id,ds,y\na,2020-01-01,1\na,2020-02-01,2\na,yesterday,3\n", "unparsable date 'yesterday' in column ds (row 3)"),
    ("unique_id,ds,y\na,2020-01-01,1\na,2020-02-01,2\na,2020-02-01,3\na,2020-03-01,4\n",
     "duplicated timestamp 2020-02-01 00:00:00 in series 'a'"),
    ("unique_id,ds,y\na,2020-01-01,1\na,2020-02-01,2\na,2020-03-01,3\na,2020-05-01,5\na,2020-06-01,6\n",
     "not evenly spaced (a gap or jump at 2020-05-01 00:00:00, after 2020-03-01 00:00:00; expected 2020-04-01"),
    ("unique_id,ds,y\na,2020-01-01,1\na,2020-02-01,two\na,2020-03-01,3\n", "non-numeric value 'two' in column y (row 2)"),
    ("unique_id,ds,y\na,2020-01-01,1\na,2020-02-01,\na,2020-03-01,3\n",
     "1 missing value(s) (NaN) in column y, first at row 2; fill them (e.g. interpolate) or drop those rows"),
    ("unique_id,ds,y\na,2020-01-01,1\na,2020-02-01,2\n", "only 2 timestamp(s); need at least 3"),
    ("", "is not a readable CSV"),
], ids=["missing-columns", "unparsable-date", "duplicated-timestamp", "gap", "non-numeric", "nan", "too-few-dates",
        "empty-file"])
def test_each_malformed_csv_has_its_own_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DataError) as info:
        read_series_csv(write(tmp_path, text))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_panel_too_short_to_train_is_refused_with_the_fix(tmp_path: Path) -> None:
    frame = read_series_csv(monthly_csv(tmp_path, n=20, series=1))
    with pytest.raises(DataError, match=r"every series is shorter than one season \+ horizon = 24 points, the least "
                                        r"that trains; use a shorter horizon"):
        Forecaster(horizon=12, progress=False).fit(frame)


def test_a_panel_too_short_to_hold_out_trains_on_everything_and_says_so(tmp_path: Path, caplog) -> None:
    data = monthly_csv(tmp_path, n=57, series=2)  # 57 < 58 = one season + horizon + the held-out span
    with caplog.at_level("WARNING", logger="rnnkit"):
        fc = Forecaster(horizon=12, hidden_size=8, ensemble=2, max_steps=30, progress=False).fit(read_series_csv(data))
    assert "needed to hold out windows" in caplog.text and "intervals not calibrated" in caplog.text
    assert fc.held_out is False and fc.metrics["held_out"] is False
    assert [r.steps for r in fc.train_results] == [30, 30]  # no early stopping: max_steps
    assert torch.equal(fc.model.calibration, torch.zeros(3))
    assert fc.predict().groupby("unique_id").size().to_dict() == {"shop0": 12, "shop1": 12}
    result = CliRunner().invoke(app, ["forecast", "train", str(data), "--out", str(tmp_path / "m.rnnkit"),
                                      "--max-steps", "5", "--ensemble", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "no series is long enough to hold out windows (58 points)" in " ".join(result.output.split())


def mixed_lengths_csv(tmp_path: Path, lengths: tuple[int, ...], seed: int = 0) -> Path:
    """A monthly panel ending together, series ``s<length>`` of the given lengths."""
    rng = np.random.default_rng(seed)
    frames = []
    for k, n in enumerate(lengths):
        t = np.arange(n)
        y = 100 + 20 * k + 0.3 * t + 10 * np.sin(2 * np.pi * (t - n) / 12) + rng.standard_normal(n)
        frames.append(pd.DataFrame({"unique_id": f"s{n}", "ds": pd.date_range(end="2020-12-01", periods=n, freq="MS"),
                                    "y": y}))
    path = tmp_path / "panel.csv"
    pd.concat(frames).to_csv(path, index=False)
    return path


def test_every_series_gets_a_forecast_short_ones_by_seasonal_naive(tmp_path: Path) -> None:
    frame = read_series_csv(mixed_lengths_csv(tmp_path, (126, 96, 50, 31, 29, 8)))
    fc = Forecaster(horizon=18, hidden_size=8, ensemble=2, max_steps=40, progress=False, minutes=None).fit(frame)
    assert fc.min_points == 30 and fc.too_short == ["s29", "s8"]  # one season (12) + horizon (18)
    forecast = fc.predict()
    assert forecast.groupby("unique_id").size().to_dict() == {f"s{n}": 18 for n in (126, 96, 50, 31, 29, 8)}
    assert fc.fallback == {"s29": "seasonal_naive", "s8": "naive"}
    by_series = {uid: rows for uid, rows in forecast.groupby("unique_id")}
    last_season = frame[frame["unique_id"] == "s29"]["y"].to_numpy()[-12:]
    np.testing.assert_allclose(by_series["s29"]["y_hat"], np.resize(last_season, 18))  # the last year repeated
    assert by_series["s29"]["y_hat_q10"].isna().all()  # no interval is claimed for a fallback
    for uid in ("s126", "s50", "s31"):  # the model's, with an ordered interval
        rows = by_series[uid]
        assert (rows["y_hat_q10"] <= rows["y_hat"]).all() and (rows["y_hat"] <= rows["y_hat_q90"]).all()


@pytest.mark.slow
def test_cli_panel_with_a_50_point_series_and_default_options(tmp_path: Path) -> None:
    lengths = (126, 110, 96, 80, 64, 50, 20)  # h=18: the default lookback 54 + 18 = 72 exceeds 64, 50 and 20
    data, bundle, out = mixed_lengths_csv(tmp_path, lengths), tmp_path / "panel.rnnkit", tmp_path / "forecast.csv"
    result = runner.invoke(app, ["forecast", "train", str(data), "--out", str(bundle), "--horizon", "18"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())  # rich wraps long lines
    assert "1 series too short to train on (fewer than 30 points, one season + horizon)" in said
    result = runner.invoke(app, ["forecast", "predict", str(bundle), "--out", str(out)])
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())
    assert "1 series too short for the model (fewer than 30 points): forecast by seasonal naive" in said
    forecast = pd.read_csv(out)
    assert forecast.groupby("unique_id").size().to_dict() == {f"s{n}": 18 for n in lengths}
    model_rows = forecast[forecast["unique_id"] != "s20"]
    assert model_rows[["y_hat_q10", "y_hat_q90"]].notna().all().all()
    truth = 100 + 20 * 5 + 0.3 * np.arange(50, 68) + 10 * np.sin(2 * np.pi * np.arange(18) / 12)  # s50 continued
    error = np.abs(forecast[forecast["unique_id"] == "s50"]["y_hat"].to_numpy() - truth).mean()
    assert error < 4, error  # amplitude 10, noise 1: the season is learnt, not guessed


def test_missing_covariate_column_and_nan_covariate(tmp_path: Path) -> None:
    path = write(tmp_path, "unique_id,ds,y,price\na,2020-01-01,1,3\na,2020-02-01,2,\na,2020-03-01,3,4\n")
    with pytest.raises(DataError, match="lacks column"):
        read_series_csv(path, covariates=("promo",))
    with pytest.raises(DataError, match="missing value.*in column price"):
        read_series_csv(path, covariates=("price",))


def test_two_column_csv_is_one_series(tmp_path: Path) -> None:
    frame = read_series_csv(write(tmp_path, "month,passengers\n1949-01,112\n1949-02,118\n1949-03,132\n", "air.csv"))
    assert list(frame.columns) == ["unique_id", "ds", "y"] and set(frame["unique_id"]) == {"air"}


def test_mixed_frequencies_are_refused(tmp_path: Path) -> None:
    frame = pd.DataFrame({"unique_id": ["m"] * 40 + ["q"] * 40,
                          "ds": list(pd.date_range("2000-01-01", periods=40, freq="MS"))
                          + list(pd.date_range("2000-01-01", periods=40, freq="QS")), "y": np.arange(80.0)})
    with pytest.raises(DataError, match="different frequencies"):
        Forecaster(horizon=2, lookback=4, progress=False).fit(frame)


@pytest.mark.slow
def test_cli_train_predict_backtest(tmp_path: Path) -> None:
    data = monthly_csv(tmp_path)
    bundle, out, plot = tmp_path / "sales.rnnkit", tmp_path / "forecast.csv", tmp_path / "forecast.png"
    fast = ["--horizon", "6", "--hidden-size", "8", "--ensemble", "1", "--minutes", "0.05"]
    result = runner.invoke(app, ["forecast", "train", str(data), "--out", str(bundle), *fast])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["forecast", "predict", str(bundle), "--out", str(out), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    forecast = pd.read_csv(out)
    assert list(forecast.columns) == ["unique_id", "ds", "y_hat_q10", "y_hat", "y_hat_q90"]
    assert forecast.groupby("unique_id").size().to_dict() == {"shop0": 6, "shop1": 6}
    assert forecast["ds"].iloc[0] == "2019-01-01" and plot.read_bytes()[:4] == b"\x89PNG"
    metrics, bt_plot = tmp_path / "bt.csv", tmp_path / "bt.png"
    result = runner.invoke(app, ["forecast", "backtest", str(data), "--windows", "2", "--season-length", "12",
                                 "--baselines", "naive,seasonal_naive",
                                 "--out", str(metrics), "--plot", str(bt_plot), *fast])
    assert result.exit_code == 0, result.output
    assert "seasonal_naive" in result.stdout and "interval covered" in result.stdout
    assert set(pd.read_csv(metrics)["window"]) == {1, 2} and bt_plot.read_bytes()[:4] == b"\x89PNG"


def test_cli_bad_csv_is_one_line_exit_2(tmp_path: Path) -> None:
    data = write(tmp_path, "unique_id,ds,y\na,2020-01-01,1\na,2020-01-01,2\na,2020-03-01,3\n")
    result = runner.invoke(app, ["forecast", "train", str(data), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error: ") and "duplicated timestamp" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("name, series", [("sunspots", 1), ("co2", 1), ("elnino", 1), ("macrodata", 1),
                                          ("airpassengers", 1), ("stocks", 5)])
def test_datasets_load_as_long_frames(name: str, series: int) -> None:
    needs = {"airpassengers": ("statsforecast", "sktime", "aeon"), "stocks": ("vega_datasets",)}.get(name, ())
    if needs and not any(importlib.util.find_spec(m) for m in needs):
        pytest.skip(f"{name} needs one of {', '.join(needs)} (pip install 'rnnkit[bench]')")
    frame = load_dataset(name)
    assert list(frame.columns) == ["unique_id", "ds", "y"] and frame["unique_id"].nunique() == series
    assert not frame["y"].isna().any()
    if name == "airpassengers":
        assert len(frame) == 144 and frame["y"].iloc[0] == 112 and frame["ds"].iloc[0] == pd.Timestamp("1949-01-01")


def test_day_frequency_names_what_pandas_infers_or_nothing() -> None:
    rng = np.random.default_rng(0)
    read = ("D", "2D", "W-SUN", "W-WED", "2W-MON", "MS", "ME", "2MS", "3ME", "QS-JAN", "QS-FEB", "QE-DEC", "QE-NOV",
            "YS-JAN", "YE-DEC", "YS-JUL", "2YS-JAN")
    for freq in read + ("B", "BMS", "BME", "SMS", "4W-SUN", "5D"):
        for start in ("2000-01-01", "2001-02-28", "2020-02-29", "2023-07-15", "2024-03-31"):
            for n in (3, 5, 40):
                regular = pd.date_range(start, periods=n, freq=freq).values.astype("datetime64[D]")
                shifted = regular.copy()
                shifted[rng.integers(n)] += 1
                for days in (regular, np.delete(regular, n // 2), shifted, regular[::-1]):
                    try:
                        pandas = infer_frequency(pd.DatetimeIndex(days), "")
                    except DataError:
                        pandas = None
                    assert day_frequency(days) in (None, pandas), (freq, start, n, days)
                if freq in read:  # the serving path reads these itself
                    assert day_frequency(regular) == infer_frequency(pd.DatetimeIndex(regular), "")

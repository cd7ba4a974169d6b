"""`rnnkit forecast train | predict | backtest`: forecasting from CSV files."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any, Optional

import pandas as pd
import typer
from rich.console import Console

from ..data import load_dataset
from ..data.csv import parse_dates, read_csv
from ..data.series import read_series_csv
from ..errors import DataError, RnnkitError
from ..files import write_csv
from ..plotting import plot_forecast
from ..tasks.forecast import Forecaster, ForecasterConfig
from ..tasks.forecast_eval import backtest_plot_frames, coverage_report
from . import create_app
from .options import CELL_HELP, BundleOut, TrainingOptions, keyword_option, option_group, training_options

app = create_app("Forecast time series (CSV: unique_id, ds, y [, covariates]; or one date,value series).")
console = Console(stderr=True)

Data = Annotated[Path, typer.Argument(help="CSV with columns unique_id, ds, y (or date,value).", show_default=False)]
DayFirst = Annotated[Optional[bool], typer.Option(
    "--dayfirst/--monthfirst", help="Read dates such as 01/02/2000 day-first or month-first; "
    "by default the data decides, and a file that leaves it open is refused.", show_default=False)]


def _network_options() -> list[inspect.Parameter]:
    """The model options that ``train`` and ``backtest`` share."""
    option = keyword_option
    return [
        option("horizon", Annotated[int, typer.Option(help="Steps to forecast.")], 12),
        option("lookback", Annotated[Optional[int], typer.Option(help="Input window; default 3 x horizon.")], None),
        option("model", Annotated[str, typer.Option(
            help="auto (esrnn for 20+ series without covariates, else rnn), rnn, or esrnn "
                 "(learned per-series Holt-Winters level/season under a global net).")], "auto"),
        option("cell", Annotated[str, typer.Option(help=CELL_HELP)], "lstm"),
        option("head", Annotated[str, typer.Option(
            help="decoder (a recurrent decoder over the horizon) or direct (all steps at once).")], "decoder"),
        option("hidden_size", Annotated[int, typer.Option(help="Hidden units.")], 32),
        option("quantiles", Annotated[str, typer.Option(
            help="Comma-separated quantiles; 0.5 is the point forecast.")], "0.1,0.5,0.9"),
        option("past", Annotated[str, typer.Option(
            help="Comma-separated past-covariate columns (known up to the forecast start).")], ""),
        option("future", Annotated[str, typer.Option(
            help="Comma-separated future-covariate columns (known for the horizon too).")], ""),
        option("ensemble", Annotated[int, typer.Option(help="Models from different seeds, averaged.")], 3),
    ]


def _network_fields(quantiles: str, past: str, future: str, **fields: Any) -> dict[str, Any]:
    """The :class:`ForecasterConfig` fields that the model options set."""
    try:
        levels = tuple(float(q) for q in quantiles.split(","))
    except ValueError:
        raise RnnkitError(f"--quantiles must be numbers separated by commas, got {quantiles!r}") from None
    columns = lambda text: tuple(c.strip() for c in text.split(",") if c.strip())
    return dict(fields, quantiles=levels, past_covariates=columns(past), future_covariates=columns(future))


#: ``--horizon``, ``--lookback``, ``--model``, ``--cell``, ... handed to the command as ``network``: its config fields
network_options = option_group("network", _network_options(), _network_fields)


@app.command()
@training_options(minutes=2.0)
@network_options
def train(
    data: Data,
    out: BundleOut,
    training: TrainingOptions,
    network: dict[str, Any],
    dayfirst: DayFirst = None,
) -> None:
    """Train a global forecaster on every series in DATA and write a bundle."""
    config = ForecasterConfig(**network, **training.config_fields())
    frame = read_series_csv(data, covariates=config.past_covariates + config.future_covariates, dayfirst=dayfirst)
    forecaster = Forecaster(config).fit(frame, **training.fit_options())
    path = forecaster.save(out)
    if forecaster.held_out:
        losses = ", ".join(f"{r.best_val_loss:.4f}" for r in forecaster.train_results)
        console.print(f"trained {len(forecaster.train_results)} model(s), best validation loss {losses}; bundle: {path}")
    else:
        console.print(f"trained {len(forecaster.train_results)} model(s) on every window: no series is long enough to "
                      f"hold out windows ({forecaster.holdout_points} points), so no early "
                      f"stopping and uncalibrated intervals; bundle: {path}")
    if forecaster.too_short:
        console.print(f"{len(forecaster.too_short)} series too short to train on (fewer than {forecaster.min_points} "
                      f"points, one season + horizon): predict forecasts them by seasonal naive")


@app.command()
def predict(
    bundle: Annotated[Path, typer.Argument(help="A forecaster bundle.", show_default=False)],
    out: Annotated[Path, typer.Option(help="CSV to write: unique_id, ds, y_hat, y_hat_qNN.")],
    data: Annotated[Optional[Path], typer.Option(help="Newer data to forecast from (default: the training data).")] = None,
    future: Annotated[Optional[Path], typer.Option(help="CSV of future covariates: unique_id, ds, columns.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="PNG plot of history and forecast.")] = None,
    dayfirst: DayFirst = None,
) -> None:
    """Forecast the horizon after each series ends."""
    forecaster = Forecaster.load(bundle)
    covariates = forecaster.covariates
    frame = read_series_csv(data, covariates=covariates, dayfirst=dayfirst) if data else None
    future_frame = _read_future(future, dayfirst) if future else None
    forecast = forecaster.predict(frame, future=future_frame)
    write_csv(forecast, out)
    if plot:
        history = frame if frame is not None else forecaster.history_frame()
        plot_forecast(history, forecast, plot, title="forecast:")
    console.print(f"wrote {len(forecast)} rows to {out}" + (f" and a plot to {plot}" if plot else ""))
    if forecaster.fallback:
        naive = sum(method == "naive" for method in forecaster.fallback.values())
        console.print(f"{len(forecaster.fallback)} series too short for the model (fewer than {forecaster.min_points} "
                      f"points): forecast by seasonal naive" + (f" ({naive} by naive: shorter than a season)" if naive
                                                                else "") + ", without an interval")


@app.command()
@network_options
def backtest(
    data: Data,
    network: dict[str, Any],
    windows: Annotated[int, typer.Option(help="Rolling-origin windows, each one horizon long.")] = 3,
    season_length: Annotated[int, typer.Option(help="Season for seasonal naive and MASE.")] = 1,
    minutes: Annotated[float, typer.Option(help="Wall-clock training budget per window.")] = 2.0,
    baselines: Annotated[str, typer.Option(help="Comma-separated: naive, seasonal_naive, Theta, AutoETS, AutoARIMA; "
                                           "auto = all three statsforecast models when installed.")]
    = "naive,seasonal_naive,auto",
    out: Annotated[Optional[Path], typer.Option(help="CSV of per-window, per-series, per-model metrics.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="PNG: history, backtest forecasts and the actual values.")] = None,
    dayfirst: DayFirst = None,
) -> None:
    """Refit before each of the last WINDOWS horizons; score rnnkit next to naive, seasonal naive and
    (when statsforecast is installed) Theta, AutoETS and AutoARIMA."""
    config = ForecasterConfig(**network, minutes=minutes)
    frame = read_series_csv(data, covariates=config.past_covariates + config.future_covariates, dayfirst=dayfirst)
    chosen = tuple(b.strip() for b in baselines.split(",") if b.strip())
    result = Forecaster(config).backtest(frame, windows=windows, season_length=season_length, baselines=chosen)
    typer.echo(result.summary().to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    typer.echo(coverage_report(result, config.quantiles))
    if out:
        write_csv(result.metrics, out)
    if plot:
        forecasts, actual = backtest_plot_frames(result)
        starts = frame["unique_id"].map(forecasts.groupby("unique_id")["ds"].min())
        plot_forecast(frame[frame["ds"] < starts], None, plot, actual=actual, backtest=forecasts, title="backtest:")


@app.command()
def dataset(
    name: Annotated[str, typer.Argument(help="airpassengers, co2, elnino, macrodata, stocks or sunspots.",
                                        show_default=False)],
    out: Annotated[Path, typer.Option(help="CSV to write: unique_id, ds, y.")],
) -> None:
    """Write a bundled real dataset (installed offline with a package) as a long CSV."""
    frame = load_dataset(name)
    write_csv(frame, out)
    console.print(f"wrote {name}: {frame['unique_id'].nunique()} series, {len(frame)} rows, to {out}")


def _read_future(path: Path, dayfirst: Optional[bool]) -> pd.DataFrame:
    frame = read_csv(path, expect="columns unique_id, ds and the future covariates")
    missing = [c for c in ("unique_id", "ds") if c not in frame.columns]
    if missing:
        raise DataError(f"{path} lacks column(s) {', '.join(missing)}; it needs unique_id, ds and the covariates")
    frame["ds"] = parse_dates(frame["ds"], dayfirst=dayfirst, groups=frame["unique_id"], source=str(path))
    return frame

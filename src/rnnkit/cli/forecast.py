"""`rnnkit forecast train | predict | backtest`: forecasting from CSV files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ..bundle import read_bundle
from ..data.series import read_series_csv
from ..errors import RnnkitError
from ..files import write_csv
from ..plotting import plot_forecast
from ..tasks.forecast import Forecaster, ForecasterConfig
from . import create_app

app = create_app("Forecast time series (CSV: unique_id, ds, y; or one date,value series).")
console = Console(stderr=True)

Data = Annotated[Path, typer.Argument(help="CSV with columns unique_id, ds, y (or date,value).", show_default=False)]
Horizon = Annotated[int, typer.Option(help="Steps to forecast.")]
Lookback = Annotated[Optional[int], typer.Option(help="Input window; default 3 x horizon.")]
Cell = Annotated[str, typer.Option(help="Recurrent cell: lstm, gru or rnn.")]
Quantiles = Annotated[str, typer.Option(help="Comma-separated quantiles; 0.5 is the point forecast.")]
Minutes = Annotated[float, typer.Option(help="Wall-clock training budget.")]


def _config(horizon: int, lookback: Optional[int], cell: str, hidden_size: int, quantiles: str, minutes: float,
            seed: int) -> ForecasterConfig:
    try:
        levels = tuple(float(q) for q in quantiles.split(","))
    except ValueError:
        raise RnnkitError(f"--quantiles must be numbers separated by commas, got {quantiles!r}") from None
    return ForecasterConfig(horizon=horizon, lookback=lookback or 3 * horizon, cell=cell, hidden_size=hidden_size,
                            quantiles=levels, minutes=minutes, seed=seed)


@app.command()
def train(
    data: Data,
    out: Annotated[Path, typer.Option(help="Bundle directory to write.")],
    horizon: Horizon = 12,
    lookback: Lookback = None,
    cell: Cell = "lstm",
    hidden_size: Annotated[int, typer.Option(help="Hidden units.")] = 64,
    quantiles: Quantiles = "0.1,0.5,0.9",
    minutes: Minutes = 2.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Train a global forecaster on every series in DATA and write a bundle."""
    config = _config(horizon, lookback, cell, hidden_size, quantiles, minutes, seed)
    frame = read_series_csv(data)
    forecaster = Forecaster(config).fit(frame)
    path = forecaster.save(out)
    result = forecaster.train_result
    console.print(f"trained {result.steps} steps ({result.stopped}), best validation loss "
                  f"{result.best_val_loss:.4f}; bundle: {path}")


@app.command()
def predict(
    bundle: Annotated[Path, typer.Argument(help="A forecaster bundle.", show_default=False)],
    out: Annotated[Path, typer.Option(help="CSV to write: unique_id, ds, y_hat, y_hat_qNN.")],
    data: Annotated[Optional[Path], typer.Option(help="Newer data to forecast from (default: the training data).")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="PNG plot of history and forecast.")] = None,
) -> None:
    """Forecast the horizon after each series ends."""
    forecaster = _load_forecaster(bundle)
    frame = read_series_csv(data) if data else None
    forecast = forecaster.predict(frame)
    write_csv(forecast, out)
    if plot:
        history = frame if frame is not None else forecaster.history_frame()
        plot_forecast(history, forecast, plot, title="forecast:")
    console.print(f"wrote {len(forecast)} rows to {out}" + (f" and a plot to {plot}" if plot else ""))


@app.command()
def backtest(
    data: Data,
    horizon: Horizon = 12,
    windows: Annotated[int, typer.Option(help="Rolling-origin windows, each one horizon long.")] = 3,
    season_length: Annotated[int, typer.Option(help="Season for seasonal naive and MASE.")] = 1,
    lookback: Lookback = None,
    cell: Cell = "lstm",
    hidden_size: Annotated[int, typer.Option(help="Hidden units.")] = 64,
    quantiles: Quantiles = "0.1,0.5,0.9",
    minutes: Annotated[float, typer.Option(help="Training budget per window.")] = 1.0,
    out: Annotated[Optional[Path], typer.Option(help="CSV of per-window metrics.")] = None,
) -> None:
    """Refit before each of the last WINDOWS horizons and score the forecasts against naive baselines."""
    config = _config(horizon, lookback, cell, hidden_size, quantiles, minutes, 0)
    report = Forecaster(config).backtest(read_series_csv(data), windows=windows, season_length=season_length)
    typer.echo(report.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if out:
        write_csv(report, out)


def _load_forecaster(path: Path) -> Forecaster:
    bundle = read_bundle(path)
    if bundle.model_type != "forecaster":
        raise RnnkitError(f"{path} holds a {bundle.model_type!r} model, not a forecaster")
    return Forecaster.from_bundle(bundle)

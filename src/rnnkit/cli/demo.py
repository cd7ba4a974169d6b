"""`rnnkit demo`: a tour on real data that installs with the package. Later tasks add their part."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from ..bundle import load
from ..data import DATASETS, load_dataset
from ..plotting import plot_forecast
from ..tasks.forecast import Forecaster, ForecasterConfig, evaluate_forecast

console = Console()


def demo(
    out: Annotated[Path, typer.Option(help="Directory for the plot and the model bundle.")] = Path("demo-output"),
    minutes: Annotated[float, typer.Option(help="Training budget of the forecaster, in minutes.")] = 1.5,
    progress: Annotated[bool, typer.Option(help="Show the training progress bar.")] = True,
) -> None:
    """Forecast the last sunspot cycle with an LSTM, next to naive baselines; write a plot and a bundle."""
    out.mkdir(parents=True, exist_ok=True)
    forecast_sunspots(out, minutes, progress)


def forecast_sunspots(out: Path, minutes: float, progress: bool) -> None:
    dataset = DATASETS["sunspots"]
    frame = load_dataset("sunspots")
    horizon = dataset.season_length  # one solar cycle, ~11 years
    train, test = frame.iloc[:-horizon], frame.iloc[-horizon:]
    console.rule(f"[bold]Forecasting: {dataset.description}")
    console.print(f"LSTM trained on {len(train)} years, forecasting the last {horizon} ({test.ds.dt.year.iloc[0]}-"
                  f"{test.ds.dt.year.iloc[-1]}), budget {minutes:g} min")
    config = ForecasterConfig(horizon=horizon, lookback=3 * horizon, hidden_size=64, minutes=minutes,
                              progress=progress)
    forecaster = Forecaster(config).fit(train)
    forecast = forecaster.predict()
    scores = evaluate_forecast(test["y"].to_numpy(), forecast, train["y"].to_numpy(), config.quantiles, horizon)

    table = Table(title=f"sunspots, last {horizon} years held out")
    for column in ("model", "MAE", "sMAPE %", "MASE"):
        table.add_column(column, justify="right" if column != "model" else "left")
    table.add_row("rnnkit LSTM (median)", f"{scores['mae']:.1f}", f"{scores['smape']:.1f}", f"{scores['mase']:.2f}")
    scale = scores["mae"] / scores["mase"]  # MASE = MAE / in-sample seasonal-naive MAE
    table.add_row("naive (last value)", f"{scores['naive_mae']:.1f}", "", f"{scores['naive_mae'] / scale:.2f}")
    table.add_row("seasonal naive (11 y)", f"{scores['seasonal_naive_mae']:.1f}", "",
                  f"{scores['seasonal_naive_mae'] / scale:.2f}")
    console.print(table)
    console.print(f"80 % interval covers {scores['coverage']:.0%} of the held-out years")

    bundle = forecaster.save(out / "sunspots.rnnkit")
    reloaded = load(bundle).predict()
    assert reloaded["y_hat"].equals(forecast["y_hat"]), "bundle round trip changed the forecast"
    plot = plot_forecast(train, forecast, out / "sunspots_forecast.png", actual=test,
                         title="rnnkit LSTM forecast:")
    console.print(f"plot: {plot}\nbundle: {bundle} (reloaded: identical forecast)")
    pd.DataFrame([scores]).to_json(out / "sunspots_metrics.json", orient="records", indent=2)

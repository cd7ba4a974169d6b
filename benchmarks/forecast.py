"""Forecasting benchmark: rnnkit against NeuralForecast's LSTM, statsforecast AutoARIMA/AutoETS and seasonal naive.

Every model sees the same rolling-origin splits in one process run: on each dataset the last
``windows`` horizons are held out one at a time (on AirPassengers the last window is the
classic "last 12 months held out"). Per dataset it prints MASE, sMAPE, MAE, fit time and
80 % interval coverage, then the ratios the issue targets, and writes
``benchmarks/results/forecast.json`` (``forecast_validation.json`` with ``--validation``).

    python benchmarks/forecast.py               # full run on the test windows
    python benchmarks/forecast.py --quick       # AirPassengers, one window, short training (< 1 min)
    python benchmarks/forecast.py --validation  # the same, before the test windows: for choosing

``--validation`` drops each series' last ``windows x horizon`` points (the test windows) before
anything sees the data and scores the windows before them, so every choice of rnnkit's
defaults is made on validation windows; the test windows are scored once per released
configuration. NeuralForecast's LSTM runs at its documented defaults or better (see
``neuralforecast_window``); its AutoLSTM (a hyperparameter search of many such fits per window)
does not fit the budget of a 2-core machine and is not run. Competitors missing from the
environment (``pip install 'rnnkit[bench]'``) are skipped and named in the output.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from rnnkit.data import DATASETS, load_dataset
from rnnkit.data.series import calendar_features, future_dates
from rnnkit.tasks import Forecaster, ForecasterConfig, backtest
from rnnkit.tasks.forecast_eval import rolling_splits, score_window

#: horizon = one season (sunspots: one ~11-year cycle). co2 is taken as monthly means of the
#: weekly series: AutoARIMA with a 52-week season takes minutes of CPU per fit on 2,000 weeks.
#: GOOG has only 68 months of prices, so the stock model looks back 12 months (3 held-out years
#: leave GOOG 32).
SPECS = {
    "airpassengers": dict(horizon=12, season=12),
    "sunspots": dict(horizon=11, season=11),
    "co2": dict(horizon=12, season=12, resample="MS"),
    "elnino": dict(horizon=12, season=12),
    "stocks": dict(horizon=12, season=12, lookback=12),
}
RESULTS = Path(__file__).parent / "results" / "forecast.json"
VALIDATION_RESULTS = Path(__file__).parent / "results" / "forecast_validation.json"


def neuralforecast_model(train: pd.DataFrame, horizon: int, lookback: int, freq: str, steps: int, seed: int = 1):
    """NeuralForecast's LSTM at its defaults or better, fitted: its default ``max_steps`` (1000),
    early stopping on the last horizon of each series (checked every 100 steps, its default
    ``val_check_steps``, patience 3), rnnkit's lookback as ``input_size`` and rnnkit's calendar
    features as future exogenous columns (``futr_exog_list``).

    Returns the fitted ``NeuralForecast``, the fit's seconds and ``inputs(frame)``: the keyword
    arguments of ``predict`` that forecast after each series of ``frame`` (its history with the
    calendar columns, and the horizon's calendar as ``futr_df``)."""
    from neuralforecast import NeuralForecast
    from neuralforecast.models import LSTM

    calendar = lambda ds: pd.DataFrame(calendar_features(pd.DatetimeIndex(ds), freq),  # noqa: E731
                                       index=ds.index).add_prefix("calendar_")

    def inputs(frame: pd.DataFrame) -> dict:
        frame = frame[["unique_id", "ds", "y"]]
        if calendar(frame["ds"].iloc[:1]).shape[1] == 0:  # no calendar at this frequency (yearly)
            return {"df": frame}
        futr = pd.concat([pd.DataFrame({"unique_id": uid, "ds": future_dates(group["ds"].iloc[-1], freq, horizon)})
                          for uid, group in frame.groupby("unique_id", sort=False)], ignore_index=True)
        return {"df": pd.concat([frame, calendar(frame["ds"])], axis=1),
                "futr_df": pd.concat([futr, calendar(futr["ds"])], axis=1)}

    history = inputs(train)
    exog = [c for c in history["df"].columns if c.startswith("calendar_")] or None
    model = LSTM(h=horizon, input_size=lookback, futr_exog_list=exog, max_steps=steps, val_check_steps=100,
                 early_stop_patience_steps=3, random_seed=seed, accelerator="cpu",
                 enable_progress_bar=False, enable_model_summary=False, logger=False)
    nf = NeuralForecast(models=[model], freq=freq)
    start = time.perf_counter()
    nf.fit(df=history["df"], val_size=horizon)
    seconds = time.perf_counter() - start
    return nf, seconds, inputs


def neuralforecast_window(train: pd.DataFrame, horizon: int, lookback: int, freq: str, steps: int, seed: int = 1):
    """NeuralForecast's LSTM (:func:`neuralforecast_model`) fitted on ``train`` and forecast after it."""
    nf, seconds, inputs = neuralforecast_model(train, horizon, lookback, freq, steps, seed)
    out = nf.predict(futr_df=inputs(train).get("futr_df")).reset_index()
    return pd.DataFrame({"unique_id": out["unique_id"].astype(str), "ds": out["ds"], "y_hat": out["LSTM"]}), seconds


def run_dataset(name: str, args: argparse.Namespace) -> dict:
    spec = SPECS[name]
    frame = load_dataset(name)
    if "resample" in spec:
        frame = (frame.set_index("ds").groupby("unique_id")["y"].resample(spec["resample"]).mean()
                 .reset_index()[["unique_id", "ds", "y"]])
    if args.validation:  # tuning mode: the test windows are cut off before anything sees the data
        held_out = args.windows * spec["horizon"]
        needed = held_out + spec.get("lookback", 3 * spec["horizon"]) + spec["horizon"]
        frame = frame.groupby("unique_id", group_keys=False)[frame.columns].apply(
            lambda g: g.iloc[:-held_out] if len(g) - held_out >= needed else g.iloc[:0]).reset_index(drop=True)
    options = {"horizon": spec["horizon"], "lookback": spec.get("lookback"), "progress": False, **args.option}
    if args.quick:
        options.update(max_steps=100, ensemble=1)
    config = ForecasterConfig(**options)
    stats = tuple(m for m in ("AutoARIMA", "AutoETS") if m in args.models) if _installed("statsforecast") else ()
    result = backtest(Forecaster(config), frame, windows=args.windows, season_length=spec["season"],
                      baselines=("seasonal_naive",) + stats)
    metrics = [result.metrics]
    if "NF-LSTM" in args.models and _installed("neuralforecast"):
        freq = spec.get("resample", DATASETS[name].frequency)
        for window, train, actual in rolling_splits(frame, spec["horizon"], args.windows):
            lookback = config.lookback or 3 * spec["horizon"]  # "auto" settles it in fit: rnn's on these few series
            forecast, seconds = neuralforecast_window(train, spec["horizon"], lookback, freq,
                                                      50 if args.quick else 1000)
            rows, _ = score_window(train, actual, forecast, config.quantiles, spec["season"])
            metrics.append(pd.DataFrame([{"window": window, "model": "NF-LSTM", "fit_s": seconds, **r} for r in rows]))
    table = pd.concat(metrics, ignore_index=True)
    # A fit is one call per window: sum the per-series rows' shared fit time once per window.
    fits = table.groupby(["model", "window"])["fit_s"].first().groupby("model").mean()
    per_model = table.drop(columns=["unique_id", "cutoff", "fit_s"]).groupby("model").mean(numeric_only=True)
    per_model["fit_s"] = fits
    last = table[table["window"] == args.windows].groupby("model")[["mae", "smape"]].mean()
    per_model["last_window_mae"], per_model["last_window_smape"] = last["mae"], last["smape"]
    return {"series": int(frame["unique_id"].nunique()), "points": int(len(frame)), **spec, "options": options,
            "models": json.loads(per_model.drop(columns=["window"]).to_json(orient="index"))}


def summarise(results: dict) -> dict:
    models = sorted({m for r in results.values() for m in r["models"]})
    mean = {m: {k: float(np.mean([r["models"][m][k] for r in results.values() if m in r["models"]
                                  and r["models"][m].get(k) is not None]))
                for k in ("mase", "smape", "fit_s")} for m in models}
    coverage = [r["models"]["rnnkit"]["coverage"] for r in results.values()]
    summary = {"mean_over_datasets": mean, "rnnkit_coverage_80": float(np.mean(coverage))}
    ours = mean["rnnkit"]
    for rival in ("NF-LSTM", "AutoARIMA", "AutoETS", "seasonal_naive"):
        if rival in mean:
            summary[f"mase_ratio_rnnkit_over_{rival}"] = ours["mase"] / mean[rival]["mase"]
            summary[f"fit_time_ratio_{rival}_over_rnnkit"] = mean[rival]["fit_s"] / ours["fit_s"]
    return summary


def print_report(results: dict, summary: dict) -> None:
    for name, r in results.items():
        table = pd.DataFrame(r["models"]).T[["mase", "smape", "mae", "coverage", "fit_s"]].sort_values("mase")
        print(f"\n== {name} ({r['series']} series, {r['points']} points, horizon {r['horizon']}, season {r['season']})")
        print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    if summary is None:
        return
    print("\n== mean over datasets")
    print(pd.DataFrame(summary["mean_over_datasets"]).T.sort_values("mase").to_string(float_format=lambda v: f"{v:.3f}"))
    for key, value in summary.items():
        if key != "mean_over_datasets":
            print(f"{key}: {value:.3f}")


def merge(paths: list[Path], out: Path) -> None:
    """One report from several result files: their datasets side by side, the summary recomputed."""
    payloads = [json.loads(path.read_text()) for path in paths]
    results = {name: r for p in payloads for name, r in p["datasets"].items()}
    summary = summarise(results)
    print_report(results, summary)
    merged = {**payloads[0], "datasets": results, "summary": summary, "merged_from": [str(p) for p in paths]}
    out.write_text(json.dumps(merged, indent=2))
    print(f"wrote {out}")


def quiet_neuralforecast() -> None:
    """NeuralForecast (and Lightning) without their warnings and log lines, ids as a column."""
    os.environ.setdefault("NIXTLA_ID_AS_COL", "1")
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


def _installed(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        print(f"({module} is not installed: skipped; pip install 'rnnkit[bench]')")
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="AirPassengers, one window, short training")
    parser.add_argument("--validation", action="store_true", help="shift before the test windows (for tuning)")
    parser.add_argument("--datasets", default=",".join(SPECS), help="comma-separated subset")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--models", default="NF-LSTM,AutoARIMA,AutoETS", help="competitors besides seasonal naive")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same for every model")
    parser.add_argument("--out", type=Path, help=f"default {RESULTS}; with --validation {VALIDATION_RESULTS}")
    parser.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                        help="override a ForecasterConfig default (e.g. hidden_size=64), for tuning")
    parser.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                        help="combine result files of runs over different datasets (run concurrently on a "
                             "shared machine) into one report; nothing is trained")
    args = parser.parse_args()
    args.out = args.out or (VALIDATION_RESULTS if args.validation else RESULTS)
    if args.merge:
        return merge(args.merge, args.out)
    args.models = args.models.split(",")
    args.option = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.option)}
    if args.quick:
        args.datasets, args.windows = "airpassengers", 1
    torch.set_num_threads(args.threads)
    quiet_neuralforecast()
    results = {}
    for name in args.datasets.split(","):
        start = time.perf_counter()
        results[name] = run_dataset(name, args)
        print(f"{name}: done in {time.perf_counter() - start:.0f} s", flush=True)
        print_report({name: results[name]}, None)
        summary = summarise(results)  # written after every dataset: a long run leaves what it measured
        payload = {"mode": "quick" if args.quick else "validation" if args.validation else "test",
                   "windows": args.windows, "threads": args.threads, "torch": torch.__version__,
                   "datasets": results, "summary": summary}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=2))
    print_report({}, summary)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

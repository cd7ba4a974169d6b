"""Forecasting: a global LSTM/GRU/RNN over many series, direct multi-horizon quantile output.

A thin estimator (``fit`` / ``predict`` / ``backtest`` / ``save``) over a plain torch
module: the :class:`~rnnkit.topologies.ManyToOne` topology reads a window of
``lookback`` scaled values and emits all ``horizon`` steps for every quantile at once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from .. import metrics
from ..bundle import Bundle, load_weights, register, save_bundle
from ..data.series import (SeriesScaler, check_length, future_dates, infer_frequency, sliding_windows,
                           split_series, validate_long_frame)
from ..errors import RnnkitError
from ..inspection import InspectionInput, parse_series
from ..layers import Recurrent
from ..topologies import ManyToOne
from ..training import TrainConfig, TrainResult, fit

MODEL_TYPE = "forecaster"


@dataclass(frozen=True, kw_only=True)
class ForecasterConfig:
    """Everything that defines a forecaster; saved in its bundle as ``config.json``."""

    horizon: int = 12  # steps forecast at once, from one window
    lookback: int = 36  # input window; about three seasons sees the season repeat
    cell: str = "lstm"  # "lstm", "gru" or "rnn"
    hidden_size: int = 64  # small series overfit wider models
    num_layers: int = 1
    dropout: float = 0.0
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)  # 0.5 is the point forecast; 0.1-0.9 an 80 % interval
    epochs: int = 300  # an upper bound: early stopping or the time budget usually ends first
    minutes: Optional[float] = 2.0  # wall-clock budget of one fit
    batch_size: int = 32
    lr: float = 3e-3
    patience: Optional[int] = 30  # validations (epochs) without improvement before stopping
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "quantiles", tuple(sorted(float(q) for q in self.quantiles)))
        for name in ("horizon", "lookback", "hidden_size", "num_layers", "epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise RnnkitError(f"{name} must be a positive integer, got {value!r}")
        if 0.5 not in self.quantiles or any(not 0 < q < 1 for q in self.quantiles):
            raise RnnkitError(f"quantiles must lie in (0, 1) and include 0.5, got {list(self.quantiles)}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["quantiles"] = list(self.quantiles)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ForecasterConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise RnnkitError(f"unknown forecaster option(s): {', '.join(sorted(unknown))}")
        return cls(**{**data, "quantiles": tuple(data.get("quantiles", (0.1, 0.5, 0.9)))})


class QuantileForecastNet(nn.Module):
    """Window ``(B, lookback)`` to quantiles ``(B, horizon, Q)`` that never cross.

    The head emits the lowest quantile and non-negative gaps (softplus) to each next
    one; a cumulative sum makes the quantiles ordered by construction.
    """

    def __init__(self, config: ForecasterConfig) -> None:
        super().__init__()
        self.horizon, self.num_quantiles = config.horizon, len(config.quantiles)
        self.body = ManyToOne(1, config.horizon * self.num_quantiles, config.hidden_size, cell=config.cell,
                              num_layers=config.num_layers, dropout=config.dropout)

    def forward(self, window: Tensor) -> Tensor:
        raw = self.body(window.unsqueeze(2)).view(-1, self.horizon, self.num_quantiles)  # (B, H, Q)
        gaps = nn.functional.softplus(raw[:, :, 1:])
        return torch.cat([raw[:, :, :1], raw[:, :, :1] + gaps.cumsum(dim=2)], dim=2)


def pinball_loss(predicted: Tensor, target: Tensor, quantiles: Tensor) -> Tensor:
    """Mean quantile loss: ``predicted`` ``(B, H, Q)``, ``target`` ``(B, H)``."""
    diff = target.unsqueeze(2) - predicted  # (B, H, Q)
    return torch.maximum(quantiles * diff, (quantiles - 1) * diff).mean()


class Forecaster:
    """A global recurrent forecaster: fit on a long frame, forecast ``horizon`` steps per series.

    Windows are scaled twice: per series (mean and standard deviation of its history,
    kept in the bundle) and per window (the last input value subtracted), so one model
    serves series of any level and follows trends past the training range.

    Example::

        fc = Forecaster(horizon=11, lookback=33).fit(frame)
        fc.predict()            # unique_id, ds, y_hat, y_hat_q10, y_hat_q90
        fc.save("sunspots.rnnkit")
    """

    def __init__(self, config: Optional[ForecasterConfig] = None, **options: Any) -> None:
        self.config = config or ForecasterConfig(**options)
        self.model: Optional[QuantileForecastNet] = None
        self.scaler: Optional[SeriesScaler] = None
        self.history: dict[str, dict[str, Any]] = {}  # per series: freq, last_ds, tail of raw values
        self.train_result: Optional[TrainResult] = None

    # --------------------------------------------------------------------- training

    def fit(self, frame: pd.DataFrame) -> "Forecaster":
        """Train on every series of a long frame (``unique_id, ds, y``)."""
        cfg = self.config
        frame = validate_long_frame(frame)
        series = split_series(frame)
        check_length(series, cfg.lookback + 2 * cfg.horizon, f"lookback + 2 x horizon (training and validation)")
        self.scaler = SeriesScaler.fit(series)
        train_x, train_y, val_x, val_y = [], [], [], []
        for uid, values in series.items():
            inputs, targets = self._windows(uid, values)
            # The windows whose targets end in the last `horizon` steps validate; the rest train.
            train_x.append(inputs[: -cfg.horizon]), train_y.append(targets[: -cfg.horizon])
            val_x.append(inputs[-cfg.horizon:]), val_y.append(targets[-cfg.horizon:])
        torch.manual_seed(cfg.seed)
        self.model = QuantileForecastNet(cfg)
        quantiles = torch.tensor(cfg.quantiles)

        def loss_fn(model: nn.Module, batch: tuple[Tensor, ...], state: Any):
            window, target = batch
            return pinball_loss(model(window), target, quantiles.to(window.device)), None

        train_config = TrainConfig(epochs=cfg.epochs, minutes=cfg.minutes, batch_size=cfg.batch_size, lr=cfg.lr,
                                   patience=cfg.patience, seed=cfg.seed, progress=cfg.progress)
        self.train_result = fit(self.model, loss_fn, (torch.cat(train_x), torch.cat(train_y)),
                                (torch.cat(val_x), torch.cat(val_y)), train_config)
        self.model.cpu().eval()
        self.history = self._history_of(frame)
        return self

    def _windows(self, uid: str, values: np.ndarray) -> tuple[Tensor, Tensor]:
        """Scaled (input, target) windows of one series, each relative to its last input value."""
        inputs, targets = sliding_windows(self.scaler.transform(uid, values), self.config.lookback, self.config.horizon)
        level = inputs[:, -1:]  # (N, 1)
        return inputs - level, targets - level

    def _history_of(self, frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
        history = {}
        for uid, group in frame.groupby("unique_id", sort=False):
            history[str(uid)] = {
                "freq": infer_frequency(group["ds"], f"series {uid!r}"),
                "last_ds": group["ds"].iloc[-1].isoformat(),
                "tail": group["y"].to_numpy(dtype=float)[-self.config.lookback:].tolist(),
            }
        return history

    def history_frame(self) -> pd.DataFrame:
        """The end of each training series kept in the model (its last ``lookback`` points)."""
        frames = []
        for uid, info in self.history.items():
            dates = pd.date_range(end=pd.Timestamp(info["last_ds"]), periods=len(info["tail"]), freq=info["freq"])
            frames.append(pd.DataFrame({"unique_id": uid, "ds": dates, "y": info["tail"]}))
        return pd.concat(frames, ignore_index=True)

    # ------------------------------------------------------------------- prediction

    @torch.no_grad()
    def predict(self, frame: Optional[pd.DataFrame] = None) -> pd.DataFrame:
        """Forecast the ``horizon`` steps after each series ends.

        Without ``frame``, continues the series seen in training; with it, forecasts
        after the end of each series in ``frame`` (new series are scaled by their own
        history).

        Returns columns ``unique_id, ds, y_hat`` and ``y_hat_qNN`` per other quantile.
        """
        self._require_fitted()
        cfg = self.config
        history = self.history
        scaler = self.scaler
        if frame is not None:
            frame = validate_long_frame(frame)
            series = split_series(frame)
            check_length(series, cfg.lookback, "a forecast window (lookback)")
            known = {uid: self.scaler.stats[uid] for uid in series if uid in self.scaler.stats}
            scaler = SeriesScaler({**SeriesScaler.fit(series).stats, **known})
            history = self._history_of(frame)
        rows = []
        for uid, info in history.items():
            scaled = scaler.transform(uid, np.asarray(info["tail"][-cfg.lookback:]))
            window = torch.as_tensor(scaled, dtype=torch.float32)[None]  # (1, lookback)
            level = window[:, -1:]
            quantiles = (self.model(window - level) + level.unsqueeze(2))[0].numpy()  # (H, Q)
            values = scaler.inverse(uid, quantiles)
            dates = future_dates(pd.Timestamp(info["last_ds"]), info["freq"], cfg.horizon)
            row = {"unique_id": uid, "ds": dates}
            for k, q in enumerate(cfg.quantiles):
                row["y_hat" if q == 0.5 else quantile_column(q)] = values[:, k]
            rows.append(pd.DataFrame(row))
        return pd.concat(rows, ignore_index=True)

    def backtest(self, frame: pd.DataFrame, windows: int = 3, season_length: int = 1) -> pd.DataFrame:
        """Rolling-origin evaluation: refit before each of the last ``windows`` horizons, forecast it.

        Returns one row per window and series with the forecast's MAE, RMSE, sMAPE, MASE,
        mean pinball loss and interval coverage, next to the naive and seasonal-naive
        forecasts' MAE.
        """
        frame = validate_long_frame(frame)
        horizon = self.config.horizon
        rows = []
        position = frame.groupby("unique_id").cumcount()
        from_end = frame.groupby("unique_id")["y"].transform("size") - position  # 1 at each series' last point
        for window in range(windows, 0, -1):
            cut = window * horizon
            train = frame[from_end > cut]
            actual = frame[(from_end <= cut) & (from_end > cut - horizon)]
            forecast = Forecaster(self.config).fit(train).predict()
            for uid, truth in actual.groupby("unique_id"):
                pred = forecast[forecast["unique_id"] == uid]
                past = train[train["unique_id"] == uid]["y"].to_numpy()
                rows.append({"window": windows - window + 1, "unique_id": uid, "cutoff": str(past.size),
                             **evaluate_forecast(truth["y"].to_numpy(), pred, past, self.config.quantiles,
                                                 season_length)})
        return pd.DataFrame(rows)

    # ----------------------------------------------------------------------- bundles

    def save(self, path: Union[str, Path]) -> Path:
        """Write a bundle directory (config, safetensors weights, scaler and history as JSON, metrics)."""
        self._require_fitted()
        result = self.train_result
        metrics_json = {"best_val_loss": result.best_val_loss, "steps": result.steps,
                        "stopped": result.stopped, "history": result.history} if result else {}
        return save_bundle(path, model_type=MODEL_TYPE, config=self.config.to_dict(), model=self.model,
                           preprocessing={"scaler": self.scaler.to_dict(), "series": self.history},
                           metrics=metrics_json)

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> "Forecaster":
        """Rebuild a fitted forecaster from a bundle read by :func:`rnnkit.bundle.read_bundle`."""
        forecaster = cls(ForecasterConfig.from_dict(bundle.config))
        forecaster.model = QuantileForecastNet(forecaster.config)
        load_weights(forecaster.model, bundle)
        forecaster.model.eval()
        forecaster.scaler = SeriesScaler.from_dict(bundle.preprocessing["scaler"])
        forecaster.history = bundle.preprocessing["series"]
        return forecaster

    def _require_fitted(self) -> None:
        if self.model is None:
            raise RnnkitError("this forecaster is not fitted yet; call fit(frame) or load a bundle")

    # -------------------------------------------------------------------- inspection

    def inspection_recurrent(self) -> Recurrent:
        """The recurrent stack, for ``rnnkit inspect`` (see :class:`rnnkit.inspection.Inspectable`)."""
        self._require_fitted()
        return self.model.body.recurrent

    def inspection_input(self, source: str) -> InspectionInput:
        """A series (values, or a CSV with a ``y`` or ``value`` column) scaled as the model reads a window."""
        values = parse_series(source, "forecaster input")
        scaled = SeriesScaler.fit({"input": values}).transform("input", values)
        x = torch.as_tensor(scaled - scaled[-1], dtype=torch.float32)[None, :, None]  # (1, T, 1)
        return InspectionInput(x, [f"{v:.4g}" for v in values], {"value": values}, "forecaster")


register(MODEL_TYPE)(Forecaster.from_bundle)


def quantile_column(q: float) -> str:
    """``0.1`` to ``"y_hat_q10"``."""
    return f"y_hat_q{round(q * 100):02d}"


def evaluate_forecast(y: np.ndarray, forecast: pd.DataFrame, past: np.ndarray, quantiles: tuple[float, ...],
                      season_length: int) -> dict[str, float]:
    """Metrics of one series' forecast against the truth, with naive baselines for scale."""
    y_hat = forecast["y_hat"].to_numpy()[: len(y)]
    lower, upper = quantile_column(quantiles[0]), quantile_column(quantiles[-1])
    naive = np.repeat(past[-1], len(y))
    seasonal = np.resize(past[-season_length:], len(y)) if len(past) >= season_length else naive
    losses = [metrics.pinball(y, forecast["y_hat" if q == 0.5 else quantile_column(q)].to_numpy()[: len(y)], q)
              for q in quantiles]
    return {
        "mae": metrics.mae(y, y_hat), "rmse": metrics.rmse(y, y_hat), "smape": metrics.smape(y, y_hat),
        "mase": metrics.mase(y, y_hat, past, season_length), "quantile_loss": float(np.mean(losses)),
        "coverage": metrics.coverage(y, forecast[lower].to_numpy()[: len(y)], forecast[upper].to_numpy()[: len(y)]),
        "naive_mae": metrics.mae(y, naive), "seasonal_naive_mae": metrics.mae(y, seasonal),
    }

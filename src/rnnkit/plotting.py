"""Plots people would rather look at than tables, written as PNG files (no display needed)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional, Union

import matplotlib

matplotlib.use("Agg")  # files only: works on servers and CI without a display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .files import atomic_write_bytes  # noqa: E402


def plot_forecast(
    history: pd.DataFrame,
    forecast: Optional[pd.DataFrame],
    path: Union[str, Path],
    *,
    actual: Optional[pd.DataFrame] = None,
    backtest: Optional[pd.DataFrame] = None,
    title: str = "",
    max_history: int = 120,
) -> Path:
    """History, median forecast, the outermost quantile band and (if given) the actual values.

    Frames are long (``unique_id, ds, y`` / ``y_hat, y_hat_qNN``); one panel per series.
    ``backtest`` holds earlier forecasts (a ``window`` column tells them apart), drawn in
    green with their band, so they can be read against ``actual`` over the same dates;
    with it, ``forecast`` may be ``None``.
    """
    forecast = forecast if forecast is not None else backtest.iloc[:0]
    series = list(dict.fromkeys(forecast["unique_id"] if len(forecast) else backtest["unique_id"]))
    figure, axes = plt.subplots(len(series), 1, figsize=(10, 3.2 * len(series)), squeeze=False)
    for ax, uid in zip(axes[:, 0], series):
        past = history[history["unique_id"] == uid].tail(max_history)
        pred = forecast[forecast["unique_id"] == uid]
        ax.plot(past["ds"], past["y"], color="0.25", lw=1.2, label="history")
        bands = sorted(c for c in pred.columns if c.startswith("y_hat_q"))
        if len(bands) >= 2 and len(pred):
            low, high = bands[0], bands[-1]
            ax.fill_between(pred["ds"], pred[low], pred[high], color="tab:blue", alpha=0.2,
                            label=f"interval {low[7:]}-{high[7:]} %")
        if len(pred):
            ax.plot(pred["ds"], pred["y_hat"], color="tab:blue", lw=2, label="forecast (median)")
        if backtest is not None:
            _plot_backtest(ax, backtest[backtest["unique_id"] == uid])
        if actual is not None:
            truth = actual[actual["unique_id"] == uid]
            ax.plot(truth["ds"], truth["y"], "o-", color="tab:orange", ms=3, lw=1, label="actual")
        ax.set_title(f"{title} {uid}".strip())
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    return _save(figure, path)


def plot_attention(
    weights,
    source_tokens: list[str],
    target_tokens: list[str],
    path: Union[str, Path],
    *,
    title: str = "",
) -> Path:
    """An attention heatmap: one row per output token, one column per source token.

    ``weights`` is ``(T, S)`` (a tensor or array), each row summing to 1 over the source.
    Byte-level BPE marks a leading space with ``Ġ``; it is drawn as ``▁``, a space token as ``␣``.
    """
    import numpy as np

    grid = np.asarray(weights.detach().cpu() if hasattr(weights, "detach") else weights, dtype=float)
    clean = lambda tokens: ["␣" if t == " " else t.replace("Ġ", "▁") for t in tokens]  # noqa: E731
    width, height = 1.5 + 0.32 * len(source_tokens), 1.5 + 0.3 * len(target_tokens)
    figure, ax = plt.subplots(figsize=(min(max(width, 4), 24), min(max(height, 3), 24)))
    image = ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(source_tokens)), clean(source_tokens), rotation=90, fontsize=8)
    ax.set_yticks(range(len(target_tokens)), clean(target_tokens), fontsize=8)
    ax.set_xlabel("source")
    ax.set_ylabel("output")
    if title:
        ax.set_title(title, fontsize=9)
    figure.colorbar(image, ax=ax, fraction=0.04)
    return _save(figure, path)


def plot_captions(images, details: list[dict], path: Union[str, Path], *,
                  references: Optional[list[str]] = None) -> Path:
    """Each image above its attention map, the two on one column axis: a row per output word,
    so a word's bright cells sit under the part of the image it was read from.

    ``images`` are ``(H, W)`` arrays; ``details`` the captioner's ``describe`` results (``caption``,
    ``words``, ``attention`` ``(words, W)``); ``references``, when given, title each panel too.
    """
    import numpy as np

    heights = []
    for image, detail in zip(images, details):
        heights += [image.shape[0] / 4, max(len(detail["words"]), 1) / 3]
    width = max(image.shape[1] for image in images)
    figure, axes = plt.subplots(len(heights), 1, figsize=(min(2 + width / 5, 12), 0.9 + 0.45 * sum(heights)),
                                gridspec_kw={"height_ratios": heights}, squeeze=False)
    for k, (image, detail) in enumerate(zip(images, details)):
        top, bottom = axes[2 * k, 0], axes[2 * k + 1, 0]
        top.imshow(image, cmap="gray_r", vmin=0, vmax=16, aspect="auto", interpolation="nearest",
                   extent=(-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5))
        title = f"caption: {detail['caption']}"
        if references is not None:
            title += "   (right)" if detail["caption"] == references[k] else f"\nreference: {references[k]}"
        top.set_title(title, fontsize=8, loc="left")
        top.set_xlim(-0.5, width - 0.5)
        top.axis("off")
        grid = np.asarray(detail["attention"], dtype=float)
        bottom.imshow(grid, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest",
                      extent=(-0.5, grid.shape[1] - 0.5, grid.shape[0] - 0.5, -0.5))
        bottom.set_xlim(-0.5, width - 0.5)
        bottom.set_yticks(range(len(detail["words"])), detail["words"], fontsize=7)
        bottom.set_xticks([])
    axes[-1, 0].set_xlabel("image column")
    return _save(figure, path)


def plot_confusion_matrix(matrix, labels: list[str], path: Union[str, Path], *, title: str = "") -> Path:
    """A confusion matrix as a heat map, rows normalised (recall per class), counts written in each cell."""
    import numpy as np

    counts = np.asarray(matrix)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 1.2 + 0.9 * len(labels)
    figure, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{counts[i, j]}\n{rates[i, j]:.0%}", ha="center", va="center", fontsize=8,
                    color="white" if rates[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix (row-normalised)")
    figure.colorbar(image, ax=ax, fraction=0.046)
    return _save(figure, path)


def plot_piano_roll(roll, path: Union[str, Path], *, steps_per_quarter: int = 2, primer_frames: int = 0,
                    title: str = "") -> Path:
    """A ``(T, 128)`` boolean roll as a piano roll: time across in quarter notes, MIDI pitch up;
    a dashed line where a primer ends and the generated part begins."""
    import numpy as np

    roll = np.asarray(roll, dtype=bool)
    used = np.flatnonzero(roll.any(0))
    low, high = (int(used.min()) - 2, int(used.max()) + 3) if len(used) else (48, 72)
    figure, ax = plt.subplots(figsize=(min(4 + len(roll) / 12, 16), 3.8))
    ax.imshow(roll[:, low:high].T, origin="lower", aspect="auto", cmap="Greys", interpolation="nearest",
              extent=(0, len(roll) / steps_per_quarter, low - 0.5, high - 0.5))
    if primer_frames:
        ax.axvline(primer_frames / steps_per_quarter, color="tab:red", ls="--", lw=1, label="primer ends")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlabel("quarter notes")
    ax.set_ylabel("MIDI pitch")
    ax.set_title(title or "piano roll")
    return _save(figure, path)


def _save(figure, path: Union[str, Path]) -> Path:
    """Lay out, render as PNG, close ``figure`` and write the file atomically; return the path."""
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return atomic_write_bytes(path, buffer.getvalue())  # never half a PNG


def _plot_backtest(ax, windows: pd.DataFrame) -> None:
    """Each backtest window's median and outermost band, labelled once."""
    for k, (_, window) in enumerate(windows.groupby("window", sort=True) if "window" in windows else [(0, windows)]):
        bands = sorted(c for c in window.columns if c.startswith("y_hat_q"))
        if len(bands) >= 2:
            ax.fill_between(window["ds"], window[bands[0]], window[bands[-1]], color="tab:green", alpha=0.15)
        ax.plot(window["ds"], window["y_hat"], "--", color="tab:green", lw=1.5,
                label="backtest forecasts" if k == 0 else None)

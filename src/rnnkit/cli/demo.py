"""`rnnkit demo`: a tour on real data that installs with the package. Later tasks add their part."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Annotated

import pandas as pd
import torch
import typer
from rich.console import Console
from rich.table import Table

from ..bundle import load
from ..data import DATASETS, load_dataset
from ..plotting import plot_forecast
from ..tasks.forecast import Forecaster, ForecasterConfig
from ..tasks.forecast_eval import evaluate_forecast, naive_forecasts

console = Console()


def demo(
    out: Annotated[Path, typer.Option(help="Directory for the plot and the model bundle.")] = Path("demo-output"),
    minutes: Annotated[float, typer.Option(help="Training budget of the forecaster, in minutes.")] = 1.5,
    progress: Annotated[bool, typer.Option(help="Show the training progress bar.")] = True,
) -> None:
    """Forecast sunspots; translate dates with attention; generate Shakespeare; classify tweet sentiment;
    write a chorale."""
    out.mkdir(parents=True, exist_ok=True)
    forecast_sunspots(out, minutes, progress)
    translate_dates(out, progress)
    text_demo(out, progress)
    music_demo(out, progress)
    memory_gradient_flow(out)


def forecast_sunspots(out: Path, minutes: float, progress: bool) -> None:
    dataset = DATASETS["sunspots"]
    frame = load_dataset("sunspots")
    horizon = dataset.season_length  # one solar cycle, ~11 years
    train, test = frame.iloc[:-horizon], frame.iloc[-horizon:]
    console.rule(f"[bold]Forecasting: {dataset.description}")
    console.print(f"LSTM trained on {len(train)} years, forecasting the last {horizon} ({test.ds.dt.year.iloc[0]}-"
                  f"{test.ds.dt.year.iloc[-1]}), budget {minutes:g} min")
    config = ForecasterConfig(horizon=horizon, minutes=minutes, progress=progress)
    forecaster = Forecaster(config).fit(train)
    forecast = forecaster.predict()
    past, truth = train["y"].to_numpy(), test["y"].to_numpy()
    scores = evaluate_forecast(truth, forecast, past, config.quantiles, horizon)

    table = Table(title=f"sunspots, last {horizon} years held out")
    for column in ("model", "MAE", "sMAPE %", "MASE"):
        table.add_column(column, justify="right" if column != "model" else "left")
    table.add_row("rnnkit LSTM (median)", f"{scores['mae']:.1f}", f"{scores['smape']:.1f}", f"{scores['mase']:.2f}")
    baselines = naive_forecasts(train, horizon, horizon, "YS")
    for name, label in (("naive", "naive (last value)"), ("seasonal_naive", "seasonal naive (11 y)")):
        base = evaluate_forecast(truth, baselines[name], past, config.quantiles, horizon)
        table.add_row(label, f"{base['mae']:.1f}", f"{base['smape']:.1f}", f"{base['mase']:.2f}")
    console.print(table)
    console.print(f"80 % interval covers {scores['coverage']:.0%} of the held-out years")

    bundle = forecaster.save(out / "sunspots.rnnkit")
    reloaded = load(bundle).predict()
    assert reloaded["y_hat"].equals(forecast["y_hat"]), "bundle round trip changed the forecast"
    plot = plot_forecast(train, forecast, out / "sunspots_forecast.png", actual=test,
                         title="rnnkit LSTM forecast:")
    console.print(f"plot: {plot}\nbundle: {bundle} (reloaded: identical forecast)")
    pd.DataFrame([scores]).to_json(out / "sunspots_metrics.json", orient="records", indent=2)


def translate_dates(out: Path, progress: bool, minutes: float = 0.5) -> None:
    """Written dates in 18 locales to ISO dates with an attention LSTM, for ``minutes``; plot one attention map."""
    from ..data.parallel import DATE_LOCALES, date_pairs
    from ..tasks.translate import Translator

    console.rule("[bold]Translation: dates written in 18 locales -> ISO 8601")
    train, test = date_pairs(20000), date_pairs(300, test=True)
    console.print(f"encoder-decoder LSTM with Luong attention, {len(train)} pairs ({', '.join(DATE_LOCALES[:6])}, "
                  f"...), budget {minutes:g} min; the test dates never occur in training")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small gains nothing from 2 threads, and they stall on a busy machine
    try:
        translator = Translator(tokenizer="char", hidden_size=128, embedding_size=32, max_length=48,
                                minutes=minutes, progress=progress).fit(train)
    finally:
        torch.set_num_threads(threads)
    scores = translator.evaluate(test)
    examples = [test[i][0] for i in (0, 1, 2)] + ["Mittwoch, 25. November 2026"]
    table = Table(title=f"held-out dates: {scores['exact']:.1%} exact of {len(test)}")
    table.add_column("input")
    table.add_column("rnnkit translation")
    for text, translation in zip(examples, translator.translate(examples)):
        table.add_row(text, translation)
    console.print(table)
    plot = translator.plot_attention(examples[-1], out / "dates_attention.png")
    bundle = translator.save(out / "dates.rnnkit")
    assert load(bundle).translate(examples) == translator.translate(examples), "bundle round trip changed output"
    console.print(f"attention map: {plot}\nbundle: {bundle} (reloaded: identical translations); try "
                  f"rnnkit translate run {bundle} \"{examples[0]}\"")


def text_demo(out: Path, progress: bool, seconds: float = 14.0) -> None:
    """A char LSTM on a slice of Shakespeare streams a few lines; a tweet classifier predicts sentiment."""
    from ..data.text import load_shakespeare, load_tweets
    from ..tasks.classify import SequenceClassifier
    from ..tasks.textgen import TextGenerator

    console.rule("[bold]Text generation: a character LSTM on Shakespeare")
    text = load_shakespeare()[:400_000]
    console.print(f"1x128 LSTM, {len(text):,} characters (last 5 % held out), budget {seconds:g} s")
    lm = TextGenerator(hidden_size=128, seq_len=64, lr=1e-2, minutes=seconds / 60, progress=progress).fit(text)
    console.print(f"held-out: {lm.metrics['val_bpc']:.2f} bits per character (a uniform guess: "
                  f"{math.log2(lm.tokenizer.vocab_size - 4):.2f}); sample at temperature 0.8:")
    console.out("ROMEO:", end="", highlight=False)
    lm.generate("ROMEO:", max_tokens=160, temperature=0.8, seed=0,
                stream=lambda piece: console.out(piece, end="", highlight=False))
    console.out("")

    console.rule("[bold]Sentiment: a bidirectional LSTM on tweets about self-driving cars")
    tweets = load_tweets().drop_duplicates("text").sample(6000, random_state=0)
    train, test = tweets.iloc[:5000], tweets.iloc[5000:]
    clf = SequenceClassifier(hidden_size=64, minutes=seconds / 60, progress=progress)
    clf.fit(train["text"].tolist(), train["label"].tolist())
    scores = clf.evaluate(test["text"].tolist(), test["label"].tolist(), plot=out / "sentiment_confusion.png")
    console.print(f"{len(train):,} tweets, {seconds:g} s: accuracy {scores['accuracy']:.1%}, macro-F1 "
                  f"{scores['macro_f1']:.3f} on {len(test):,} held-out tweets; plot: {out / 'sentiment_confusion.png'}")
    examples = ["I can't wait to ride in a self-driving car!", "Autonomous cars scare me, they will crash."]
    for example, (_, row) in zip(examples, clf.predict_proba(examples).iterrows()):
        probs = ", ".join(f"{c} {row[f'prob_{c}']:.0%}" for c in clf.classes)
        console.print(f"  {example!r}: [bold]{row['label']}[/bold] ({probs})")


def music_demo(out: Path, progress: bool, seconds: float = 40.0) -> None:
    """An LSTM + NADE on Bach's chorales for ``seconds``, continuing the opening of a held-out chorale."""
    from ..data import music as data
    from ..tasks.music import MusicGenerator
    from .music import write_piece

    console.rule("[bold]Music: an LSTM + NADE learns Bach's chorales")
    if not all(importlib.util.find_spec(module) for module in ("music21", "mido")):
        console.print(f"skipped: music needs music21 and mido; install them with `{data.INSTALL}`")
        return
    if not data.corpus_cache_path().exists():
        console.print(f"parsing music21's Bach chorales once (about a minute; cached in {data.corpus_cache_path()})")
    pieces = [p for p in data.bach_chorales()[0] if data.split_of(p.name) != "test"]
    console.print(f"{len(pieces)} chorales in C major / A minor, quarter-note frames, budget {seconds:g} s")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as for the dates: a step this small stalls on two threads of a busy machine
    try:
        gen = MusicGenerator(steps_per_quarter=1, seq_len=64, minutes=seconds / 60, progress=progress).fit(pieces)
    finally:
        torch.set_num_threads(threads)
    bundle = gen.save(out / "chorale.rnnkit")
    midi, plot = out / "chorale.mid", out / "chorale.png"
    result, _ = write_piece(gen, midi, bars=8, primer="heldout", seed=1, plot=plot)
    for warning in result["warnings"]:
        console.print(f"warning: {warning}", highlight=False)
    console.print(f"held-out: {gen.metrics['val_nll_per_frame']:.2f} nats per frame (benchmarks/music.py sets it "
                  f"beside baselines); 8 bars after a held-out chorale's first 2, {len(result['notes'])} notes "
                  f"in {result['key']}\nMIDI: {midi}\npiano roll: {plot}\nbundle: {bundle}; try rnnkit music generate "
                  f"{bundle} --out new.mid --top-p 0.9 --key \"D major\" --seed 2", highlight=False)


def memory_gradient_flow(out: Path, length: int = 100) -> None:
    """Why LSTM, in seconds: how much of the loss's gradient reaches the first step, per cell."""
    from ..inspection import plot_gradient_flow
    from ..tasks.memory import LabConfig, build_model, gradient_profile, make_data

    console.rule(f"[bold]Memory: gradient flow through time, adding problem, T = {length}")
    x, y = make_data("adding", 64, length, seed=0)
    table = Table(title="|dL/dh_1| / |dL/dh_T| at initialisation, equal parameter budgets")
    for column in ("cell", "units", "ratio"):
        table.add_column(column, justify="left" if column == "cell" else "right")
    curves = {}
    for cell in ("lstm", "gru", "rnn"):
        config = LabConfig(task="adding", cell=cell, length=length)
        torch.manual_seed(0)
        profile = gradient_profile("adding", build_model(config), x, y)
        curves[cell.upper()] = [n / profile["norms"][-1] for n in profile["norms"]]
        table.add_row(cell.upper(), str(config.width), f"{profile['ratio']:.1e}")
    console.print(table)
    plot = plot_gradient_flow(curves, out / "memory_gradient_flow.png",
                              title=f"adding problem, T = {length}: |dL/dh_t| / |dL/dh_T| at initialisation")
    console.print(f"plot: {plot}; train and compare them: rnnkit lab adding --cell rnn --length {length}")

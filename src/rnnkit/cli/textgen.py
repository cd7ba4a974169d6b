"""`rnnkit textgen train | sample`: language models on a text file, text generated from a bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ..bundle import load
from ..data.text import read_text
from ..tasks.textgen import MODEL_TYPE, TextGenerator, TextGeneratorConfig
from . import Precision, create_app
from .options import BundleOut, CELL_HELP, TrainingOptions, training_options

app = create_app("Train language models on a text file and generate text from them.")
console = Console(stderr=True)


@app.command()
@training_options(minutes=5.0)
def train(
    corpus: Annotated[Path, typer.Argument(help="A plain-text file (UTF-8 unless --encoding).", show_default=False)],
    out: BundleOut,
    training: TrainingOptions,
    tokenizer: Annotated[str, typer.Option(help="char, word or bpe.")] = "char",
    vocab_size: Annotated[int, typer.Option(help="Vocabulary size for word and bpe tokenizers.")] = 4000,
    cell: Annotated[str, typer.Option(help=CELL_HELP)] = "lstm",
    hidden_size: Annotated[int, typer.Option(help="Hidden units per layer.")] = 512,
    num_layers: Annotated[int, typer.Option(help="Stacked recurrent layers (1-3).")] = 1,
    dropout: Annotated[float, typer.Option(help="Dropout between layers.")] = 0.0,
    seq_len: Annotated[int, typer.Option(help="Truncated-BPTT length (state carries further).")] = 128,
    batch_size: Annotated[int, typer.Option(help="Parallel streams through the corpus.")] = 32,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 3e-3,
    encoding: Annotated[str, typer.Option(help="Text encoding of CORPUS.")] = "utf-8",
) -> None:
    """Train a language model on CORPUS (last 5 % held out) and write a bundle with metrics.json."""
    config = TextGeneratorConfig(tokenizer=tokenizer, vocab_size=vocab_size, cell=cell, hidden_size=hidden_size,
                                 num_layers=num_layers, dropout=dropout, seq_len=seq_len, batch_size=batch_size,
                                 lr=lr, **training.config_fields())
    lm = TextGenerator(config).fit(read_text(corpus, encoding), **training.fit_options())
    path = lm.save(out)
    m = lm.metrics
    held = (f"held-out {m['val_bpc']:.3f} bits/char, perplexity {m['val_ppl']:.2f}" if "val_bpc" in m
            else "no held-out text")
    console.print(f"trained {m['steps']} steps ({m['stopped']}), {held}; bundle: {path}")


@app.command()
def sample(
    bundle: Annotated[Path, typer.Argument(help="A text generator bundle.", show_default=False)],
    prime: Annotated[str, typer.Option(help="Text to continue.")] = "",
    max_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 300,
    temperature: Annotated[float, typer.Option(help="0 = greedy; < 1 safer, > 1 wilder.")] = 0.8,
    top_k: Annotated[Optional[int], typer.Option(help="Sample among the k likeliest tokens only.")] = None,
    top_p: Annotated[Optional[float], typer.Option(help="Nucleus: the likeliest tokens up to this mass.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed: the same seed, the same text.")] = None,
    num_samples: Annotated[int, typer.Option(help="Samples generated at once (printed when done).")] = 1,
    precision: Precision = "fp32",
) -> None:
    """Continue PRIME; one sample streams to the terminal as it is generated."""
    lm = load(bundle, MODEL_TYPE)
    options = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, precision=precision)
    if num_samples == 1:
        typer.echo(prime, nl=False)
        lm.generate(prime, max_tokens, stream=lambda piece: typer.echo(piece, nl=False), **options)
        typer.echo()
        return
    for i, text in enumerate(lm.sample(prime, num_samples, max_tokens, **options)):
        typer.echo(f"--- sample {i + 1}\n{text}")


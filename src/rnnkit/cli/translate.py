"""`rnnkit translate train | run`: sentence translation from tab-separated pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ..bundle import read_bundle
from ..data.parallel import read_pairs
from ..errors import RnnkitError
from ..tasks.translate import Translator, TranslatorConfig
from . import create_app
from .options import BundleOut, CELL_HELP, TrainingOptions, training_options

app = create_app("Translate sentences with an encoder-decoder LSTM/GRU and attention (TSV: source TAB target).")
console = Console(stderr=True)


@app.command()
@training_options(minutes=12.0)
def train(
    pairs: Annotated[Path, typer.Argument(help="UTF-8 file, one 'source<TAB>target' pair per line.",
                                          show_default=False)],
    out: BundleOut,
    training: TrainingOptions,
    cell: Annotated[str, typer.Option(help=CELL_HELP)] = "lstm",
    attention: Annotated[str, typer.Option(help="luong (multiplicative), bahdanau (additive) or none.")] = "luong",
    input_feeding: Annotated[bool, typer.Option(help="Feed the previous attentional vector (Luong).")] = False,
    hidden_size: Annotated[int, typer.Option(help="Decoder width; the encoder gets half per direction.")] = 256,
    embedding_size: Annotated[int, typer.Option(help="Token embedding width.")] = 128,
    layers: Annotated[int, typer.Option(help="Encoder and decoder layers.")] = 1,
    tokenizer: Annotated[str, typer.Option(help="bpe, word or char.")] = "bpe",
    vocab_size: Annotated[int, typer.Option(help="Vocabulary per side (bpe, word).")] = 4000,
    joint_vocab: Annotated[bool, typer.Option(help="One vocabulary for both languages.")] = False,
    max_length: Annotated[int, typer.Option(help="Tokens per side; longer training pairs are skipped.")] = 64,
    sampling_rate: Annotated[float, typer.Option(help="Scheduled sampling: feed own predictions this often.")] = 0.0,
) -> None:
    """Train a translator on PAIRS and write a bundle."""
    config = TranslatorConfig(cell=cell, attention=attention, input_feeding=input_feeding, hidden_size=hidden_size,
                              embedding_size=embedding_size, encoder_layers=layers, decoder_layers=layers,
                              tokenizer=tokenizer, vocab_size=vocab_size, joint_vocab=joint_vocab,
                              max_length=max_length, sampling_rate=sampling_rate, **training.config_fields())
    data = read_pairs(pairs)
    translator = Translator(config).fit(data, **training.fit_options())
    path = translator.save(out)
    result = translator.train_results[-1]
    skipped = f"; skipped {translator.skipped} pairs longer than {max_length} tokens" if translator.skipped else ""
    console.print(f"trained on {len(data)} pairs, {result.steps} steps ({result.stopped}), best validation loss "
                  f"{result.best_val_loss if result.best_val_loss is not None else float('nan'):.4f}{skipped}; "
                  f"bundle: {path}")


@app.command()
def run(
    bundle: Annotated[Path, typer.Argument(help="A translator bundle.", show_default=False)],
    text: Annotated[Optional[str], typer.Argument(help="Sentence to translate; default: each line of stdin.",
                                                  show_default=False)] = None,
    beam: Annotated[int, typer.Option(help="Beam size; 1 is greedy decoding.")] = 1,
    attention_plot: Annotated[Optional[Path], typer.Option(
        help="PNG heatmap of the attention for TEXT (or the first input line).")] = None,
) -> None:
    """Translate TEXT, or each line of standard input to one line of standard output.

    An empty input line gives an empty output line, so the output stays aligned with the input.
    """
    translator = load_translator(bundle)
    lines = [text] if text is not None else typer.get_text_stream("stdin").read().splitlines()
    if not lines:
        raise RnnkitError("nothing to translate: give TEXT or pipe lines into standard input")
    wanted = [i for i, line in enumerate(lines) if line.strip()]
    results = translator.translate_detailed([lines[i] for i in wanted], beam=beam) if wanted else []
    outputs = [""] * len(lines)
    for i, result in zip(wanted, results):
        outputs[i] = result["translation"]
    for line in outputs:
        typer.echo(line)
    if attention_plot is not None and wanted:
        translator.plot_attention(lines[wanted[0]], attention_plot, beam=beam)
        console.print(f"attention plot: {attention_plot}")


def load_translator(path: Path) -> Translator:
    """A translator from its bundle; a bundle of another model type is refused by name."""
    bundle = read_bundle(path)
    if bundle.model_type != "translator":
        raise RnnkitError(f"{path} holds a {bundle.model_type!r} model, not a translator")
    return Translator.from_bundle(bundle)

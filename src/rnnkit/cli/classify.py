"""`rnnkit classify train | predict`: text classification from CSV files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ..bundle import load
from ..data.text import read_text_csv
from ..errors import RnnkitError
from ..files import write_csv
from ..plotting import plot_confusion_matrix
from ..tasks.classify import AUTO_MEMBERS, MODEL_TYPE, SequenceClassifier, SequenceClassifierConfig
from . import create_app
from .options import BundleOut, CELL_HELP, TrainingOptions, training_options

app = create_app("Classify texts (sentiment, topics, ...) with a recurrent network, from CSV files.")
console = Console(stderr=True)
DEFAULTS = SequenceClassifierConfig()


@app.command()
@training_options(minutes=DEFAULTS.minutes)
def train(
    data: Annotated[Path, typer.Argument(help="CSV with a text and a label column.", show_default=False)],
    text_col: Annotated[str, typer.Option(help="Column holding the texts.")],
    label_col: Annotated[str, typer.Option(help="Column holding the labels.")],
    out: BundleOut,
    training: TrainingOptions,
    pretrained: Annotated[Optional[Path], typer.Option(
        help="A language model bundle (rnnkit textgen train) whose tokenizer, embedding and recurrent layers "
             "start the classifier; its sizes are taken.")] = None,
    pretrain_minutes: Annotated[Optional[float], typer.Option(
        help="First train the language model on DATA's texts (labels ignored) this long, on top of --minutes; "
             "the --pretrained one, or a new one.", show_default=False)] = None,
    tokenizer: Annotated[Optional[str], typer.Option(
        help="word, bpe or char (default: word, or the --pretrained model's).", show_default=False)] = None,
    cell: Annotated[Optional[str], typer.Option(help=CELL_HELP + " (default: lstm, or the --pretrained model's)",
                                                show_default=False)] = None,
    hidden_size: Annotated[Optional[int], typer.Option(
        help="Hidden units per direction (default: 128, or the --pretrained model's).", show_default=False)] = None,
    bidirectional: Annotated[Optional[bool], typer.Option(
        "--bidirectional/--no-bidirectional", help="Read each text both ways (default: yes, unless a language "
        "model is pretrained or --pretrained: it reads left to right).", show_default=False)] = None,
    class_weights: Annotated[bool, typer.Option(help="Weigh classes inversely to their frequency.")] = True,
    encoding: Annotated[str, typer.Option(help="Text encoding of DATA.")] = "utf-8",
    plot: Annotated[Optional[Path], typer.Option(help="PNG confusion matrix on the validation slice.")] = None,
    ensemble: Annotated[Optional[int], typer.Option(
        help="Members from different seeds, averaged; they share --minutes (default: as many as --minutes "
             f"fits, up to {AUTO_MEMBERS}: many on few texts).", show_default=False)] = None,
    ngram_buckets: Annotated[Optional[int], typer.Option(
        help="Rows for hashed word pairs in the linear bag of words and pairs added to the network's scores; "
             f"0 = none (default: {DEFAULTS.ngram_buckets}).", show_default=False)] = None,
) -> None:
    """Train a classifier on DATA and write a bundle; report validation accuracy and macro-F1."""
    chosen = {name: value for name, value in (("tokenizer", tokenizer), ("cell", cell), ("hidden_size", hidden_size),
                                              ("bidirectional", bidirectional), ("ensemble", ensemble),
                                              ("ngram_buckets", ngram_buckets)) if value is not None}
    options = dict(class_weights="balanced" if class_weights else None, pretrain_minutes=pretrain_minutes,
                   **training.config_fields())
    if pretrained is not None:
        config = SequenceClassifierConfig.matching(pretrained, **chosen, **options)
    else:
        config = SequenceClassifierConfig(**{"bidirectional": pretrain_minutes is None, **chosen, **options})
    frame = read_text_csv(data, text_col, label_col, encoding)
    clf = SequenceClassifier(config).fit(frame["text"].tolist(), frame["label"].tolist(), pretrained=pretrained,
                                         **training.fit_options())
    m = clf.metrics
    if plot:
        plot_confusion_matrix(m["val_confusion_matrix"], clf.classes, plot, title="validation slice")
    path = clf.save(out)
    console.print(f"trained {m['steps']} steps ({m['stopped']}); validation accuracy "
                  f"{m['val_accuracy']:.3f}, macro-F1 {m['val_macro_f1']:.3f}; bundle: {path}"
                  + (f"; plot: {plot}" if plot else ""))


@app.command()
def predict(
    bundle: Annotated[Path, typer.Argument(help="A classifier bundle.", show_default=False)],
    text: Annotated[Optional[str], typer.Argument(help="One text to classify.", show_default=False)] = None,
    data: Annotated[Optional[Path], typer.Option(help="CSV of texts to classify.")] = None,
    text_col: Annotated[str, typer.Option(help="Column of --data holding the texts.")] = "text",
    out: Annotated[Optional[Path], typer.Option(help="CSV to write: label, prob_<class> ... (input order).")] = None,
    encoding: Annotated[str, typer.Option(help="Text encoding of --data.")] = "utf-8",
) -> None:
    """Print the class of TEXT with its probabilities, or write predictions for every row of --data."""
    if (text is None) == (data is None):
        raise RnnkitError("give either a TEXT to classify or --data FILE.csv (with --out), not both or neither")
    clf = load(bundle, MODEL_TYPE)
    if text is not None:
        row = clf.predict_proba([text]).iloc[0]
        probs = "  ".join(f"{c}={row[f'prob_{c}']:.3f}" for c in clf.classes)
        typer.echo(f"{row['label']}  ({probs})")
        return
    texts = read_text_csv(data, text_col, None, encoding, keep_empty=True)["text"].tolist()
    predictions = clf.predict_proba(texts)
    if out is None:
        typer.echo(predictions.to_csv(index=False), nl=False)
        return
    write_csv(predictions, out)
    console.print(f"wrote {len(predictions)} predictions to {out}")


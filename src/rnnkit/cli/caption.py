"""`rnnkit caption dataset | train | describe`: numbers composed from real handwritten digits, captioned in words."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ..data.digits import digit_composites, load_digit_images, split_indices
from ..errors import DataError
from ..tasks.caption import Captioner, CaptionerConfig
from . import create_app
from .options import BundleOut, CELL_HELP, TrainingOptions, training_options

app = create_app("Caption images: 2-4 real handwritten digits (scikit-learn's load_digits) side by side, "
                 "described as the number in words, with attention over the image's columns.")
console = Console(stderr=True)


@app.command()
def dataset(
    examples: Annotated[int, typer.Option(help="Composites of the test split to print.")] = 5,
    seed: Annotated[int, typer.Option(help="Composition seed.")] = 0,
) -> None:
    """Say how the source digits are split and show a few composed test examples."""
    images, labels = load_digit_images()
    sizes = {name: len(ix) for name, ix in split_indices(len(images)).items()}
    typer.echo(f"{len(images)} real 8x8 digit images (scikit-learn load_digits), split before composing: "
               + ", ".join(f"{name} {n}" for name, n in sizes.items()))
    test = digit_composites("test", examples, seed=seed, data=(images, labels))
    for image, caption in zip(test.images, test.captions):
        typer.echo(f"{image.shape[0]}x{image.shape[1]}  {caption}")


@app.command()
@training_options(minutes=3.0)
def train(
    out: BundleOut,
    training: TrainingOptions,
    composites: Annotated[int, typer.Option(help="Training images composed from the training digits.")] = 20000,
    test_count: Annotated[int, typer.Option(help="Composites of the test digits scored after training.")] = 1000,
    cell: Annotated[str, typer.Option(help=CELL_HELP)] = "lstm",
    attention: Annotated[str, typer.Option(help="luong, bahdanau or none.")] = "luong",
    hidden_size: Annotated[int, typer.Option(help="Decoder width; the encoder gets half per direction.")] = 128,
) -> None:
    """Train a captioner on composites of the training digits, stop early on the validation digits'
    composites, score the test digits' composites and write a bundle."""
    if composites < 10 or test_count < 1:
        raise DataError(f"--composites must be >= 10 and --test-count >= 1, got {composites} and {test_count}")
    config = CaptionerConfig(cell=cell, attention=attention, hidden_size=hidden_size, **training.config_fields())
    data = load_digit_images()
    seed = config.seed
    train_set = digit_composites("train", composites, seed=seed, data=data)
    val_set = digit_composites("validation", max(composites // 10, 10), seed=seed, data=data)
    test_set = digit_composites("test", test_count, seed=seed, data=data)
    captioner = Captioner(config).fit(train_set.images, train_set.captions, val_set.images, val_set.captions,
                                      **training.fit_options())
    scores = captioner.evaluate(test_set.images, test_set.captions)
    captioner.metrics["test"] = scores
    path = captioner.save(out)
    result = captioner.train_results[-1]
    console.print(f"trained on {composites} composites, {result.steps} steps ({result.stopped}); bundle: {path}")
    typer.echo(f"test ({test_count} composites of held-out digits): exact {scores['exact']:.1%}, "
               f"BLEU {scores['bleu']:.1f}")


@app.command()
def describe(
    bundle: Annotated[Path, typer.Argument(help="A captioner bundle.", show_default=False)],
    image: Annotated[Optional[Path], typer.Option(
        help="A JSON file: an image as rows of intensities 0..16 (or {\"image\": rows}). "
             "Default: composites of the held-out test digits.")] = None,
    examples: Annotated[int, typer.Option(help="Test composites to describe when no --image is given.")] = 4,
    seed: Annotated[int, typer.Option(help="Composition seed of those examples.")] = 1,
    beam: Annotated[int, typer.Option(help="Beam size; 1 is greedy decoding.")] = 1,
    plot: Annotated[Optional[Path], typer.Option(help="PNG: each image above its attention map.")] = None,
) -> None:
    """Caption an image (or held-out test composites, each with its reference), one line each."""
    captioner = Captioner.load(bundle)
    if beam < 1:
        raise DataError(f"--beam must be >= 1, got {beam}")
    if image is not None:
        try:
            loaded = json.loads(image.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{image} is not JSON ({exc.msg} at line {exc.lineno}); give rows of numbers") from None
        images = [loaded["image"] if isinstance(loaded, dict) and "image" in loaded else loaded]
        references = None
    else:
        if examples < 1:
            raise DataError(f"--examples must be >= 1, got {examples}")
        test = digit_composites("test", examples, seed=seed)
        images, references = test.images, test.captions
    details = captioner.describe_images(images, beam=beam)
    for k, detail in enumerate(details):
        typer.echo(detail["caption"] if references is None else f"{detail['caption']}\t(reference: {references[k]})")
    if plot is not None:
        captioner.plot(images, plot, beam=beam, references=references)
        console.print(f"plot: {plot}")


__all__ = ["app"]

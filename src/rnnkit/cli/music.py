"""`rnnkit music dataset | train | generate`: Bach chorales (or your own scores) to a model to new pieces."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.console import Console

from ..bundle import load
from ..data import music as data
from ..errors import DataError
from ..tasks.music import MODEL_TYPE, MusicConfig, MusicGenerator
from . import create_app
from .options import BundleOut, TrainingOptions, training_options

app = create_app("Learn music from Bach's chorales or your own MIDI/MusicXML files, and write new pieces.")
console = Console(stderr=True)


def _progress(what: str):
    def report(done: int, total: int) -> None:
        if done == total or done % 25 == 0:
            console.print(f"{what}: {done}/{total}", highlight=False)
    return report


def _pieces(source: str, show: bool) -> tuple[list[data.Piece], list[tuple[str, str]]]:
    """``bach`` (the cached corpus) or a folder of scores; the skipped files with their reasons."""
    report = _progress("parsing") if show else None
    if source == "bach":
        return data.bach_chorales(progress=report)
    return data.read_folder(source, progress=report, cache=True)


@app.command()
def dataset(
    rebuild: Annotated[bool, typer.Option(help="Parse the corpus again even if it is cached.")] = False,
    progress: Annotated[bool, typer.Option(help="Report parsing progress.")] = True,
) -> None:
    """Parse music21's Bach chorales once into the cache (C major / A minor) and show the split."""
    pieces, skipped = data.bach_chorales(progress=_progress("parsing") if progress else None, rebuild=rebuild)
    splits = collections.Counter(data.split_of(p.name) for p in pieces)
    frames = sum(p.length_ticks for p in pieces) // data.TICKS
    typer.echo(f"{len(pieces)} chorales ({frames} quarter notes), {len(skipped)} skipped; split by chorale "
               f"(not the JSB split): train {splits['train']}, val {splits['val']}, test {splits['test']}; "
               f"cache: {data.corpus_cache_path()}")
    for name, reason in skipped[:5]:
        typer.echo(f"skipped {name}: {reason}")


@app.command()
@training_options(minutes=5.0)
def train(
    source: Annotated[str, typer.Argument(help="`bach`, or a folder of MIDI/MusicXML files.", show_default=False)],
    out: BundleOut,
    training: TrainingOptions,
    hidden_size: Annotated[int, typer.Option(help="LSTM hidden units.")] = 256,
    steps_per_quarter: Annotated[int, typer.Option(help="Frames per quarter note: 2 = eighths, 4 = sixteenths.")] = 2,
    transpose_range: Annotated[int, typer.Option(help="Training transpositions up to this many semitones.")] = 3,
    encoding: Annotated[str, typer.Option(help="`frames`: an LSTM + NADE per piano-roll frame; `events`: "
                                               "an LSTM over note tokens (BachBot).")] = "frames",
) -> None:
    """Train a music model on SOURCE and write a bundle; report held-out nats per frame.

    A folder's parsed pieces are cached (keyed by its files' paths, sizes and times), so training
    on it again starts at once; files that cannot be read are skipped and counted."""
    config = MusicConfig(encoding=encoding, hidden_size=hidden_size, steps_per_quarter=steps_per_quarter,
                         transpose_range=transpose_range, **training.config_fields())
    pieces, skipped = _pieces(source, training.progress)
    if skipped:
        console.print(f"skipped {len(skipped)} file(s) that could not be read, e.g. {skipped[0][1]}", highlight=False)
    if source == "bach":  # the test chorales stay unseen: benchmarks/music.py scores them
        pieces = [p for p in pieces if data.split_of(p.name) != "test"]
    gen = MusicGenerator(config).fit(pieces, **training.fit_options())
    path = gen.save(out)
    m = gen.metrics
    held = f"held-out {m['val_nll_per_frame']:.3f} nats/frame" if "val_nll_per_frame" in m else "nothing held out"
    console.print(f"trained on {m['train_pieces']} pieces, {m['steps']} steps ({m['stopped']}); {held}; bundle: {path}",
                  highlight=False)


def _primer(gen: MusicGenerator, primer: str, bars: int, seed: Optional[int]) -> tuple[data.Piece, np.ndarray]:
    """The primer's piece (canonical key) and its first ``bars`` bars as a roll at the model's grid.

    ``heldout`` picks a chorale of the corpus's test split (by ``seed``); anything else is a file.
    """
    if primer == "heldout":
        test = [p for p in data.bach_chorales()[0] if data.split_of(p.name) == "test"]
        piece = test[np.random.default_rng(seed).integers(len(test))]
    else:
        piece = data.read_score(primer)
    roll = data.piano_roll(piece, gen.config.steps_per_quarter)
    step = data.TICKS // gen.config.steps_per_quarter
    keep = bars * max(1, round(piece.bar_ticks / step)) - piece.phase_ticks // step  # a pickup counts in bar one
    return piece, roll[:max(keep, 1)]


@app.command()
def generate(
    bundle: Annotated[Path, typer.Argument(help="A music bundle from `rnnkit music train`.", show_default=False)],
    out: Annotated[Path, typer.Option(help="MIDI file to write.")],
    bars: Annotated[int, typer.Option(help="Bars to generate (after the primer).")] = 8,
    temperature: Annotated[float, typer.Option(help="1 = as learned; < 1 safer, > 1 wilder; 0 = most likely.")] = 1.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling: draw only among the likeliest choices "
                                              "that make up this probability (1 = off).")] = 1.0,
    key: Annotated[Optional[str], typer.Option(help="Key of the output, e.g. \"D major\" or \"B minor\" "
                                                    "(default: the primer's key, or C major / A minor).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed: the same seed, the same piece.")] = None,
    primer: Annotated[Optional[str], typer.Option(help="A MIDI/MusicXML file to continue, or `heldout` "
                                                       "(the opening of a test-split chorale).")] = None,
    primer_bars: Annotated[int, typer.Option(help="Bars of the primer to keep.")] = 2,
    plot: Annotated[Optional[Path], typer.Option(help="PNG piano roll to write.")] = None,
    wav: Annotated[Optional[Path], typer.Option(help="WAV to render with fluidsynth.")] = None,
    tempo: Annotated[float, typer.Option(help="Quarter notes per minute in the MIDI.")] = 80.0,
) -> None:
    """Write a new piece as MIDI (and a piano roll, a WAV): from nothing, or continuing --primer."""
    if wav is not None:
        data.check_audio()  # before any work: a missing synthesiser is said first, nothing half written
    if key is not None:
        data.parse_key(key)  # a bad key is said before the model loads
    gen = load(bundle, MODEL_TYPE)
    result, written = write_piece(gen, out, bars=bars, temperature=temperature, top_p=top_p, key=key, seed=seed,
                                  primer=primer, primer_bars=primer_bars, plot=plot, wav=wav, tempo=tempo)
    for warning in result["warnings"]:
        console.print(f"warning: {warning}", highlight=False)
    console.print(f"{len(result['notes'])} notes in {len(result['roll'])} frames, {result['key']}; "
                  f"wrote {', '.join(written)}", highlight=False)


def write_piece(gen: MusicGenerator, out: Path, *, bars: int = 8, temperature: float = 1.0, top_p: float = 1.0,
                key: Optional[str] = None, seed: Optional[int] = None, primer: Optional[str] = None,
                primer_bars: int = 2, plot: Optional[Path] = None, wav: Optional[Path] = None,
                tempo: float = 80.0) -> tuple[dict, list[str]]:
    """Generate one piece with ``gen`` and write its MIDI (and plot, WAV): ``generate`` of the CLI and the demo.

    Without ``key`` a primed piece goes back to its primer's key. A silent piece is refused with
    one line; the result's warnings say when a piece repeats one note.
    """
    piece, roll = _primer(gen, primer, primer_bars, seed) if primer else (None, None)
    phase0 = 0 if piece is None else piece.phase_ticks // (data.TICKS // gen.config.steps_per_quarter)
    back = 0 if piece is None else -piece.transpose  # without --key, into the primer's own key
    result = gen.generate(bars, roll, temperature=temperature, top_p=top_p, seed=seed, phase0=phase0, key=key,
                          transpose=back)
    if not len(result["notes"]):
        raise DataError("the generated piece is silent, so there is no MIDI to write; raise --temperature, "
                        "train longer, or give a --primer")
    data.write_midi(result["notes"], out, tempo_bpm=tempo)
    written = [str(out)]
    if plot is not None:
        from ..plotting import plot_piano_roll

        plot_piano_roll(result["roll"], plot, steps_per_quarter=gen.config.steps_per_quarter,
                        primer_frames=0 if roll is None else len(roll),
                        title=f"{bars} bars in {result['key']}, temperature {temperature:g}"
                              + (f", top-p {top_p:g}" if top_p < 1 else ""))
        written.append(str(plot))
    if wav is not None:
        written.append(str(data.render_wav(out, wav)))
    return result, written

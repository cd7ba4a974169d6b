"""`rnnkit speech dataset | train | say | transcribe`: synthetic spoken words to a recogniser to text."""

from __future__ import annotations

import base64
import collections
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..bundle import load
from ..data import speech as data
from ..errors import RnnkitError
from ..files import atomic_write_bytes
from ..tasks.speech import MODEL_TYPE, SpeechConfig, SpeechRecognizer
from . import create_app
from .options import CELL_HELP, BundleOut, TrainingOptions, training_options

app = create_app("Recognise speech: a CTC recogniser trained on synthetic espeak-ng voices, transcribing WAV files.")
console = Console(stderr=True)

PerSpeaker = Annotated[int, typer.Option(help="Utterances per speaker (accent x voice variant) in the corpus.")]
Accents = Annotated[str, typer.Option(help="Comma-separated espeak-ng English accents of the corpus.")]


def _accents(accents: str) -> tuple[str, ...]:
    return tuple(a.strip() for a in accents.split(",") if a.strip())


def _corpus(per_speaker: int, accents: str, progress: bool) -> data.Corpus:
    names = _accents(accents)
    if not names or per_speaker < 1:
        raise RnnkitError("the corpus needs at least one accent and --per-speaker of at least 1")

    def report(done: int, total: int) -> None:
        if done == total or done % 200 == 0:
            console.print(f"synthesising: {done}/{total}", highlight=False)

    return data.spoken_corpus(per_speaker, accents=names, progress=report if progress else None)


@app.command()
def dataset(per_speaker: PerSpeaker = 20, accents: Accents = ",".join(data.ACCENTS),
            progress: Annotated[bool, typer.Option(help="Report synthesis progress.")] = True) -> None:
    """Synthesise the corpus once into the cache (SYNTHETIC speech, espeak-ng) and show the split."""
    corpus = _corpus(per_speaker, accents, progress)
    splits = collections.Counter(corpus.splits)
    seconds = sum(len(a) for a in corpus.audio) / data.SAMPLE_RATE
    held = {s: sorted({v for v, split in data.SPLITS.items() if split == s}) for s in ("val", "test")}
    typer.echo(f"{len(corpus)} synthetic utterances ({seconds / 60:.1f} minutes) in {len(set(corpus.speakers))} "
               f"voices; train {splits['train']}, val {splits['val']} (voices {', '.join(held['val'])}), "
               f"test {splits['test']} (voices {', '.join(held['test'])}); cache: "
               f"{data.corpus_cache_path(data.plan(per_speaker, accents=_accents(accents)))}")


@app.command()
@training_options(minutes=5.0)
def train(
    out: BundleOut,
    training: TrainingOptions,
    per_speaker: PerSpeaker = 20,
    accents: Accents = ",".join(data.ACCENTS),
    cell: Annotated[str, typer.Option(help=CELL_HELP)] = "lstm",
    hidden_size: Annotated[int, typer.Option(help="Hidden units per direction.")] = 128,
    num_layers: Annotated[int, typer.Option(help="Stacked recurrent layers.")] = 2,
    bidirectional: Annotated[bool, typer.Option(help="Read each utterance both ways; --no-bidirectional "
                                                     "trains a model that can stream.")] = True,
) -> None:
    """Train a recogniser on the synthetic corpus's training voices; report CER/WER on the validation voices."""
    config = SpeechConfig(cell=cell, hidden_size=hidden_size, num_layers=num_layers, bidirectional=bidirectional,
                          **training.config_fields())
    corpus = _corpus(per_speaker, accents, training.progress)
    asr = SpeechRecognizer(config).fit(corpus, **training.fit_options())
    path = asr.save(out)
    m = asr.metrics
    console.print(f"trained on {m['train_utterances']} utterances, {m['steps']} steps ({m['stopped']}); "
                  f"validation voices: CER {m['val_cer']:.3f}, WER {m['val_wer']:.3f}; bundle: {path}",
                  highlight=False)


@app.command()
def say(
    text: Annotated[str, typer.Argument(help="What to say.", show_default=False)],
    out: Annotated[Path, typer.Option(help="WAV file to write; a .json name writes an `rnnkit predict` request.")],
    voice: Annotated[str, typer.Option(help="espeak-ng voice: accent+variant.")] = "en-us+f5",
    speed: Annotated[int, typer.Option(help="Words per minute.")] = 160,
    pitch: Annotated[int, typer.Option(help="0-99.")] = 50,
) -> None:
    """Write TEXT spoken by espeak-ng as a WAV file (synthetic speech, to try `transcribe` on), or as
    the JSON request `rnnkit predict` and the server take."""
    audio = data.synthesize(text, voice, speed, pitch)
    if out.suffix.lower() == ".json":
        request = {"wav": base64.b64encode(data.wav_bytes(audio)).decode()}
        atomic_write_bytes(out, json.dumps(request).encode())
    else:
        data.write_wav(out, audio)
    typer.echo(f"wrote {out}")


@app.command()
def transcribe(
    bundle: Annotated[Path, typer.Argument(help="A bundle from `rnnkit speech train`.", show_default=False)],
    wavs: Annotated[list[Path], typer.Argument(help="16-bit PCM WAV files.", show_default=False)],
    timing: Annotated[bool, typer.Option(help="Also print each word's start and end in seconds.")] = False,
) -> None:
    """Print the transcript of each WAV file, one line each."""
    asr: SpeechRecognizer = load(bundle, MODEL_TYPE)
    requests = []
    for wav in wavs:  # every file is read before any is transcribed: a bad one is said first
        audio, rate = data.read_wav(wav)
        requests.append({"audio": audio.tolist(), "sample_rate": rate})
    for wav, request in zip(wavs, requests):
        answer = asr.predict_checked(request)
        words = "  " + " ".join(f"{w['word']}@{w['start']:.2f}-{w['end']:.2f}" for w in answer["words"]) if timing else ""
        typer.echo(f"{answer['text']}{words}" if len(wavs) == 1 else f"{wav}: {answer['text']}{words}")


__all__ = ["app"]


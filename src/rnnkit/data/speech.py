"""Synthetic speech for recognition: words and digit strings spoken by espeak-ng in many voices.

Nothing here downloads and nothing is recorded: every utterance is SYNTHETIC, made by Debian's
``espeak-ng`` (``apt-get install -y espeak-ng``), a formant synthesiser. A *speaker* is one
English accent (``en-gb``, ``en-us``, ``en-gb-scotland``, ...) in one voice variant (``m1`` ..
``m7``, ``f1`` .. ``f5``: the timbre); each utterance also gets its own speed and pitch. The
splits are speaker-disjoint by variant: validation and test voices are never heard in training,
in any accent, so a test score says how the model does on unseen timbres.

A corpus is generated once (a few subprocesses at a time) and cached under
``cache_dir()/speech`` as an ``.npz`` of plain arrays (no pickle), named by what made it.

The features are log-mel spectrograms computed with ``torch.stft`` and a mel filterbank built
here (no torchaudio or librosa: torch is pinned, and torchaudio pins its own torch).
"""

from __future__ import annotations

import hashlib
import io
import math
import shutil
import subprocess
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError
from ..files import atomic_write_bytes
from .parallel import cache_dir

SAMPLE_RATE = 22050          # what espeak-ng writes
ESPEAK_INSTALL = "apt-get install -y espeak-ng"
FORMAT_VERSION = 1           # of the cached .npz; a new layout gets a new file name, never a misread
ACCENTS = ("en-gb", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
           "en-us-nyc")
#: voice variant (timbre) -> split: whole variants are held out, in every accent
SPLITS = {**{v: "train" for v in ("m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3")},
          "m6": "val", "f4": "val", "m7": "test", "f5": "test"}
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "don't")
WAV_HEADER = 44              # espeak-ng's header; its length field is wrong on stdout, so it is skipped


@dataclass(frozen=True)
class Corpus:
    """Utterances with their transcripts: ``audio[i]`` float32 at ``SAMPLE_RATE``, ``texts[i]``,
    ``speakers[i]`` (``"en-gb+m3"``) and ``splits[i]`` ("train", "val" or "test")."""

    audio: list[np.ndarray]
    texts: list[str]
    speakers: list[str]
    splits: list[str]

    def subset(self, split: str) -> "Corpus":
        keep = [i for i, s in enumerate(self.splits) if s == split]
        return Corpus([self.audio[i] for i in keep], [self.texts[i] for i in keep],
                      [self.speakers[i] for i in keep], [self.splits[i] for i in keep])

    def __len__(self) -> int:
        return len(self.texts)


def check_espeak() -> str:
    """The path of ``espeak-ng``, or the one-line error that says how to install it."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise DataError(f"espeak-ng is not installed; the synthetic speech corpus needs it: {ESPEAK_INSTALL}")
    return path


def synthesize(text: str, voice: str, speed: int = 160, pitch: int = 50) -> np.ndarray:
    """``text`` spoken by espeak-ng's ``voice`` (``"en-gb+f2"``) at ``speed`` words per minute and
    ``pitch`` (0-99): float32 samples in [-1, 1] at :data:`SAMPLE_RATE`."""
    done = subprocess.run([check_espeak(), "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                          capture_output=True)
    if done.returncode != 0 or len(done.stdout) <= WAV_HEADER or b"Error" in done.stderr:
        raise DataError(f"espeak-ng could not speak {text!r} in voice {voice!r}: "
                        f"{done.stderr.decode(errors='replace').strip() or 'no audio'}")
    pcm = np.frombuffer(done.stdout[WAV_HEADER:len(done.stdout) - (len(done.stdout) - WAV_HEADER) % 2], "<i2")
    return pcm.astype(np.float32) / 32768.0


def utterance_text(rng: np.random.Generator) -> str:
    """Half the time a word of :data:`WORDS`, else a string of one to three digits."""
    if rng.random() < 0.5:
        return str(rng.choice(WORDS))
    return " ".join(str(rng.choice(DIGITS)) for _ in range(int(rng.integers(1, 4))))


def plan(per_speaker: int, seed: int = 0, accents: Sequence[str] = ACCENTS,
         variants: Sequence[str] = tuple(SPLITS)) -> list[tuple[str, str, int, int, str]]:
    """The utterances of a corpus, as ``(text, voice, speed, pitch, split)``: ``per_speaker`` for
    every accent and variant, each with its own text, speed (130-210 wpm) and pitch (25-75)."""
    rng = np.random.default_rng(seed)
    rows = []
    for accent in accents:
        for variant in variants:
            for _ in range(per_speaker):
                rows.append((utterance_text(rng), f"{accent}+{variant}", int(rng.integers(130, 211)),
                             int(rng.integers(25, 76)), SPLITS[variant]))
    return rows


def corpus_cache_path(rows: Sequence[tuple]) -> Path:
    digest = hashlib.sha256(repr(list(rows)).encode()).hexdigest()[:16]
    return cache_dir() / "speech" / f"espeak-{len(rows)}-{digest}-v{FORMAT_VERSION}.npz"


def spoken_corpus(per_speaker: int = 20, seed: int = 0, *, accents: Sequence[str] = ACCENTS,
                  variants: Sequence[str] = tuple(SPLITS), workers: int = 2, rebuild: bool = False,
                  progress: Optional[Callable[[int, int], None]] = None) -> Corpus:
    """The synthetic corpus of :func:`plan`, generated once (``workers`` espeak-ng processes at a
    time) and then read from the cache."""
    rows = plan(per_speaker, seed, accents, variants)
    path = corpus_cache_path(rows)
    if path.exists() and not rebuild:
        return load_corpus(path)
    check_espeak()
    done = 0

    def speak(row: tuple) -> np.ndarray:
        nonlocal done
        audio = synthesize(*row[:4])
        done += 1
        if progress is not None:
            progress(done, len(rows))
        return audio

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        audio = list(pool.map(speak, rows))
    corpus = Corpus(audio, [r[0] for r in rows], [r[1] for r in rows], [r[4] for r in rows])
    save_corpus(path, corpus)
    return corpus


def save_corpus(path: Path, corpus: Corpus) -> Path:
    offsets = np.cumsum([0] + [len(a) for a in corpus.audio])
    pcm = np.concatenate(corpus.audio) if corpus.audio else np.zeros(0, np.float32)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, pcm=(np.clip(pcm, -1, 1) * 32767).astype(np.int16), offsets=offsets,
                        texts=np.array(corpus.texts, dtype=str), speakers=np.array(corpus.speakers, dtype=str),
                        splits=np.array(corpus.splits, dtype=str))
    return atomic_write_bytes(path, buffer.getvalue())


def load_corpus(path: Path) -> Corpus:
    with np.load(path, allow_pickle=False) as z:
        pcm, offsets = z["pcm"].astype(np.float32) / 32767.0, z["offsets"]
        return Corpus([pcm[a:b] for a, b in zip(offsets[:-1], offsets[1:])], z["texts"].tolist(),
                      z["speakers"].tolist(), z["splits"].tolist())


# ------------------------------------------------------------------------ features


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, f_min: float = 20.0,
                   f_max: Optional[float] = None) -> Tensor:
    """Triangular filters on the mel scale (HTK's formula), ``(n_fft // 2 + 1, n_mels)``: a
    spectrogram's power ``(T, n_fft // 2 + 1)`` times this is its mel power ``(T, n_mels)``."""
    f_max = f_max or sample_rate / 2

    def mel(f: Tensor) -> Tensor:
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    points = torch.linspace(float(mel(torch.tensor(f_min))), float(mel(torch.tensor(f_max))), n_mels + 2)
    hz = 700.0 * (10 ** (points / 2595.0) - 1.0)                       # (M + 2,) band edges and centres
    bins = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1)[:, None]  # (F, 1)
    lower, centre, upper = hz[:-2], hz[1:-1], hz[2:]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


@dataclass(frozen=True)
class Features:
    """Log-mel spectrogram settings; a frame reads only samples before its end (no centring), so
    the same frames come out whether the audio arrives whole or in pieces."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 512             # samples per window: a fortieth of a second at 22050 Hz
    hop: int = 220               # samples between frames: a hundred frames a second
    n_mels: int = 40

    def __call__(self, audio: Tensor) -> Tensor:
        """Samples ``(S,)`` to log-mel frames ``(T, n_mels)``, ``T = 1 + (S - n_fft) // hop`` (at least 1)."""
        if audio.numel() < self.n_fft:
            audio = torch.nn.functional.pad(audio, (0, self.n_fft - audio.numel()))
        spec = torch.stft(audio, self.n_fft, self.hop, window=torch.hann_window(self.n_fft), center=False,
                          return_complex=True)                              # (F, T)
        power = spec.abs().pow(2).T                                         # (T, F)
        return torch.log(power @ self.filterbank() + 1e-6)

    def filterbank(self) -> Tensor:
        return mel_filterbank(self.n_mels, self.n_fft, self.sample_rate)

    def frames(self, samples: int) -> int:
        return 1 + max(samples - self.n_fft, 0) // self.hop


def resample(audio: Tensor, rate: int, target: int = SAMPLE_RATE) -> Tensor:
    """``audio`` at ``rate`` Hz to ``target`` Hz: an integer factor down averages (a box low-pass),
    anything else is linear interpolation (good enough for speech between 8 and 48 kHz)."""
    if rate == target:
        return audio
    if rate > target and rate % target == 0:
        factor = rate // target
        return audio[: len(audio) // factor * factor].view(-1, factor).mean(1)
    size = max(1, int(math.floor(len(audio) * target / rate)))
    return torch.nn.functional.interpolate(audio.view(1, 1, -1), size=size, mode="linear",
                                           align_corners=False).view(-1)


# ------------------------------------------------------------------------ WAV files


def read_wav(source: Union[str, Path, bytes]) -> tuple[np.ndarray, int]:
    """A 16-bit PCM WAV file (a path, or the file's bytes) as float32 samples in [-1, 1]
    (channels averaged) and its sample rate."""
    name = "the WAV data" if isinstance(source, bytes) else str(source)
    try:
        with wave.open(io.BytesIO(source) if isinstance(source, bytes) else str(source), "rb") as w:
            width, channels, rate, count = w.getsampwidth(), w.getnchannels(), w.getframerate(), w.getnframes()
            raw = w.readframes(count)
    except (wave.Error, EOFError) as exc:
        raise DataError(f"{name} is not a WAV file this can read ({str(exc) or 'it is truncated'}); "
                        "give 16-bit PCM WAV") from None
    if width != 2:
        raise DataError(f"{name} has {8 * width}-bit samples; give 16-bit PCM WAV (e.g. sox in.wav -b 16 out.wav)")
    pcm = np.frombuffer(raw[: len(raw) // (2 * channels) * 2 * channels], "<i2").reshape(-1, channels)
    return pcm.mean(1).astype(np.float32) / 32768.0, rate


def wav_bytes(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Float samples in [-1, 1] as the bytes of a 16-bit mono PCM WAV file."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(sample_rate)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def write_wav(path: Union[str, Path], audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Float samples in [-1, 1] as a 16-bit mono PCM WAV file, written whole or not at all."""
    return atomic_write_bytes(path, wav_bytes(audio, sample_rate))


__all__ = ["ACCENTS", "Corpus", "DIGITS", "ESPEAK_INSTALL", "Features", "SAMPLE_RATE", "SPLITS", "WORDS",
           "check_espeak", "corpus_cache_path", "load_corpus", "mel_filterbank", "plan", "resample",
           "read_wav", "save_corpus", "spoken_corpus", "synthesize", "utterance_text", "wav_bytes",
           "write_wav"]

"""Music as notes in memory: the :class:`Piece`, keys as numbers, and the encodings a model reads.

A piece is kept in its lossless form, a table of notes ``(onset, duration, pitch, voice)`` on a
fine grid of ``TICKS`` per quarter note (sixteenths and triplet eighths both land on it), plus
its bar length and pickup. The piano roll (:func:`piano_roll`) and the event frames
(:func:`frame_events`) a model reads are derived from it at any coarser grid, and read back
into notes (:func:`roll_to_notes`, :func:`events_to_notes`). Plain numpy: reading and writing
files (music21, mido, fluidsynth) is :mod:`rnnkit.data.music`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import DataError

TICKS = 12                 # grid of the stored notes, per quarter note: sixteenths (3) and triplet eighths (4)


@dataclass
class Piece:
    """One piece: its notes ``(N, 4)`` int32 rows of onset, duration (in ``TICKS``), MIDI pitch, voice."""

    name: str
    notes: np.ndarray
    bar_ticks: int = 4 * TICKS   # one bar (4/4 unless the score says otherwise)
    phase_ticks: int = 0         # where tick 0 falls inside its bar: a pickup of one beat in 4/4 is 36
    key: str = ""                # the key music21 found before transposition, e.g. "F major"
    transpose: int = 0           # semitones added to every pitch to reach C major / A minor

    @property
    def length_ticks(self) -> int:
        return int((self.notes[:, 0] + self.notes[:, 1]).max()) if len(self.notes) else 0


# ------------------------------------------------------------------------ keys


def common_key_shift(tonic_pitch_class: int, mode: str) -> int:
    """Semitones (-6..5) that move a key's tonic to C (major) or A (minor): the smaller move."""
    target = 9 if mode == "minor" else 0
    return (target - tonic_pitch_class + 6) % 12 - 6


NOTE_NAMES = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}


def parse_key(text: str) -> tuple[int, str]:
    """``"D major"``, ``"B minor"``, ``"F# minor"``, ``"Bb"`` (major) as ``(tonic pitch class, mode)``."""
    words = str(text).split()
    mode = words[1].lower() if len(words) == 2 else "major"
    name = words[0] if words else ""
    accidental = {"": 0, "#": 1, "♯": 1, "b": -1, "♭": -1, "-": -1}.get(name[1:])
    if len(words) not in (1, 2) or not name or name[0].lower() not in NOTE_NAMES or accidental is None \
            or mode not in ("major", "minor"):
        raise DataError(f"key {text!r} is not a key; write a tonic and a mode, e.g. \"D major\", \"B minor\", "
                        "\"F# minor\", \"Bb major\"")
    return (NOTE_NAMES[name[0].lower()] + accidental) % 12, mode


KEY_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")


def key_name(pitch_class: int, mode: str) -> str:
    """``(2, "major")`` as ``"D major"``; flats for Eb, Ab, Bb as the chorales spell them."""
    return f"{KEY_NAMES[pitch_class % 12]} {mode}"


# ------------------------------------------------------------------------ rolls and events


def piano_roll(piece: Piece, steps_per_quarter: int) -> np.ndarray:
    """The piece as a ``(T, 128)`` boolean roll: frame ``t`` holds every pitch sounding at it.

    A note covers the frames from its onset to its end, each rounded to the grid; a note shorter
    than a frame keeps one frame. Onsets are not marked: the JSB Chorales roll has none either.
    """
    step = TICKS // steps_per_quarter
    starts = np.round(piece.notes[:, 0] / step).astype(int)
    ends = np.maximum(np.round((piece.notes[:, 0] + piece.notes[:, 1]) / step).astype(int), starts + 1)
    roll = np.zeros((int(ends.max()) if len(ends) else 0, 128), dtype=bool)
    for start, end, pitch in zip(starts, ends, piece.notes[:, 2]):
        roll[start:end, pitch] = True
    return roll


def roll_to_notes(roll: np.ndarray, steps_per_quarter: int) -> np.ndarray:
    """Notes ``(N, 4)`` (onset and duration in ``TICKS``, voice 0) of a ``(T, 128)`` roll:
    a note starts where a pitch turns on and lasts while it stays on."""
    step, padded = TICKS // steps_per_quarter, np.pad(roll.astype(bool), ((1, 1), (0, 0)))
    rows = []
    for pitch in np.flatnonzero(padded.any(0)):
        change = np.flatnonzero(np.diff(padded[:, pitch].astype(np.int8)))
        rows += [(on * step, (off - on) * step, pitch, 0) for on, off in zip(change[::2], change[1::2])]
    return np.array(sorted(rows), dtype=np.int32).reshape(-1, 4)


def frame_events(piece: Piece, steps_per_quarter: int) -> list[list[tuple[int, bool]]]:
    """The piece as events on the roll's grid: per frame, the sounding pitches from the top down,
    each with ``True`` where a note starts there and ``False`` where it is held from the frame before.

    This is BachBot's encoding (Liang 2016) without voices and fermatas: unlike the roll it keeps
    a repeated note apart from a held one, and dropping the flags gives :func:`piano_roll` exactly.
    """
    roll = piano_roll(piece, steps_per_quarter)
    step = TICKS // steps_per_quarter
    onsets = np.zeros_like(roll)
    onsets[np.round(piece.notes[:, 0] / step).astype(int), piece.notes[:, 2]] = True
    held = np.vstack([np.zeros_like(roll[:1]), roll[:-1]]) & ~onsets  # (T, 128): on before, not restruck
    return [[(int(p), not held[t, p]) for p in np.flatnonzero(frame)[::-1]] for t, frame in enumerate(roll)]


def events_to_notes(frames: Sequence[Sequence[tuple[int, bool]]], steps_per_quarter: int) -> np.ndarray:
    """Notes ``(N, 4)`` (ticks, voice 0) of :func:`frame_events`' frames: a note runs from its start
    while the frames after it hold it. A held pitch that was not sounding starts a note."""
    step, rows, open_notes = TICKS // steps_per_quarter, [], {}
    for t, frame in enumerate(list(frames) + [[]]):  # an empty frame after the last closes every note
        now = {pitch: new for pitch, new in frame}
        for pitch in [p for p in open_notes if p not in now or now[p]]:
            rows.append((open_notes[pitch] * step, (t - open_notes.pop(pitch)) * step, pitch, 0))
        for pitch in now:
            open_notes.setdefault(pitch, t)
    return np.array(sorted(rows), dtype=np.int32).reshape(-1, 4)

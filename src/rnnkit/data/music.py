"""Music files in and out: Bach's chorales from music21's corpus, or a folder of the user's files.

Scores are read by music21 into :class:`~rnnkit.data.music_notes.Piece` (notes on a grid of
``TICKS`` per quarter note; the piece, its keys and its piano-roll and event encodings live in
:mod:`rnnkit.data.music_notes`, re-exported here). MIDI is written from notes with mido and
read back with music21, so MIDI -> notes -> roll -> notes -> MIDI keeps every note that sits
on the roll's grid; WAV is rendered by fluidsynth.

Canonical form: every piece is transposed into C major or A minor (its key analysed by
music21, Krumhansl-Schmuckler), so that a small model need not learn twelve keys; training
adds random transpositions back as augmentation (the task does, on the roll).

Parsing the 400-odd corpus files takes minutes, so the encoded corpus is cached once under
``cache_dir()/music`` as an ``.npz`` of plain arrays (no pickle), written atomically, its
name versioned by ``FORMAT_VERSION``. The split is by chorale and deterministic (a hash of
the file's base name): it is NOT the JSB Chorales split of Boulanger-Lewandowski et al. (2012).
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from ..errors import DataError
from ..files import atomic_write_bytes
from .music_notes import (KEY_NAMES, NOTE_NAMES, TICKS, Piece, common_key_shift, events_to_notes, frame_events,
                          key_name, parse_key, piano_roll, roll_to_notes)
from .parallel import cache_dir

PathLike = Union[str, Path]

FORMAT_VERSION = 1         # of the cached .npz; a new layout gets a new file name, never a misread
SUFFIXES = (".mid", ".midi", ".mxl", ".musicxml", ".xml", ".krn", ".abc")
VOICES = ("soprano", "alto", "tenor", "bass")
INSTALL = "pip install 'rnnkit[music]' (music21 and mido)"


def _music21():
    try:
        import music21
    except ImportError:
        raise DataError(f"music needs music21; install it with `{INSTALL}`") from None
    return music21


def split_of(name: str) -> str:
    """``"train"`` (80 %), ``"val"`` (10 %) or ``"test"`` (10 %), fixed by a hash of the base name.

    ``bwv112.5-sc`` and ``bwv112.5`` (the same chorale, with and without its instruments) share
    a base name, so one chorale never sits on both sides of the split.
    """
    base = Path(name).name.split("-")[0].removesuffix(Path(name).suffix)
    bucket = int(hashlib.sha1(base.encode()).hexdigest(), 16) % 10
    return "test" if bucket == 9 else "val" if bucket == 8 else "train"


# ------------------------------------------------------------------------ reading scores


def analyse_key(notes: np.ndarray) -> tuple[int, str]:
    """The key music21 finds in notes ``(N, 4)`` (Krumhansl-Schmuckler): ``(tonic pitch class, mode)``."""
    music21 = _music21()
    stream = music21.stream.Stream()
    for onset, duration, pitch, _ in notes:
        stream.insert(onset / TICKS, music21.note.Note(int(pitch), quarterLength=max(int(duration), 1) / TICKS))
    found = stream.analyze("key")
    return found.tonic.pitchClass, found.mode


def read_score(path: PathLike, *, choose_satb: bool = False, common_key: bool = True) -> Piece:
    """A MIDI, MusicXML, Humdrum or ABC file as a :class:`Piece` (music21 parses it).

    ``choose_satb`` keeps only the parts named soprano, alto, tenor and bass when a score has
    all four (some chorales carry instrument parts too). Raises ``DataError`` with one line for
    a file music21 cannot read or that holds no notes.
    """
    music21, path = _music21(), Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; pass a MIDI (.mid) or MusicXML (.mxl, .musicxml) file")
    try:
        score = music21.converter.parse(str(path))
    except Exception as exc:  # music21 raises many kinds on bad files; every one means "cannot read it"
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise DataError(f"{path}: not a score music21 can read ({reason}); pass a MIDI or MusicXML file") from None
    return piece_from_score(score, path.name, choose_satb=choose_satb, common_key=common_key)


def piece_from_score(score, name: str, *, choose_satb: bool = False, common_key: bool = True) -> Piece:
    """The notes of a parsed music21 score, one voice per part, tied notes merged."""
    parts = list(getattr(score, "parts", [])) or [score]
    if choose_satb:
        named = {str(p.partName or "").lower(): p for p in parts}
        satb = [next((p for n, p in named.items() if n.startswith(v)), None) for v in VOICES]
        parts = satb if all(p is not None for p in satb) else parts
    rows = []
    for voice, part in enumerate(parts):
        for element in part.stripTies().flatten().notes:
            onset, duration = round(float(element.offset) * TICKS), round(float(element.quarterLength) * TICKS)
            if duration <= 0:
                continue  # grace notes take no time
            for pitch in getattr(element, "pitches", ()):
                rows.append((onset, duration, pitch.midi, voice))
    if not rows:
        raise DataError(f"{name}: the score holds no notes; pass a file with music in it")
    notes = np.array(sorted(rows), dtype=np.int32)
    notes[:, 0] -= notes[:, 0].min()  # the first note starts the piece
    bar_ticks, phase_ticks = _meter(score, parts[0])
    key, shift = "", 0
    if common_key:
        found = score.analyze("key")
        key, shift = f"{found.tonic.name} {found.mode}", common_key_shift(found.tonic.pitchClass, found.mode)
        notes[:, 2] += shift
    return Piece(name, notes, bar_ticks, phase_ticks, key, shift)


def _meter(score, part) -> tuple[int, int]:
    """Ticks per bar from the first time signature (4/4 without one); the pickup from the first bar."""
    signatures = list(score.recurse().getElementsByClass("TimeSignature"))
    bar = round(float(signatures[0].barDuration.quarterLength) * TICKS) if signatures else 4 * TICKS
    measures = list(part.getElementsByClass("Measure"))
    padding = round(float(measures[0].paddingLeft) * TICKS) if measures else 0
    return max(bar, 1), padding % max(bar, 1)


def read_folder(folder: PathLike, progress: Optional[Callable[[int, int], None]] = None, *,
                cache: bool = False) -> tuple[list[Piece], list[tuple[str, str]]]:
    """Every score in ``folder`` (recursively) and the ``(file, reason)`` of each one skipped.

    With ``cache`` the result is kept under ``cache_dir()/music`` (:func:`folder_cache_path`),
    keyed by every file's path, size and modification time: reading the same folder again
    loads it without parsing, and a file added, removed or changed parses the folder afresh.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder; pass a folder of MIDI or MusicXML files, or `bach`")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{folder} holds no music files ({', '.join(SUFFIXES)}); add some or pass `bach`")
    cached = folder_cache_path(folder, files) if cache else None
    if cached is not None and cached.exists():
        return load_pieces(cached), load_skipped(cached)
    pieces, skipped = [], []
    for i, path in enumerate(files):
        try:
            pieces.append(read_score(path))
        except DataError as exc:
            skipped.append((str(path.relative_to(folder)), str(exc)))
        if progress:
            progress(i + 1, len(files))
    if not pieces:
        raise DataError(f"none of the {len(files)} files in {folder} could be read (first: {skipped[0][1]})")
    if cached is not None:
        save_pieces(cached, pieces, skipped)
    return pieces, skipped


def folder_cache_path(folder: PathLike, files: list[Path]) -> Path:
    """Where :func:`read_folder` caches ``folder``: named by a hash of its files' paths, sizes and mtimes."""
    folder = Path(folder).resolve()
    digest = hashlib.sha1(str(folder).encode())
    for path in files:
        stat = path.stat()
        digest.update(f"\0{path.resolve().relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in folder.name)[:40] or "folder"
    return cache_dir() / "music" / f"folder-{slug}-{digest.hexdigest()[:16]}-v{FORMAT_VERSION}.npz"


# ------------------------------------------------------------------------ the Bach corpus, cached


def corpus_cache_path() -> Path:
    return cache_dir() / "music" / f"bach-v{FORMAT_VERSION}.npz"


def bach_chorales(progress: Optional[Callable[[int, int], None]] = None, rebuild: bool = False
                  ) -> tuple[list[Piece], list[tuple[str, str]]]:
    """The Bach chorales of music21's corpus in canonical form, parsed once and cached.

    Returns the pieces and the files skipped (with the reason). Roman-numeral analyses
    (``.rntxt``) in the same folder are not scores and are not read.
    """
    path = corpus_cache_path()
    if path.exists() and not rebuild:
        return load_pieces(path), load_skipped(path)
    music21 = _music21()
    files = [p for p in music21.corpus.getComposer("bach") if Path(p).suffix.lower() in SUFFIXES]
    pieces, skipped = [], []
    for i, file in enumerate(files):
        try:
            pieces.append(piece_from_score(music21.corpus.parse(file), Path(file).name, choose_satb=True))
        except Exception as exc:  # a corpus file music21 cannot read is skipped and counted
            skipped.append((Path(file).name, " ".join(str(exc).split())[:120]))
        if progress:
            progress(i + 1, len(files))
    save_pieces(path, pieces, skipped)
    return pieces, skipped


def save_pieces(path: PathLike, pieces: list[Piece], skipped: Sequence[tuple[str, str]] = ()) -> Path:
    """Pieces (and the files skipped, with the reason) as one ``.npz`` of plain arrays (no pickle),
    written atomically."""
    counts = np.array([len(p.notes) for p in pieces], dtype=np.int64)
    arrays = {
        "skipped": np.array([list(s) for s in skipped], dtype=str).reshape(-1, 2),
        "format_version": np.array(FORMAT_VERSION), "ticks": np.array(TICKS),
        "notes": np.concatenate([p.notes for p in pieces]).astype(np.int32), "counts": counts,
        "names": np.array([p.name for p in pieces]), "keys": np.array([p.key for p in pieces]),
        "meter": np.array([(p.bar_ticks, p.phase_ticks, p.transpose) for p in pieces], dtype=np.int32),
    }
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())


def load_pieces(path: PathLike) -> list[Piece]:
    """What :func:`save_pieces` wrote; a file of another layout is refused with the fix."""
    with np.load(path, allow_pickle=False) as data:
        if int(data["format_version"]) != FORMAT_VERSION or int(data["ticks"]) != TICKS:
            raise DataError(f"{path} is a music cache of another rnnkit version; delete it, "
                            "or run `rnnkit music dataset --rebuild`")
        notes = np.split(data["notes"], np.cumsum(data["counts"])[:-1])
        return [Piece(str(n), x, int(m[0]), int(m[1]), str(k), int(m[2]))
                for n, x, k, m in zip(data["names"], notes, data["keys"], data["meter"])]


def load_skipped(path: PathLike) -> list[tuple[str, str]]:
    """The ``(file, reason)`` pairs :func:`save_pieces` kept beside the pieces (none in older files)."""
    with np.load(path, allow_pickle=False) as data:
        return [(str(f), str(r)) for f, r in data["skipped"]] if "skipped" in data.files else []


# ------------------------------------------------------------------------ MIDI and audio out


def write_midi(notes: np.ndarray, path: PathLike, *, tempo_bpm: float = 80.0, program: int = 19) -> Path:
    """Notes as a type-1 MIDI file, one track per voice (written atomically with mido).

    ``program`` 19 is General MIDI's church organ, the chorales' instrument.
    """
    try:
        import mido
    except ImportError:
        raise DataError(f"writing MIDI needs mido; install it with `{INSTALL}`") from None
    resolution = 480
    midi = mido.MidiFile(type=1, ticks_per_beat=resolution)
    voices = sorted(set(notes[:, 3].tolist())) or [0]
    for channel, voice in enumerate(voices):
        track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(tempo_bpm))] if channel == 0 else [])
        track.append(mido.Message("program_change", program=program, channel=channel % 16))
        events = []
        for onset, duration, pitch, _ in notes[notes[:, 3] == voice]:
            events += [(int(onset + duration), 0, int(pitch)), (int(onset), 1, int(pitch))]  # offs first at a tick
        now = 0
        for tick, on, pitch in sorted(events):
            kind = "note_on" if on else "note_off"
            at = tick * resolution // TICKS
            track.append(mido.Message(kind, note=pitch, velocity=80 if on else 0, channel=channel % 16, time=at - now))
            now = at
        midi.tracks.append(track)
    buffer = io.BytesIO()
    midi.save(file=buffer)
    return atomic_write_bytes(path, buffer.getvalue())


SOUNDFONTS = ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/sounds/sf2/default-GM.sf2")
AUDIO_INSTALL = "apt-get install fluidsynth fluid-soundfont-gm"


def check_audio() -> tuple[str, str]:
    """The ``fluidsynth`` program and a General MIDI soundfont, or the one line that says what to install."""
    program = shutil.which("fluidsynth")
    font = next((f for f in SOUNDFONTS if Path(f).is_file()), None)
    if program is None or font is None:
        missing = "fluidsynth" if program is None else "a General MIDI soundfont"
        raise DataError(f"WAV output needs {missing}; install it with `{AUDIO_INSTALL}`, or drop --wav")
    return program, font


def render_wav(midi: PathLike, path: PathLike, sample_rate: int = 44100) -> Path:
    """A MIDI file rendered to WAV by fluidsynth with a General MIDI soundfont (written atomically)."""
    program, font = check_audio()
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "out.wav"
        done = subprocess.run([program, "-ni", "-q", "-F", str(wav), "-r", str(sample_rate), font, str(midi)],
                              capture_output=True, text=True)
        if done.returncode != 0 or not wav.is_file():
            reason = " ".join((done.stderr or done.stdout).split())[:200]
            raise DataError(f"fluidsynth could not render {midi} ({reason})")
        return atomic_write_bytes(path, wav.read_bytes())


__all__ = ["check_audio", "render_wav", "FORMAT_VERSION", "KEY_NAMES", "NOTE_NAMES", "Piece", "TICKS", "bach_chorales", "common_key_shift",
           "analyse_key", "events_to_notes", "key_name",
           "folder_cache_path", "frame_events", "load_pieces", "load_skipped", "piano_roll", "parse_key",
           "piece_from_score", "read_folder", "read_score", "roll_to_notes", "save_pieces", "split_of", "write_midi"]

"""Music generation: Bach chorales (or a user's scores) learnt by a recurrent network, and new pieces
drawn from it, streamed frame by frame or token by token.

Two encodings, one task:

- ``encoding="frames"`` (:mod:`.music_frames`): a piece is a piano roll, one binary vector of
  sounding pitches per step of a fixed grid; an LSTM reads the previous frame and the position
  in the bar, and each frame's notes are drawn by a NADE conditioned on it (RNN-NADE), so the
  loss is the exact negative log-likelihood in nats per frame, the figure published for JSB Chorales.
- ``encoding="events"`` (:mod:`.music_events`): BachBot's tokens, a language model over them.

Both stream through the same slots (:mod:`.music_stream`), which a server steps as one batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..data.music import (TICKS, Piece, analyse_key, events_to_notes, key_name, parse_key, piano_roll,
                          split_of)
from ..errors import DataError, RnnkitError
from .base import Task, TaskConfig
from .music_events import EventModel, encode_events, event_loss
from .music_frames import FrameModel, frame_loss, random_transpose
from .music_stream import Composition, Frame, check_sampling, open_composition, primer_roll, step
from .schema import sampling_properties

MODEL_TYPE = "music_generator"
ENCODINGS = ("frames", "events")
TOKENS_PER_FRAME = 4  # an event model's training chunk holds this many tokens per frame of seq_len (SATB: ~4-5)


@dataclass(frozen=True, kw_only=True)
class MusicConfig(TaskConfig):
    """Everything that defines a frame model; saved in its bundle as ``config.json``."""

    KIND = "music generator"

    encoding: str = "frames"            # "frames": LSTM + NADE per frame; "events": note tokens (music_events)
    steps_per_quarter: int = 2          # eighth-note frames: the chorales' passing notes fit, sixteenths round
    cell: str = "lstm"
    hidden_size: int = 256
    num_layers: int = 1
    nade_size: int = 96                 # the NADE's hidden units per frame (RNN-NADE used 150)
    dropout: float = 0.3                # on h_t before the NADE: a few hundred chorales overfit fast
    transpose_range: int = 3            # training only: each chunk moved up to this many semitones either way
    seq_len: int = 128                  # frames per training chunk (16 bars of 4/4 at eighths)
    batch_size: int = 16                # a corpus of a few hundred chunks: small batches, more steps
    epochs: int = 500                   # an upper bound: the time budget ends a fit
    minutes: Optional[float] = 5.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_positive("steps_per_quarter", "hidden_size", "num_layers", "nade_size", "seq_len")
        if TICKS % self.steps_per_quarter:
            raise RnnkitError(f"steps_per_quarter must divide {TICKS} (1, 2, 3, 4, 6 or 12), "
                              f"got {self.steps_per_quarter}")
        if self.encoding not in ENCODINGS:
            raise RnnkitError(f"encoding must be one of {', '.join(ENCODINGS)}, got {self.encoding!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise RnnkitError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.transpose_range, int) or not 0 <= self.transpose_range <= 12:
            raise RnnkitError(f"transpose_range must be an integer in 0..12, got {self.transpose_range!r}")


class MusicGenerator(Task):
    """Learns pieces as piano-roll frames or as note events and writes new ones, from nothing or
    continuing a primer, in the model's key or any other.

    Example::

        pieces, _ = rnnkit.data.music.bach_chorales()
        gen = MusicGenerator(minutes=5).fit(pieces)               # encoding="events": the token model
        out = gen.generate(bars=8, temperature=0.9, top_p=0.95, seed=1, key="D major")
        write_midi(out["notes"], "piece.mid")
    """

    name = "music"
    model_type = MODEL_TYPE
    config_class = MusicConfig
    request_schema = {"type": "object", "additionalProperties": False, "properties": {
        "primer": {"type": ["array", "null"], "items": {"type": "array", "items": {"type": "integer"}},
                   "description": "frames to continue, each a list of MIDI pitches; null starts from silence"},
        "bars": {"type": "integer", "minimum": 1, "description": "bars to generate (default 8)"},
        "key": {"type": ["string", "null"], "description": "e.g. \"D major\": the piece moved there (not streamed)"},
        **sampling_properties(1.0, "most likely notes", "piece")}}
    response_schema = {"type": "object", "properties": {
        "frames": {"type": "array", "description": "primer + generated frames, each a list of MIDI pitches"},
        "notes": {"type": "array", "description": "{pitch, start, duration}, times in quarter notes"},
        "key": {"type": "string", "description": "the key the piece is written in"},
        "steps_per_quarter": {"type": "integer"},
        "warnings": {"type": "array", "items": {"type": "string"}}}}
    config: MusicConfig

    def __init__(self, config: Optional[MusicConfig] = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.low = 0           # MIDI pitch of the roll's first column
        self.pitches = 128     # columns of the roll
        self.phases = 1        # one-hot size of the position in bar (the longest bar seen)
        self.frames_per_bar = 8

    @property
    def events(self) -> bool:
        return self.config.encoding == "events"

    # --------------------------------------------------------------------- data

    def _grid(self, piece: Piece) -> tuple[int, int]:
        """Frames per bar of ``piece`` and the bar position of its first frame."""
        step = TICKS // self.config.steps_per_quarter
        return max(1, round(piece.bar_ticks / step)), piece.phase_ticks // step

    def encode(self, piece: Piece) -> tuple[np.ndarray, np.ndarray]:
        """A piece's roll over the model's pitch range ``(T, P)`` and each frame's bar position ``(T,)``."""
        roll = piano_roll(piece, self.config.steps_per_quarter)
        per_bar, phase0 = self._grid(piece)
        phase = (phase0 + np.arange(len(roll))) % per_bar % self.phases
        return roll[:, self.low:self.low + self.pitches].astype(np.float32), phase

    def encode_events(self, piece: Piece) -> tuple[np.ndarray, np.ndarray, int]:
        """A piece's tokens ``(N,)``, the bar position of each token's successor ``(N,)``, its frames."""
        per_bar, phase0 = self._grid(piece)
        return encode_events(piece, self.config.steps_per_quarter, self.low, self.pitches, phase0, per_bar,
                             self.phases)

    def chunks(self, pieces: Sequence[Piece]) -> tuple[tuple[Tensor, ...], Tensor]:
        """Training tensors, each ``(N, length, ...)``, and each chunk's valid length.

        Frames: ``(previous, frames, phase, mask)`` in chunks of ``seq_len`` frames; events:
        ``(tokens, next tokens, phase)`` in chunks of ``TOKENS_PER_FRAME * seq_len`` tokens. A piece is
        cut into chunks whose first input is the one before the cut, so only the state is lost there.
        """
        length = self.config.seq_len * (TOKENS_PER_FRAME if self.events else 1)
        rows = []
        for piece in pieces:
            if self.events:
                tokens, phase, _ = self.encode_events(piece)
                columns = (tokens[:-1], tokens[1:], phase[:-1])
            else:
                roll, phase = self.encode(piece)
                columns = (np.concatenate([np.zeros_like(roll[:1]), roll[:-1]]), roll, phase,
                           np.ones(len(roll), np.float32))
            rows += [[c[start:start + length] for c in columns] for start in range(0, len(columns[0]), length)]
        tensors = tuple(torch.zeros((len(rows), length) + c.shape[1:], dtype=torch.from_numpy(c).dtype)
                        for c in rows[0])
        for i, row in enumerate(rows):
            for tensor, column in zip(tensors, row):
                tensor[i, :len(column)] = torch.from_numpy(column)
        return tensors, torch.tensor([len(row[0]) for row in rows])

    def _set_ranges(self, pieces: Sequence[Piece]) -> None:
        """Pitch range (the notes seen, widened by the transposition range) and bar lengths from ``pieces``."""
        pitches = np.concatenate([p.notes[:, 2] for p in pieces])
        margin = self.config.transpose_range
        self.low = max(0, int(pitches.min()) - margin)
        self.pitches = min(128, int(pitches.max()) + margin + 1) - self.low
        bars = [self._grid(p)[0] for p in pieces]
        self.phases, self.frames_per_bar = max(bars), int(np.bincount(bars).argmax())

    # --------------------------------------------------------------------- training

    def _fit(self, pieces: Sequence[Piece], val_pieces: Optional[Sequence[Piece]] = None) -> None:
        """Train on ``pieces``; without ``val_pieces`` those of ``split_of`` "val" and "test" pick the best weights."""
        pieces = list(pieces)
        if not pieces or not all(isinstance(p, Piece) for p in pieces):
            raise DataError("no pieces to learn from; pass rnnkit.data.music pieces (bach_chorales or read_folder)")
        if val_pieces is None:
            held = [p for p in pieces if split_of(p.name) != "train"]
            if held and len(held) < len(pieces):
                pieces, val_pieces = [p for p in pieces if split_of(p.name) == "train"], held
        self._set_ranges(pieces)
        train, lengths = self.chunks(pieces)
        val = self.chunks(val_pieces)[0] if val_pieces else None
        torch.manual_seed(self.config.seed)
        self.model = self.build_model()
        self.train_results = []
        batch = min(self.config.batch_size, len(train[0]))
        result = self.train(self.model, event_loss if self.events else frame_loss, train, val, lengths=lengths,
                            batch_size=batch, decay_over_budget=self.config.minutes is not None)
        self.model.eval()
        self.metrics = {**self.training_summary(), "epochs_completed": result.epochs_completed,
                        "train_pieces": len(pieces), "parameters": sum(p.numel() for p in self.model.parameters())}
        if val_pieces:
            self.metrics.update(val_pieces=len(val_pieces), val_nll_per_frame=self.frame_nll(val_pieces))

    def build_model(self) -> nn.Module:
        cfg = self.config
        if self.events:
            return EventModel(self.pitches, self.phases, cfg.hidden_size, cell=cfg.cell, num_layers=cfg.num_layers,
                              dropout=cfg.dropout, transpose_range=cfg.transpose_range)
        return FrameModel(self.pitches, self.phases, cfg.hidden_size, cfg.nade_size, cell=cfg.cell,
                          num_layers=cfg.num_layers, dropout=cfg.dropout, transpose_range=cfg.transpose_range)

    def preprocessing(self) -> dict[str, Any]:
        return {"low": self.low, "pitches": self.pitches, "phases": self.phases, "frames_per_bar": self.frames_per_bar}

    def restore(self, state: dict[str, Any]) -> None:
        self.low, self.pitches = int(state["low"]), int(state["pitches"])
        self.phases, self.frames_per_bar = int(state["phases"]), int(state["frames_per_bar"])

    @torch.no_grad()
    def frame_nll(self, pieces: Sequence[Piece]) -> float:
        """Held-out negative log-likelihood in nats per frame: whole pieces from a zero state, the
        sum over every frame of every piece divided by the number of frames (the JSB definition).
        Notes outside the model's pitch range are dropped. For the event model the sum is over
        every token (its roll's NLL is at most this: see :mod:`rnnkit.tasks.music_events`)."""
        self.require_fitted()
        total, count = 0.0, 0
        for piece in pieces:
            if self.events:
                tokens, phase, frames = self.encode_events(piece)
                batch = tuple(torch.from_numpy(x)[None] for x in (tokens[:-1], tokens[1:], phase[:-1]))
                nll, _ = event_loss(self.model, batch)
                total, count = total + nll.item() * (len(tokens) - 1), count + frames
                continue
            roll, phase = self.encode(piece)
            frames = torch.from_numpy(roll)[None]  # (1, T, P)
            previous = torch.cat([torch.zeros_like(frames[:, :1]), frames[:, :-1]], 1)
            nll, _ = frame_loss(self.model, (previous, frames, torch.from_numpy(phase)[None], torch.ones(1, len(roll))))
            total, count = total + nll.item() * len(roll), count + len(roll)
        return total / max(count, 1)

    # --------------------------------------------------------------------- generation

    @torch.no_grad()
    def compose(self, count: int, frames: int, primer: Optional[np.ndarray] = None, *, temperature: float = 1.0,
                top_p: float = 1.0, seed: Optional[int] = None, phase0: int = 0) -> list[list[Frame]]:
        """``count`` pieces, each the primer roll ``(T0, 128)`` then ``frames`` new frames, written
        together (one batch); piece ``i`` draws from seed ``seed + i``. Frames as ``(pitch index, starts)``."""
        slots = [self._open(frames, primer, temperature, top_p, None if seed is None else seed + i, phase0)
                 for i in range(count)]
        while not all(slot.done for slot in slots):
            step(self.model, self.events, slots, self.frames_per_bar)
        return [slot.frames for slot in slots]

    def generate_rolls(self, count: int, frames: int, primer: Optional[np.ndarray] = None,
                       **options: Any) -> np.ndarray:
        """``count`` pieces of ``frames`` new frames after ``primer`` ``(T0, 128)``: ``(count, T0 + frames, 128)``."""
        return np.stack([self._roll(piece) for piece in self.compose(count, frames, primer, **options)])

    def generate(self, bars: int = 8, primer: Optional[np.ndarray] = None, *, temperature: float = 1.0,
                 top_p: float = 1.0, seed: Optional[int] = None, phase0: int = 0,
                 key: Optional[str] = None, transpose: int = 0) -> dict[str, Any]:
        """One piece: ``bars`` bars after the ``primer`` roll ``(T0, 128)`` (at the model's grid).

        Returns the roll ``(T, 128)``, its notes ``(N, 4)`` (ticks of :mod:`rnnkit.data.music`),
        the key and warnings: a silent piece or one repeated note is reported, never passed off as
        music. The model writes in C major / A minor; ``key`` ("D major") moves the whole piece
        (primer included) to that key, found by music21's analysis of what was written; without
        it the piece moves by ``transpose`` semitones (a primer's way back to its own key).
        """
        if not isinstance(bars, int) or isinstance(bars, bool) or bars < 1:
            raise RnnkitError(f"bars must be a positive integer, got {bars!r}")
        target = None if key is None else parse_key(key)  # a bad key is refused before any work
        frames = self.compose(1, bars * self.frames_per_bar, primer, temperature=temperature, top_p=top_p,
                              seed=seed, phase0=phase0)[0]
        roll = self._roll(frames)
        warnings = degenerate(roll, 0 if primer is None else len(primer))
        if primer is not None and primer[:, :self.low].any() | primer[:, self.low + self.pitches:].any():
            warnings.append(f"primer notes outside the model's range (MIDI {self.low}-{self.low + self.pitches - 1}) "
                            "were left out of what it continues")
        notes = events_to_notes([[(self.low + k, new) for k, new in f] for f in frames], self.config.steps_per_quarter)
        found = analyse_key(notes) if len(notes) else (0, "major")
        shift = transpose
        if target is not None:
            shift = (target[0] - found[0] + 6) % 12 - 6  # the smaller move to the asked tonic
            if target[1] != found[1]:
                warnings.append(f"the model wrote in {found[1]}, not {target[1]}; the piece is in "
                                f"{key_name(target[0], found[1])} (prime it with a {target[1]} piece to steer it)")
        notes[:, 2] += shift
        roll = np.roll(roll, shift, axis=1)
        return {"roll": roll, "notes": notes, "key": key_name((found[0] + shift) % 12, found[1]),
                "warnings": warnings}

    def _roll(self, frames: list[Frame]) -> np.ndarray:
        roll = np.zeros((len(frames), 128), dtype=bool)
        for t, frame in enumerate(frames):
            roll[t, [self.low + k for k, _ in frame]] = True
        return roll

    def _open(self, frames: int, primer: Optional[np.ndarray], temperature: float, top_p: float,
              seed: Optional[int], phase0: int) -> Composition:
        """A composition with the primer read: the slot :meth:`step_streams` advances."""
        self.require_fitted()
        check_sampling(temperature, top_p)
        primer = np.zeros((0, 128), bool) if primer is None else np.asarray(primer, dtype=bool)
        inside = primer[:, self.low:self.low + self.pitches]
        before = np.vstack([np.zeros_like(inside[:1]), inside[:-1]])
        primer_frames = [[(int(k), not before[t, k]) for k in np.flatnonzero(f)[::-1]] for t, f in enumerate(inside)]
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        slot = Composition(frames, primer_frames, phase0, float(temperature), float(top_p), generator, self.low)
        return open_composition(self.model, self.events, slot, self.frames_per_bar)

    def predict_json(self, request: dict[str, Any]) -> dict[str, Any]:
        out = self.generate(request.get("bars", 8), primer_roll(request.get("primer")), key=request.get("key"),
                            **_sampling(request))
        quarter = TICKS
        return {"frames": [np.flatnonzero(f).tolist() for f in out["roll"]],
                "notes": [{"pitch": int(p), "start": s / quarter, "duration": d / quarter} for s, d, p, _ in out["notes"]],
                "key": out["key"], "steps_per_quarter": self.config.steps_per_quarter, "warnings": out["warnings"]}

    def stream_json(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        slot = self.open_stream(request)
        while not slot.done:
            yield from self.step_streams([slot])[0]

    @torch.no_grad()
    def open_stream(self, request: dict[str, Any]) -> Composition:
        """One piece as a slot: frames stream as they are written, ``{"frame": [...], "starts": [...]}``,
        in the model's key (a ``key`` needs the whole piece: use predict)."""
        if request.get("key") is not None:
            raise RnnkitError("key moves the whole piece once it is written, so it cannot stream; use predict")
        bars = request.get("bars", 8)
        if not isinstance(bars, int) or bars < 1:
            raise RnnkitError(f"bars must be a positive integer, got {bars!r}")
        return self._open(bars * self.frames_per_bar, primer_roll(request.get("primer")), **_sampling(request),
                          phase0=0)

    @torch.no_grad()
    def step_streams(self, slots: list[Composition]) -> list[list[dict[str, Any]]]:
        """One step of every slot as one batch: a frame each (frame model) or a token each (event model)."""
        return step(self.model, self.events, slots, self.frames_per_bar)


def _sampling(request: dict[str, Any]) -> dict[str, Any]:
    top_p = request.get("top_p")  # null, like leaving it out, is off
    return {"temperature": request.get("temperature", 1.0), "top_p": 1.0 if top_p is None else top_p,
            "seed": request.get("seed")}


def degenerate(roll: np.ndarray, primer_frames: int = 0) -> list[str]:
    """Warnings for a generated roll ``(T, 128)`` that is not music: silent, or one pitch throughout."""
    new = roll[primer_frames:]
    used = np.flatnonzero(new.any(0))
    if len(used) == 0:
        return ["the generated part is silent; raise the temperature, train longer, or give a primer"]
    if len(used) == 1:
        return [f"the generated part repeats one note (MIDI {used[0]}) throughout; raise the temperature "
                "or train longer"]
    return []


__all__ = ["FrameModel", "MusicConfig", "MusicGenerator", "degenerate", "frame_loss", "random_transpose"]

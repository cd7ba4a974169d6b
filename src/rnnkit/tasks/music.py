"""Music generation: an LSTM over piano-roll frames, each frame's notes drawn by a NADE (RNN-NADE).

A piece is a sequence of frames, each the set of pitches sounding on one step of a fixed grid
(``steps_per_quarter``), read as a binary vector ``x_t`` over the pitch range ``P`` (the
roll of :mod:`rnnkit.data.music`). The recurrent layer reads the previous frame and the
position in the bar and summarises the past in ``h_t``. Independent sigmoids on ``h_t`` would
pick each pitch on its own and write incoherent chords; instead the frame is drawn as a NADE
(Larochelle & Murray 2011) whose biases come from ``h_t``, as in Boulanger-Lewandowski et al.
(2012), pitch by pitch from the bass up, each pitch seeing the ones chosen below it::

    b_t, c_t = split(Linear(h_t))                        # (P,), (K,)
    a_k      = c_t + Σ_{j<k} W_j x_{t,j}                 # the NADE's hidden input for pitch k, (K,)
    p(x_{t,k} = 1 | x_{t,<k}, past) = σ(b_{t,k} + V_k · σ(a_k))

so ``-log p(x_t | past)`` is exact: the loss is the held-out negative log-likelihood in nats
per frame, the figure published for JSB Chorales. In training the sums over ``j < k`` are one
cumulative sum; in generation the pitches are sampled one after another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..data.music import TICKS, Piece, piano_roll, roll_to_notes, split_of
from ..errors import DataError, RnnkitError
from ..layers import Recurrent
from .base import Task, TaskConfig

MODEL_TYPE = "music_generator"


@dataclass(frozen=True, kw_only=True)
class MusicConfig(TaskConfig):
    """Everything that defines a frame model; saved in its bundle as ``config.json``."""

    KIND = "music generator"

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
        if not 0.0 <= self.dropout < 1.0:
            raise RnnkitError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.transpose_range, int) or not 0 <= self.transpose_range <= 12:
            raise RnnkitError(f"transpose_range must be an integer in 0..12, got {self.transpose_range!r}")


class FrameModel(nn.Module):
    """A recurrent layer over (previous frame, position in bar) and a NADE per frame (module docstring).

    ``rnn`` may be any module with ``Recurrent``'s ``forward(x, state) -> (out, state)``
    (the benchmark passes ``torch.nn.LSTM`` to compare); generation also needs ``step``.
    """

    def __init__(self, pitches: int, phases: int, hidden_size: int, nade_size: int, *, cell: str = "lstm",
                 num_layers: int = 1, dropout: float = 0.0, transpose_range: int = 0,
                 rnn: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.pitches, self.phases, self.nade_size = pitches, phases, nade_size
        self.transpose_range = transpose_range  # training only: frame_loss moves each chunk by up to this
        self.rnn = rnn if rnn is not None else Recurrent(pitches + phases, hidden_size, cell=cell,
                                                         num_layers=num_layers, dropout=dropout)
        self.dropout = nn.Dropout(dropout)
        self.condition = nn.Linear(hidden_size, pitches + nade_size)  # h_t -> (b_t, c_t)
        self.W = nn.Parameter(torch.randn(pitches, nade_size) * 0.01)  # row j: what pitch j adds to a
        self.V = nn.Parameter(torch.randn(pitches, nade_size) * 0.01)  # row k: pitch k's output weights

    def inputs(self, previous: Tensor, phase: Tensor) -> Tensor:
        """The recurrent input: the previous frame ``(B, T, P)`` and the bar position one-hot."""
        return torch.cat([previous, nn.functional.one_hot(phase, self.phases).to(previous.dtype)], -1)

    def forward(self, inputs: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """``(B, T, P + F)`` inputs to the NADE's conditioning ``(B, T, P + K)`` and the state."""
        h, state = self.rnn(inputs, state)  # (B, T, H)
        return self.condition(self.dropout(h)), state

    def logits(self, condition: Tensor, frames: Tensor) -> Tensor:
        """Teacher-forced logits ``(B, T, P)`` of each pitch given the pitches below it in ``frames``."""
        b, c = condition.split([self.pitches, self.nade_size], -1)
        added = frames[..., None] * self.W  # (B, T, P, K): what each present pitch adds
        a = c[..., None, :] + added.cumsum(-2) - added  # (B, T, P, K): the pitches strictly below k
        return b + (torch.sigmoid(a) * self.V).sum(-1)  # (B, T, P)

    def sample(self, condition: Tensor, temperature: float, generator: Optional[torch.Generator]) -> Tensor:
        """One frame per row of ``condition`` ``(B, P + K)``, pitch by pitch from the lowest: ``(B, P)``."""
        b, a = condition.split([self.pitches, self.nade_size], -1)
        frame = torch.zeros_like(b)
        for k in range(self.pitches):
            logit = b[:, k] + (torch.sigmoid(a) * self.V[k]).sum(-1)  # (B,)
            p = torch.sigmoid(logit / temperature) if temperature > 0 else (logit > 0).float()
            frame[:, k] = torch.bernoulli(p, generator=generator) if temperature > 0 else p
            a = a + frame[:, k, None] * self.W[k]
        return frame


def frame_loss(model: FrameModel, batch: tuple[Tensor, ...], state: Any = None) -> tuple[Tensor, Any]:
    """Nats per frame: the NADE's negative log-likelihood summed over pitches, averaged over valid frames.

    In training each chunk is first moved by a random transposition that keeps its notes in range.
    """
    previous, frames, phase, mask = batch
    if model.training:
        previous, frames = random_transpose(previous, frames, model.transpose_range)
    condition, _ = model(model.inputs(previous, phase))
    nll = nn.functional.binary_cross_entropy_with_logits(model.logits(condition, frames), frames,
                                                         reduction="none").sum(-1)  # (B, T)
    return (nll * mask).sum() / mask.sum().clamp(min=1), None


def random_transpose(previous: Tensor, frames: Tensor, semitones: int) -> tuple[Tensor, Tensor]:
    """Each chunk moved up or down by up to ``semitones``, never pushing a note out of the range."""
    if semitones == 0:
        return previous, frames
    present = (frames.amax(1) + previous.amax(1)) > 0  # (B, P): the pitches a chunk uses
    pitches = torch.arange(frames.size(-1), device=frames.device)
    low = torch.where(present, pitches, frames.size(-1)).amin(1)  # (B,)
    high = torch.where(present, pitches, -1).amax(1)
    down, up = (-low).clamp(min=-semitones, max=0), (frames.size(-1) - 1 - high).clamp(min=0, max=semitones)
    shift = down + (torch.rand(len(low), device=frames.device) * (up - down + 1)).long().clamp(max=up - down)
    index = (pitches[None, :] - shift[:, None]) % frames.size(-1)  # (B, P): source pitch of each pitch
    move = lambda x: x.gather(-1, index[:, None, :].expand_as(x))  # noqa: E731
    return move(previous), move(frames)


class MusicGenerator(Task):
    """Learns pieces as piano rolls and writes new ones, from nothing or continuing a primer.

    Example::

        pieces, _ = rnnkit.data.music.bach_chorales()
        gen = MusicGenerator(minutes=5).fit(pieces)
        out = gen.generate(bars=8, temperature=0.9, seed=1)
        write_midi(out["notes"], "piece.mid")
    """

    name = "music"
    model_type = MODEL_TYPE
    config_class = MusicConfig
    request_schema = {"type": "object", "additionalProperties": False, "properties": {
        "primer": {"type": ["array", "null"], "items": {"type": "array", "items": {"type": "integer"}},
                   "description": "frames to continue, each a list of MIDI pitches; null starts from silence"},
        "bars": {"type": "integer", "minimum": 1, "description": "bars to generate (default 8)"},
        "temperature": {"type": "number", "minimum": 0, "description": "0 = most likely notes (default 1)"},
        "seed": {"type": ["integer", "null"], "description": "the same seed gives the same piece"}}}
    response_schema = {"type": "object", "properties": {
        "frames": {"type": "array", "description": "primer + generated frames, each a list of MIDI pitches"},
        "notes": {"type": "array", "description": "{pitch, start, duration}, times in quarter notes"},
        "steps_per_quarter": {"type": "integer"},
        "warnings": {"type": "array", "items": {"type": "string"}}}}
    config: MusicConfig

    def __init__(self, config: Optional[MusicConfig] = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.low = 0           # MIDI pitch of the roll's first column
        self.pitches = 128     # columns of the roll
        self.phases = 1        # one-hot size of the position in bar (the longest bar seen)
        self.frames_per_bar = 8

    # --------------------------------------------------------------------- data

    def encode(self, piece: Piece) -> tuple[np.ndarray, np.ndarray]:
        """A piece's roll over the model's pitch range ``(T, P)`` and each frame's bar position ``(T,)``."""
        roll = piano_roll(piece, self.config.steps_per_quarter)
        step = TICKS // self.config.steps_per_quarter
        per_bar = max(1, round(piece.bar_ticks / step))
        phase = (piece.phase_ticks // step + np.arange(len(roll))) % per_bar % self.phases
        return roll[:, self.low:self.low + self.pitches].astype(np.float32), phase

    def chunks(self, pieces: Sequence[Piece]) -> tuple[tuple[Tensor, ...], Tensor]:
        """Training tensors ``(previous, frames, phase, mask)``, each ``(N, seq_len, ...)``, and lengths.

        A piece longer than ``seq_len`` is cut into chunks; each chunk's first input is the frame
        before it, so nothing but the recurrent state is lost at a cut.
        """
        length, rows = self.config.seq_len, []
        for piece in pieces:
            roll, phase = self.encode(piece)
            previous = np.concatenate([np.zeros_like(roll[:1]), roll[:-1]])
            for start in range(0, len(roll), length):
                rows.append((previous[start:start + length], roll[start:start + length], phase[start:start + length]))
        n, p = len(rows), self.pitches
        previous, frames = torch.zeros(n, length, p), torch.zeros(n, length, p)
        phase, mask = torch.zeros(n, length, dtype=torch.long), torch.zeros(n, length)
        for i, (x, y, f) in enumerate(rows):
            previous[i, :len(x)], frames[i, :len(y)] = torch.from_numpy(x), torch.from_numpy(y)
            phase[i, :len(f)], mask[i, :len(f)] = torch.from_numpy(f), 1.0
        return (previous, frames, phase, mask), mask.sum(1).long()

    def _set_ranges(self, pieces: Sequence[Piece]) -> None:
        """Pitch range (the notes seen, widened by the transposition range) and bar lengths from ``pieces``."""
        pitches = np.concatenate([p.notes[:, 2] for p in pieces])
        margin = self.config.transpose_range
        self.low = max(0, int(pitches.min()) - margin)
        self.pitches = min(128, int(pitches.max()) + margin + 1) - self.low
        step = TICKS // self.config.steps_per_quarter
        bars = [max(1, round(p.bar_ticks / step)) for p in pieces]
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
        result = self.train(self.model, frame_loss, train, val, lengths=lengths, batch_size=batch,
                            decay_over_budget=self.config.minutes is not None)
        self.model.eval()
        self.metrics = {**self.training_summary(), "epochs_completed": result.epochs_completed,
                        "train_pieces": len(pieces), "parameters": sum(p.numel() for p in self.model.parameters())}
        if val_pieces:
            self.metrics.update(val_pieces=len(val_pieces), val_nll_per_frame=self.frame_nll(val_pieces))

    def build_model(self) -> FrameModel:
        cfg = self.config
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
        Notes outside the model's pitch range are dropped (counted by ``out_of_range``)."""
        self.require_fitted()
        total, count = 0.0, 0
        for piece in pieces:
            roll, phase = self.encode(piece)
            frames = torch.from_numpy(roll)[None]  # (1, T, P)
            previous = torch.cat([torch.zeros_like(frames[:, :1]), frames[:, :-1]], 1)
            nll, _ = frame_loss(self.model, (previous, frames, torch.from_numpy(phase)[None], torch.ones(1, len(roll))))
            total, count = total + nll.item() * len(roll), count + len(roll)
        return total / max(count, 1)

    # --------------------------------------------------------------------- generation

    @torch.no_grad()
    def generate_rolls(self, count: int, frames: int, primer: Optional[np.ndarray] = None, *,
                       temperature: float = 1.0, seed: Optional[int] = None, phase0: int = 0) -> np.ndarray:
        """``count`` pieces of ``frames`` new frames after ``primer`` ``(T0, 128)``: ``(count, T0 + frames, 128)``."""
        self.require_fitted()
        if not isinstance(temperature, (int, float)) or not np.isfinite(temperature) or temperature < 0:
            raise RnnkitError(f"temperature must be a number >= 0 (0 = most likely notes), got {temperature!r}")
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        primer = np.zeros((0, 128), bool) if primer is None else primer
        known = torch.from_numpy(primer[:, self.low:self.low + self.pitches].astype(np.float32))
        known = known[None].expand(count, -1, -1)  # (N, T0, P)
        previous, state, out = torch.zeros(count, self.pitches), None, list(known.unbind(1))
        for t in range(len(primer) + frames):
            phase = torch.full((count, 1), (phase0 + t) % self.frames_per_bar % self.phases)
            condition, state = self.model(self.model.inputs(previous[:, None], phase), state)  # (N, 1, P+K)
            if t >= len(primer):
                out.append(self.model.sample(condition[:, 0], float(temperature), generator))
            previous = out[t]
        rolls = np.zeros((count, len(out), 128), dtype=bool)
        if out:
            rolls[:, :, self.low:self.low + self.pitches] = torch.stack(out, 1).numpy() > 0.5
        return rolls

    def generate(self, bars: int = 8, primer: Optional[np.ndarray] = None, *, temperature: float = 1.0,
                 seed: Optional[int] = None, phase0: int = 0) -> dict[str, Any]:
        """One piece: ``bars`` bars after the ``primer`` roll ``(T0, 128)`` (at the model's grid).

        Returns the roll ``(T, 128)``, its notes ``(N, 4)`` (ticks of :mod:`rnnkit.data.music`)
        and warnings: a silent piece or one repeated note is reported, never passed off as music.
        """
        if not isinstance(bars, int) or isinstance(bars, bool) or bars < 1:
            raise RnnkitError(f"bars must be a positive integer, got {bars!r}")
        roll = self.generate_rolls(1, bars * self.frames_per_bar, primer, temperature=temperature, seed=seed,
                                   phase0=phase0)[0]
        warnings = degenerate(roll, 0 if primer is None else len(primer))
        if primer is not None and primer[:, :self.low].any() | primer[:, self.low + self.pitches:].any():
            warnings.append(f"primer notes outside the model's range (MIDI {self.low}-{self.low + self.pitches - 1}) "
                            "were left out of what it continues")
        return {"roll": roll, "notes": roll_to_notes(roll, self.config.steps_per_quarter), "warnings": warnings}

    def predict_json(self, request: dict[str, Any]) -> dict[str, Any]:
        primer = request.get("primer")
        roll = None
        if primer:
            roll = np.zeros((len(primer), 128), dtype=bool)
            for t, pitches in enumerate(primer):
                bad = [p for p in pitches if not 0 <= p < 128]
                if bad:
                    raise RnnkitError(f"primer frame {t} holds {bad[0]}, not a MIDI pitch (0-127)")
                roll[t, pitches] = True
        out = self.generate(request.get("bars", 8), roll, temperature=request.get("temperature", 1.0),
                            seed=request.get("seed"))
        quarter = TICKS
        return {"frames": [np.flatnonzero(f).tolist() for f in out["roll"]],
                "notes": [{"pitch": int(p), "start": s / quarter, "duration": d / quarter} for s, d, p, _ in out["notes"]],
                "steps_per_quarter": self.config.steps_per_quarter, "warnings": out["warnings"]}


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

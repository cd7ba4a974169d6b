"""Writing pieces step by step: the slots behind the music task's generate, stream and server batching.

A :class:`Composition` is one piece in progress. It keeps what the model predicted for its next
step (the frame model's NADE conditioning ``(P + K,)``, or the event model's next-token logits
``(V,)``), its recurrent state (batch 1), its sampling options and random generator, and the
frames written so far. :func:`step` advances any number of compositions together: each draws
from its own prediction with its own options, then the ones still writing are fed what they
drew as one batch (their states stacked along the batch axis) and split back.

A step of the frame model writes one frame; a step of the event model writes one token, and a
frame is complete at its step-end token. Frames are kept as lists of ``(pitch index, starts)``
from the top down, the form :func:`rnnkit.data.music.events_to_notes` reads.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import RnnkitError
from .base import StreamSlot
from .music_events import FIRST_PITCH, START, STEP, allowed, sample_token

Frame = list[tuple[int, bool]]


class Composition(StreamSlot):
    """One piece being written (a slot of the music task's ``step_streams``)."""

    def __init__(self, frames: int, primer: list[Frame], phase0: int, temperature: float, top_p: float,
                 generator: Optional[torch.Generator], low: int) -> None:
        self.left, self.primer, self.written = frames, primer, []
        self.phase0, self.temperature, self.top_p, self.generator, self.low = phase0, temperature, top_p, generator, low
        self.current: Frame = []  # the event model's frame in progress
        self.prediction: Optional[Tensor] = None
        self.state: Any = None
        self.pieces: list[dict[str, Any]] = []
        self.done = frames == 0

    @property
    def frames(self) -> list[Frame]:
        return self.primer + self.written

    def sounding(self) -> set[int]:
        """Pitch indices of the last complete frame."""
        return {k for k, _ in self.frames[-1]} if self.frames else set()

    def finish_frame(self, frame: Frame) -> None:
        self.written.append(frame)
        self.left -= 1
        self.done = self.left == 0
        self.pieces.append({"frame": [self.low + k for k, _ in frame],
                            "starts": [self.low + k for k, new in frame if new]})

    def take(self) -> list[dict[str, Any]]:
        pieces, self.pieces = self.pieces, []
        return pieces


def phase_of(slot: Composition, frame: int, per_bar: int, phases: int) -> int:
    return (slot.phase0 + frame) % per_bar % phases


def open_composition(model: nn.Module, events: bool, slot: Composition, per_bar: int) -> Composition:
    """Read the slot's primer (or nothing) through the model: its state and first prediction."""
    phases, primer = model.phases, slot.primer
    if events:
        tokens, frame_of_next = [START], [0]
        for t, frame in enumerate(primer):
            tokens += [FIRST_PITCH + 2 * k + (0 if new else 1) for k, new in frame] + [STEP]
            frame_of_next += [t] * len(frame) + [t + 1]
        phase = torch.tensor([[phase_of(slot, f, per_bar, phases) for f in frame_of_next]])
        logits, slot.state = model(torch.tensor([tokens]), phase)  # (1, N, V)
        slot.prediction = logits[0, -1]
    else:
        rolls = torch.zeros(len(primer) + 1, model.pitches)  # (T0 + 1, P): silence, then the primer
        for t, frame in enumerate(primer):
            rolls[t + 1, [k for k, _ in frame]] = 1.0
        phase = torch.tensor([[phase_of(slot, t, per_bar, phases) for t in range(len(primer) + 1)]])
        condition, slot.state = model(model.inputs(rolls[None], phase))  # (1, T0 + 1, P + K)
        slot.prediction = condition[0, -1]
    return slot


def step(model: nn.Module, events: bool, slots: list[Composition], per_bar: int) -> list[list[dict[str, Any]]]:
    """Advance every slot one step (a frame, or a token), the live ones fed as one batch."""
    drawn = [None if slot.done else (_draw_token if events else _draw_frame)(model, slot) for slot in slots]
    live = [i for i, slot in enumerate(slots) if not slot.done]
    if live:
        state = _join([slots[i].state for i in live])
        phase = torch.tensor([[phase_of(slots[i], len(slots[i].frames), per_bar, model.phases)] for i in live])
        if events:
            out, state = model(torch.tensor([[drawn[i]] for i in live]), phase, state)  # (B, 1, V)
        else:
            frames = torch.stack([drawn[i] for i in live])[:, None]  # (B, 1, P)
            out, state = model(model.inputs(frames, phase), state)  # (B, 1, P + K)
        for row, i in enumerate(live):
            slots[i].prediction, slots[i].state = out[row, -1], _row(state, row)
    return [slot.take() for slot in slots]


def _draw_frame(model: nn.Module, slot: Composition) -> Tensor:
    """The slot's next frame ``(P,)`` from its NADE conditioning."""
    frame = model.sample(slot.prediction[None], slot.temperature, slot.generator, slot.top_p)[0]
    before = slot.sounding()
    slot.finish_frame([(int(k), int(k) not in before) for k in np.flatnonzero(frame.numpy())[::-1]])
    return frame


def _draw_token(model: nn.Module, slot: Composition) -> int:
    """The slot's next token, among those that can follow (``allowed``)."""
    last = slot.current[-1][0] if slot.current else None
    logits = slot.prediction.masked_fill(~allowed(model.pitches, last, slot.sounding()), float("-inf"))
    token = sample_token(logits, slot.temperature, slot.top_p, slot.generator)
    if token == STEP:
        frame, slot.current = slot.current, []
        slot.finish_frame(frame)
    else:
        slot.current.append(((token - FIRST_PITCH) // 2, (token - FIRST_PITCH) % 2 == 0))
    return token


def _join(states: list[Any]) -> Any:
    """Per-slot states (``(L, 1, H)``, or an LSTM's pair) stacked along the batch axis."""
    if isinstance(states[0], tuple):
        return tuple(torch.cat(parts, 1) for parts in zip(*states))
    return torch.cat(states, 1)


def _row(state: Any, row: int) -> Any:
    if isinstance(state, tuple):
        return tuple(part[:, row:row + 1] for part in state)
    return state[:, row:row + 1]


def check_sampling(temperature: float, top_p: float) -> None:
    """Refuse, in one line, a temperature below 0 or a top_p outside (0, 1]."""
    if not isinstance(temperature, (int, float)) or not np.isfinite(temperature) or temperature < 0:
        raise RnnkitError(f"temperature must be a number >= 0 (0 = most likely notes), got {temperature!r}")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise RnnkitError(f"top_p must be in (0, 1] (1 = off), got {top_p!r}")


def primer_roll(primer: Optional[list[list[int]]]) -> Optional[np.ndarray]:
    """A request's primer (frames of MIDI pitches) as a roll ``(T0, 128)``."""
    if not primer:
        return None
    roll = np.zeros((len(primer), 128), dtype=bool)
    for t, pitches in enumerate(primer):
        bad = [p for p in pitches if not 0 <= p < 128]
        if bad:
            raise RnnkitError(f"primer frame {t} holds {bad[0]}, not a MIDI pitch (0-127)")
        roll[t, pitches] = True
    return roll


__all__ = ["Composition", "Frame", "check_sampling", "open_composition", "primer_roll", "step"]

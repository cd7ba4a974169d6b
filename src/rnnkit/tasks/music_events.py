"""The event model of the music task: a piece as a token sequence, an LSTM predicting the next token.

BachBot's encoding (Liang 2016, :func:`rnnkit.data.music.frame_events`): each frame of the grid
is written as its sounding pitches from the top down, each one token saying "a note starts on
pitch k" or "pitch k is held from the frame before", then a step-end token::

    START  [72 new] [64 new] [60 new] [48 new] STEP  [72 held] [65 new] ... STEP ... END

The model is a language model over these tokens (embedding, recurrent layer, softmax), the
bar position of the frame being written beside each input token. Its likelihood of a piece is
``p(tokens)``; dropping the new/held flags turns the tokens into the frame model's roll, so
``-log p(tokens)`` summed over a piece and divided by its frames is an upper bound on the frame
NLL that the same model implies (nats per frame, comparable with the frame model's figure).

Generation samples one token per step of the streaming interface; tokens that cannot follow
(a pitch at or above the last one of the frame, a held pitch that was not sounding, START,
END) are masked, so every sample decodes to notes.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from ..data.music import frame_events
from ..layers import Recurrent

PAD, START, END, STEP = 0, 1, 2, 3
FIRST_PITCH = 4  # token FIRST_PITCH + 2k: a note starts on pitch k of the range; + 1: pitch k held


def token_count(pitches: int) -> int:
    """Vocabulary size for a pitch range of ``pitches``: four specials and two tokens per pitch."""
    return FIRST_PITCH + 2 * pitches


def encode_events(piece, steps_per_quarter: int, low: int, pitches: int, phase0: int, per_bar: int,
                  phases: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Tokens ``(N,)`` of a piece (START ... END), the bar position of the frame each token's
    successor belongs to ``(N,)``, and the number of frames. Pitches outside the range are dropped."""
    tokens, frame_of_next = [START], []
    frames = frame_events(piece, steps_per_quarter)
    for t, frame in enumerate(frames):
        for pitch, new in frame:
            if low <= pitch < low + pitches:
                frame_of_next.append(t)
                tokens.append(FIRST_PITCH + 2 * (pitch - low) + (0 if new else 1))
        frame_of_next.append(t)
        tokens.append(STEP)
    tokens.append(END)
    frame_of_next += [len(frames), len(frames)]  # END's frame; the last entry (END's own) is never read
    phase = (phase0 + np.asarray(frame_of_next)) % per_bar % phases
    return np.asarray(tokens, dtype=np.int64), phase[: len(tokens)], len(frames)


def decode_events(tokens: list[int], low: int) -> list[list[tuple[int, bool]]]:
    """Frames of ``(MIDI pitch, starts)`` from tokens; a frame left open at the end is kept."""
    frames, current = [], []
    for token in tokens:
        if token == STEP:
            frames.append(current)
            current = []
        elif token >= FIRST_PITCH:
            current.append((low + (token - FIRST_PITCH) // 2, (token - FIRST_PITCH) % 2 == 0))
    return frames + ([current] if current else [])


class EventModel(nn.Module):
    """Embedding of the previous token and the bar position, a recurrent layer, logits of the next token."""

    def __init__(self, pitches: int, phases: int, hidden_size: int, *, cell: str = "lstm", num_layers: int = 1,
                 dropout: float = 0.0, transpose_range: int = 0, rnn: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.pitches, self.phases, self.transpose_range = pitches, phases, transpose_range
        self.embed = nn.Embedding(token_count(pitches), hidden_size)
        self.rnn = rnn if rnn is not None else Recurrent(hidden_size + phases, hidden_size, cell=cell,
                                                         num_layers=num_layers, dropout=dropout)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, token_count(pitches))

    def forward(self, tokens: Tensor, phase: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """Tokens and bar positions ``(B, T)`` to next-token logits ``(B, T, V)`` and the state."""
        x = torch.cat([self.embed(tokens), nn.functional.one_hot(phase, self.phases).float()], -1)  # (B, T, E+F)
        h, state = self.rnn(x, state)  # (B, T, H)
        return self.head(self.dropout(h)), state


def event_loss(model: EventModel, batch: tuple[Tensor, ...], state: Any = None) -> tuple[Tensor, Any]:
    """Mean nats per token (padding excluded); training chunks are first moved by a random transposition."""
    tokens, targets, phase = batch
    if model.training and model.transpose_range:
        tokens, targets = transpose_tokens(tokens, targets, model.transpose_range, model.pitches)
    logits, _ = model(tokens, phase)
    return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=PAD), None


def transpose_tokens(tokens: Tensor, targets: Tensor, semitones: int, pitches: int) -> tuple[Tensor, Tensor]:
    """Each chunk's pitch tokens moved by one random shift up to ``semitones`` that keeps them in range."""
    both = torch.cat([tokens, targets], 1)
    k = torch.where(both >= FIRST_PITCH, (both - FIRST_PITCH) // 2, -1)  # (B, 2T): pitch index, -1 elsewhere
    high = k.amax(1)
    low = torch.where(k >= 0, k, pitches).amin(1)
    down, up = (-low).clamp(-semitones, 0), (pitches - 1 - high).clamp(0, semitones)  # (B,)
    shift = down + (torch.rand(len(k)) * (up - down + 1)).long().clamp(max=up - down)
    move = lambda x: torch.where(x >= FIRST_PITCH, x + 2 * shift[:, None], x)  # noqa: E731
    return move(tokens), move(targets)


def allowed(pitches: int, last: Optional[int], sounding: set[int]) -> Tensor:
    """Which tokens ``(V,)`` may come next inside a frame whose lowest pitch so far is ``last``
    (None: none yet), the previous frame having ``sounding`` (pitch indices): STEP, a new note
    below ``last``, or a held note below ``last`` that was sounding."""
    mask = torch.zeros(token_count(pitches), dtype=torch.bool)
    mask[STEP] = True
    below = pitches if last is None else last
    mask[FIRST_PITCH:FIRST_PITCH + 2 * below:2] = True
    for k in sounding:
        if k < below:
            mask[FIRST_PITCH + 2 * k + 1] = True
    return mask


def sample_token(logits: Tensor, temperature: float, top_p: float, generator: Optional[torch.Generator]) -> int:
    """One token from ``logits`` ``(V,)``: the likeliest at ``temperature`` 0, else drawn from the
    tempered softmax cut to the smallest set of tokens whose probability reaches ``top_p``."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, -1)
    ordered, index = probs.sort(descending=True)
    keep = ordered.cumsum(0) - ordered < top_p  # the likeliest tokens until the mass reaches top_p
    nucleus = torch.zeros_like(probs).scatter(0, index, ordered * keep)
    return int(torch.multinomial(nucleus, 1, generator=generator))


__all__ = ["END", "EventModel", "PAD", "START", "STEP", "allowed", "decode_events", "encode_events", "event_loss",
           "sample_token", "token_count", "transpose_tokens"]

"""The frame model of the music task: an LSTM over piano-roll frames, each drawn by a NADE (RNN-NADE).

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

from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..layers import Recurrent


class FrameModel(nn.Module):
    """A recurrent layer over (previous frame, position in bar) and a NADE per frame (see the module docstring).

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

    def sample(self, condition: Tensor, temperature: float, generator: Optional[torch.Generator],
               top_p: float = 1.0) -> Tensor:
        """One frame per row of ``condition`` ``(B, P + K)``, pitch by pitch from the lowest: ``(B, P)``.

        ``top_p`` is nucleus sampling on each pitch's two outcomes: when the likelier one alone
        reaches ``top_p`` it is taken, else the pitch is drawn (so 0.9 never plays a pitch the
        model gives less than 10 %, and always plays one it gives more than 90 %).
        """
        b, a = condition.split([self.pitches, self.nade_size], -1)
        frame = torch.zeros_like(b)
        for k in range(self.pitches):
            logit = b[:, k] + (torch.sigmoid(a) * self.V[k]).sum(-1)  # (B,)
            if temperature > 0:
                p = torch.sigmoid(logit / temperature)
                drawn = torch.bernoulli(p, generator=generator)  # drawn always: top_p keeps the random stream
                frame[:, k] = torch.where(torch.maximum(p, 1 - p) >= top_p, (p > 0.5).float(), drawn)
            else:
                frame[:, k] = (logit > 0).float()
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


__all__ = ["FrameModel", "frame_loss", "random_transpose"]

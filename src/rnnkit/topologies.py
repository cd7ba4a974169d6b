"""The four sequence topologies: one-to-one, one-to-many, many-to-one, many-to-many.

Each is a small ``nn.Module`` around a :class:`~rnnkit.layers.Recurrent` stack and a
linear head. Inputs are float features ``(B, T, I)``, or token ids ``(B, T)`` when the
topology is built with ``vocab_size`` (an embedding of width ``input_size`` is added).
Each keeps its constructor arguments in ``self.config`` so a bundle can rebuild it with
``from_config``. The encoder-decoder (different input and output lengths) lives with
the translation task.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from .errors import RnnkitError
from .layers import LayerState, Recurrent
from .precision import linear_at_best_precision


#: how a many-to-one topology summarises a sequence (``ManyToOne.summarise``)
POOLINGS = ("last", "attention", "concat")


class _Topology(nn.Module):
    """Shared plumbing: config capture, optional token embedding, the recurrent stack."""

    def __init__(self, config: dict[str, Any], input_size: int, hidden_size: int, vocab_size: Optional[int],
                 recurrent_options: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(vocab_size, input_size) if vocab_size else None
        self.recurrent = Recurrent(input_size, hidden_size, **recurrent_options)

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        """Rebuild from ``self.config`` (as saved in a bundle)."""
        return cls(**config)

    def embed(self, x: Tensor) -> Tensor:
        """Token ids ``(B, T)`` to vectors ``(B, T, I)``; float features pass through."""
        if self.embedding is None:
            return x
        if x.dtype not in (torch.int32, torch.int64):
            raise RnnkitError(f"expected token ids (integers) of shape (batch, time), got {x.dtype}")
        if x.device.type == "cpu":  # the lookup checks the range itself: no extra pass per step
            try:
                return self.embedding(x)
            except IndexError:
                pass  # raised below, in rnnkit's words
        if x.numel() and (x.min() < 0 or x.max() >= self.embedding.num_embeddings):
            raise RnnkitError(
                f"token ids must be in [0, {self.embedding.num_embeddings}), got {x.min().item()}..{x.max().item()}"
            )
        return self.embedding(x)


class OneToOne(_Topology):
    """One input vector to one output: the degenerate case, a single recurrent step.

    Shapes: ``(B, I)`` to ``(B, O)``. It is a feed-forward network in recurrent
    clothing, kept so the four topologies of the RNN literature are all here.
    """

    def __init__(self, input_size: int, output_size: int, hidden_size: int = 64, *, cell: str = "lstm",
                 num_layers: int = 1, dropout: float = 0.0, **cell_options: Any) -> None:
        config = dict(input_size=input_size, output_size=output_size, hidden_size=hidden_size, cell=cell,
                      num_layers=num_layers, dropout=dropout, **cell_options)
        super().__init__(config, input_size, hidden_size, None,
                         dict(cell=cell, num_layers=num_layers, dropout=dropout, **cell_options))
        self.head = nn.Linear(hidden_size, output_size)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2:
            raise RnnkitError(f"OneToOne expects (batch, features), got {tuple(x.shape)}")
        outputs, _ = self.recurrent(x.unsqueeze(1))  # (B, 1, H)
        return self.head(outputs[:, 0])


class ManyToOne(_Topology):
    """A sequence to one output: sequence classification, sentiment, rating, a forecast horizon.

    The sequence is summarised by the last valid step (``pooling="last"``: the final
    hidden state, both directions when bidirectional), by attention pooling
    (``pooling="attention"``: a learned softmax over valid steps of ``v^T tanh(W o_t)``), or by
    ULMFiT's concat pooling (``pooling="concat"``: the final state, the maximum and the mean of
    the outputs over valid steps, side by side, ``3 * D*H`` wide): a long text's telling words
    may lie far from its end, and max and mean reach them without a learned weighting.

    Shapes: ``(B, T, I)`` (or ids ``(B, T)``) with optional ``lengths`` ``(B,)`` to ``(B, O)``.
    """

    def __init__(self, input_size: int, output_size: int, hidden_size: int = 64, *, cell: str = "lstm",
                 num_layers: int = 1, bidirectional: bool = False, dropout: float = 0.0, pooling: str = "last",
                 vocab_size: Optional[int] = None, **cell_options: Any) -> None:
        if pooling not in POOLINGS:
            raise RnnkitError(f"pooling must be 'last', 'attention' or 'concat', got {pooling!r}")
        config = dict(input_size=input_size, output_size=output_size, hidden_size=hidden_size, cell=cell,
                      num_layers=num_layers, bidirectional=bidirectional, dropout=dropout, pooling=pooling,
                      vocab_size=vocab_size, **cell_options)
        super().__init__(config, input_size, hidden_size, vocab_size,
                         dict(cell=cell, num_layers=num_layers, bidirectional=bidirectional, dropout=dropout,
                              **cell_options))
        width = self.recurrent.output_size
        self.pooling = pooling
        if pooling == "attention":
            self.attention = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1, bias=False))
        self.head = nn.Linear(3 * width if pooling == "concat" else width, output_size)

    def forward(self, x: Tensor, *, lengths: Optional[Tensor] = None) -> Tensor:
        outputs, state = self.recurrent(self.embed(x), lengths=lengths)  # (B, T, D*H)
        return self.head(self.summarise(outputs, state, lengths))

    def summarise(self, outputs: Tensor, state: LayerState, lengths: Optional[Tensor]) -> Tensor:
        """One ``(B, D*H)`` vector per sequence (``(B, 3*D*H)`` with concat pooling)."""
        padded = None
        if lengths is not None:
            steps = torch.arange(outputs.size(1), device=outputs.device)[None, :]
            lengths = torch.as_tensor(lengths, device=outputs.device)  # a list, as Recurrent accepts
            padded = steps >= lengths[:, None]  # (B, T): True past a sequence's end
        if self.pooling in ("last", "concat"):
            h = state[0] if isinstance(state, tuple) else state  # (L*D, B, H)
            last_layer = h[-self.recurrent.num_directions:]  # (D, B, H): forward end, reverse start
            last = torch.cat(list(last_layer), dim=1)  # (B, D*H)
            if self.pooling == "last":
                return last
            if padded is None:
                return torch.cat([last, outputs.amax(dim=1), outputs.mean(dim=1)], dim=1)
            valid = (~padded)[:, :, None]  # (B, T, 1)
            peak = outputs.masked_fill(~valid, float("-inf")).amax(dim=1)  # (B, D*H)
            mean = (outputs * valid).sum(dim=1) / lengths[:, None].clamp(min=1).to(outputs.dtype)
            return torch.cat([last, peak, mean], dim=1)  # (B, 3*D*H)
        scores = self.attention(outputs).squeeze(2)  # (B, T)
        if padded is not None:
            scores = scores.masked_fill(padded, float("-inf"))
        weights = torch.softmax(scores, dim=1)
        return torch.einsum("bt,bth->bh", weights, outputs)


class ManyToMany(_Topology):
    """Aligned sequence to sequence: one output per input step (tagging, next-token prediction).

    Returns the final state too, so a long stream can be fed in pieces with the state
    carried (stateful training, truncated BPTT, streaming).

    Shapes: ``(B, T, I)`` (or ids ``(B, T)``) to ``((B, T, O), state)``.

    ``tie_weights=True`` (a language model: ``vocab_size == output_size`` and
    ``input_size == D*H``) makes the output layer share the embedding matrix, as in
    Press & Wolf (2017): fewer parameters, and rare tokens learn from both ends.
    """

    def __init__(self, input_size: int, output_size: int, hidden_size: int = 64, *, cell: str = "lstm",
                 num_layers: int = 1, bidirectional: bool = False, dropout: float = 0.0,
                 vocab_size: Optional[int] = None, tie_weights: bool = False, **cell_options: Any) -> None:
        config = dict(input_size=input_size, output_size=output_size, hidden_size=hidden_size, cell=cell,
                      num_layers=num_layers, bidirectional=bidirectional, dropout=dropout, vocab_size=vocab_size,
                      tie_weights=tie_weights, **cell_options)
        super().__init__(config, input_size, hidden_size, vocab_size,
                         dict(cell=cell, num_layers=num_layers, bidirectional=bidirectional, dropout=dropout,
                              **cell_options))
        self.head = nn.Linear(self.recurrent.output_size, output_size)
        if tie_weights:
            if vocab_size != output_size or input_size != self.recurrent.output_size:
                raise RnnkitError(
                    f"tie_weights needs vocab_size == output_size and input_size == directions*hidden_size, got "
                    f"vocab_size={vocab_size}, output_size={output_size}, input_size={input_size}, "
                    f"directions*hidden_size={self.recurrent.output_size}; "
                    f"set input_size to match or tie_weights=False")
            self.head.weight = self.embedding.weight  # (V, H): one matrix, two uses
            # nn.Embedding's N(0, 1) would make the first logits ~sqrt(H) large and the first loss
            # huge; U(-0.1, 0.1), as in PyTorch's word_language_model, starts near uniform.
            nn.init.uniform_(self.embedding.weight, -0.1, 0.1)

    def forward(self, x: Tensor, state: Optional[LayerState] = None, *,
                lengths: Optional[Tensor] = None) -> tuple[Tensor, LayerState]:
        outputs, state = self.recurrent(self.embed(x), state, lengths=lengths)
        return self.head(outputs), state

    def step(self, x_t: Tensor, state: Optional[LayerState] = None) -> tuple[Tensor, LayerState]:
        """One step for a batch of streams: ids ``(B,)`` (or features ``(B, I)``) to ``((B, O), state)``."""
        if self.embedding is not None:
            x_t = self.embed(x_t[:, None])[:, 0]  # (B, I)
        output, state = self.recurrent.step(x_t, state)
        return linear_at_best_precision(self.head, output), state


class OneToMany(_Topology):
    """One conditioning vector to a sequence: generation, music, captions.

    The condition ``(B, C)`` sets the decoder's initial state through a learned
    ``tanh(W c + b)``; the decoder then reads its own previous output at each step. In
    training the previous *target* is fed instead (teacher forcing); with
    ``teacher_forcing < 1`` each step feeds the model's own prediction with probability
    ``1 - teacher_forcing`` (scheduled sampling).

    Outputs are continuous vectors of ``output_size`` (fed back as they are), or, with
    ``vocab_size``, logits over tokens (fed back as the embedded argmax or sample);
    the first step reads a zero vector, or token ``start_token``.

    Shapes: ``condition`` ``(B, C)``, targets ``(B, T, O)`` or ids ``(B, T)``; outputs
    ``(B, T, O)`` (or ``(B, T, vocab_size)`` logits).
    """

    def __init__(self, condition_size: int, output_size: int, hidden_size: int = 64, *, cell: str = "lstm",
                 num_layers: int = 1, dropout: float = 0.0, vocab_size: Optional[int] = None,
                 embedding_size: int = 32, start_token: int = 0, **cell_options: Any) -> None:
        if vocab_size is not None and output_size != vocab_size:
            raise RnnkitError(f"with vocab_size={vocab_size}, output_size must equal it, got {output_size}")
        config = dict(condition_size=condition_size, output_size=output_size, hidden_size=hidden_size, cell=cell,
                      num_layers=num_layers, dropout=dropout, vocab_size=vocab_size, embedding_size=embedding_size,
                      start_token=start_token, **cell_options)
        input_size = embedding_size if vocab_size else output_size
        super().__init__(config, input_size, hidden_size, vocab_size,
                         dict(cell=cell, num_layers=num_layers, dropout=dropout, **cell_options))
        self.start_token = start_token
        num_states = self.recurrent.num_states
        self.condition_to_state = nn.Linear(condition_size, num_states * num_layers * hidden_size)
        self.head = nn.Linear(hidden_size, output_size)

    def initial_state(self, condition: Tensor) -> LayerState:
        """The decoder's starting state from the condition: ``(L, B, H)`` (a pair for LSTM)."""
        if condition.dim() != 2 or condition.size(1) != self.config["condition_size"]:
            raise RnnkitError(
                f"expected a condition of shape (batch, {self.config['condition_size']}), got {tuple(condition.shape)}"
            )
        batch, layers, hidden = condition.size(0), self.recurrent.num_layers, self.recurrent.hidden_size
        flat = torch.tanh(self.condition_to_state(condition))  # (B, S*L*H)
        parts = flat.view(batch, self.recurrent.num_states, layers, hidden).permute(1, 2, 0, 3)  # (S, L, B, H)
        return (parts[0].contiguous(), parts[1].contiguous()) if self.recurrent.num_states == 2 else parts[0].contiguous()

    def _start(self, batch: int, like: Tensor) -> Tensor:
        if self.embedding is not None:
            return torch.full((batch, 1), self.start_token, dtype=torch.long, device=like.device)
        return like.new_zeros(batch, 1, self.config["output_size"])

    def forward(self, condition: Tensor, targets: Tensor, *, teacher_forcing: float = 1.0) -> Tensor:
        """Predict every step of ``targets`` given the condition and (teacher-forced) previous targets."""
        state = self.initial_state(condition)
        tokens = self.embedding is not None
        if (targets.dim() != (2 if tokens else 3) or targets.size(0) != condition.size(0) or targets.size(1) < 1
                or (not tokens and targets.size(2) != self.config["output_size"])):
            shape = "(batch, time)" if tokens else f"(batch, time, {self.config['output_size']})"
            raise RnnkitError(f"expected targets of shape {shape} with batch {condition.size(0)} and time >= 1, "
                              f"got {tuple(targets.shape)}")
        previous = torch.cat([self._start(condition.size(0), condition), targets[:, :-1]], dim=1)  # shift right
        if teacher_forcing >= 1.0:
            outputs, _ = self.recurrent(self.embed(previous), state)  # (B, T, H)
            return self.head(outputs)
        predictions, fed = [], previous[:, :1]
        for t in range(targets.size(1)):
            output, state = self.recurrent(self.embed(fed), state)
            prediction = self.head(output)  # (B, 1, O)
            predictions.append(prediction)
            if t + 1 < targets.size(1):
                own = prediction.argmax(-1) if self.embedding is not None else prediction.detach()
                use_target = torch.rand(condition.size(0), 1, device=condition.device) < teacher_forcing
                mask = use_target if self.embedding is not None else use_target[:, :, None]
                fed = torch.where(mask, previous[:, t + 1 : t + 2], own)
        return torch.cat(predictions, dim=1)

    @torch.no_grad()
    def generate(self, condition: Tensor, steps: int, *, temperature: float = 0.0,
                 generator: Optional[torch.Generator] = None) -> Tensor:
        """Generate ``steps`` outputs autoregressively, carrying the state step by step.

        Returns ``(B, steps, O)`` vectors, or ``(B, steps)`` token ids (greedy when
        ``temperature`` is 0, otherwise sampled from ``softmax(logits / temperature)``).
        """
        if not isinstance(steps, int) or steps < 1:
            raise RnnkitError(f"steps must be a positive integer, got {steps!r}")
        state = self.initial_state(condition)
        fed = self._start(condition.size(0), condition)[:, 0]  # (B,) ids or (B, O)
        produced = []
        for _ in range(steps):
            output, state = self.recurrent.step(self.embed(fed[:, None])[:, 0], state)
            prediction = self.head(output)  # (B, O)
            if self.embedding is not None:
                if temperature <= 0:
                    fed = prediction.argmax(-1)
                else:
                    probs = torch.softmax(prediction / temperature, dim=-1)
                    fed = torch.multinomial(probs, 1, generator=generator)[:, 0]
            else:
                fed = prediction
            produced.append(fed)
        return torch.stack(produced, dim=1)


TOPOLOGIES = {cls.__name__: cls for cls in (OneToOne, OneToMany, ManyToOne, ManyToMany)}

__all__ = ["ManyToMany", "ManyToOne", "OneToMany", "OneToOne", "TOPOLOGIES"]

r"""Encoder-decoder (sequence to sequence) with attention: different input and output lengths.

A topology, like those in :mod:`rnnkit.topologies`, built only from
:class:`~rnnkit.layers.Recurrent` stacks, embeddings and linear maps.

Encoder. Source ids ``x_1..x_S`` are embedded and read by a (bidirectional) recurrent stack
with their lengths, giving the memory ``m_s`` (both directions concatenated, width ``H``) and
a final state. A bridge ``tanh(W_b [h^fwd_S; h^bwd_1] + b_b)`` sets the decoder's initial
state (and ``c``, for LSTM, through its own bridge), in every decoder layer.

Decoder step ``t``, reading the previous target ``y_{t-1}`` (``<bos>`` first):

.. math::
    \text{Luong: } s_t = \mathrm{RNN}([E y_{t-1}; \tilde h_{t-1}], s_{t-1}),\quad
        e_{ts} = s_t^\top W_a m_s,\quad \alpha_{ts} = \mathrm{softmax}_s(e_{ts}),\quad
        c_t = \sum_s \alpha_{ts} m_s

    \text{Bahdanau: } e_{ts} = v_a^\top \tanh(W_q s_{t-1} + W_k m_s),\quad
        s_t = \mathrm{RNN}([E y_{t-1}; c_t], s_{t-1})

    \tilde h_t = \tanh(W_c [c_t; s_t]),\qquad p(y_t \mid y_{<t}, x) = \mathrm{softmax}(W_o \tilde h_t + b_o)

``[E y_{t-1}; \tilde h_{t-1}]`` is *input feeding* (Luong et al. 2015): the previous
attentional vector tells the decoder what it attended to; without it the decoder reads
``E y_{t-1}`` only and a teacher-forced sequence runs through the fused kernel in one call.
With ``attention="none"`` there is no ``c_t`` and ``\tilde h_t = \tanh(W_c s_t)``
(Sutskever et al. 2014: the source reaches the decoder only through the initial state).
Source padding gets ``e_{ts} = -\infty``, so ``\alpha_{ts} = 0`` there.

Shapes: ``src`` ``(B, S)`` ids, ``src_lengths`` ``(B,)``, ``tgt_in`` ``(B, T)`` ids; logits
``(B, T, V_tgt)``; attention ``(B, T, S)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from .config import JsonConfig
from .data.tokenizers import BOS, EOS, PAD
from .errors import RnnkitError
from .layers import LayerState, Recurrent

ATTENTIONS = ("luong", "bahdanau", "none")


@dataclass(frozen=True, kw_only=True)
class Seq2SeqConfig(JsonConfig):
    """The shape of a :class:`Seq2Seq` model; ``to_dict`` / ``from_dict`` round-trip exactly."""

    KIND = "Seq2Seq"

    src_vocab_size: int
    tgt_vocab_size: int
    cell: str = "lstm"  # "lstm" or "gru" (or "rnn"); LSTM is the classic NMT choice
    embedding_size: int = 128  # small vocabularies need no wider embeddings
    hidden_size: int = 256  # decoder width = memory width; the encoder gets half per direction
    encoder_layers: int = 1  # one layer trains fastest on a CPU budget
    decoder_layers: int = 1
    bidirectional: bool = True  # each source position sees its left and right context
    attention: str = "luong"  # "luong" (multiplicative), "bahdanau" (additive) or "none"
    input_feeding: bool = False  # Luong only: feed h~_{t-1}; off keeps teacher forcing on the fused path
    dropout: float = 0.1  # on embeddings and h~: small nets on small corpora overfit

    def __post_init__(self) -> None:
        for name in ("src_vocab_size", "tgt_vocab_size", "embedding_size", "hidden_size", "encoder_layers",
                     "decoder_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise RnnkitError(f"{name} must be a positive integer, got {value!r}")
        if self.attention not in ATTENTIONS:
            raise RnnkitError(f"attention must be one of {', '.join(ATTENTIONS)}, got {self.attention!r}")
        if self.bidirectional and self.hidden_size % 2:
            raise RnnkitError(f"a bidirectional encoder needs an even hidden_size, got {self.hidden_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise RnnkitError(f"dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def feeds_context(self) -> bool:
        """Whether each decoder step reads a vector besides the previous token's embedding."""
        return self.attention == "bahdanau" or (self.attention == "luong" and self.input_feeding)


class Encoded(NamedTuple):
    """What the decoder needs from the source; every tensor's first dimension is the batch."""

    memory: Tensor  # (B, S, H)
    keys: Tensor  # (B, S, H) W_a m (Luong) or (B, S, H) W_k m (Bahdanau)
    mask: Tensor  # (B, S) True on real source tokens


class Seq2Seq(nn.Module):
    """Recurrent encoder-decoder with optional attention; see the module docstring for the equations.

    ``forward`` is teacher-forced training (with scheduled sampling when
    ``sampling_rate > 0``); :meth:`greedy` and :meth:`beam_search` decode batches.
    """

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.config = c = config
        hidden = c.hidden_size
        self.src_embedding = nn.Embedding(c.src_vocab_size, c.embedding_size, padding_idx=PAD)
        self.tgt_embedding = nn.Embedding(c.tgt_vocab_size, c.embedding_size, padding_idx=PAD)
        self.encoder = Recurrent(c.embedding_size, hidden // 2 if c.bidirectional else hidden, cell=c.cell,
                                 num_layers=c.encoder_layers, bidirectional=c.bidirectional, dropout=c.dropout)
        self.decoder = Recurrent(c.embedding_size + (hidden if c.feeds_context else 0), hidden, cell=c.cell,
                                 num_layers=c.decoder_layers, dropout=c.dropout)
        num_states = self.decoder.num_states
        self.bridges = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(num_states))
        if c.attention == "luong":
            self.attn_key = nn.Linear(hidden, hidden, bias=False)  # W_a
        elif c.attention == "bahdanau":
            self.attn_key = nn.Linear(hidden, hidden, bias=False)  # W_k
            self.attn_query = nn.Linear(hidden, hidden)  # W_q
            self.attn_v = nn.Linear(hidden, 1, bias=False)  # v_a
        self.combine = nn.Linear(hidden * (1 if c.attention == "none" else 2), hidden)  # W_c
        self.out = nn.Linear(hidden, c.tgt_vocab_size)  # W_o
        self.drop = nn.Dropout(c.dropout)

    # ------------------------------------------------------------------- encoding

    def encode(self, src: Tensor, src_lengths: Tensor) -> tuple[Encoded, LayerState]:
        """Source ids ``(B, S)`` to the attention memory and the decoder's initial state."""
        if src_lengths.shape != (src.size(0),):
            raise RnnkitError(f"expected src_lengths (batch,) = ({src.size(0)},), got {tuple(src_lengths.shape)}")
        memory, state = self.encoder(self.drop(self.embed_source(src)), lengths=src_lengths)  # (B, S, H)
        parts = (state,) if isinstance(state, Tensor) else state
        directions = self.encoder.num_directions
        layers = self.config.decoder_layers
        initial = []
        for bridge, part in zip(self.bridges, parts):
            last = torch.cat(list(part[-directions:]), dim=1)  # (B, H): the top layer's ends
            initial.append(torch.tanh(bridge(last)).unsqueeze(0).repeat(layers, 1, 1).contiguous())  # (L, B, H)
        mask = torch.arange(src.size(1), device=src.device)[None, :] < src_lengths.to(src.device)[:, None]
        keys = self.attn_key(memory) if self.config.attention != "none" else memory
        return Encoded(memory, keys, mask), (tuple(initial) if len(initial) == 2 else initial[0])

    def embed_source(self, src: Tensor) -> Tensor:
        """The encoder's input ``(B, S, E)``: here the embedded source ids ``(B, S)``. A subclass
        whose source is not tokens (image columns, audio frames) replaces this and ``src_embedding``."""
        if src.dim() != 2:
            raise RnnkitError(f"expected src (batch, time) token ids, got shape {tuple(src.shape)}")
        return self.src_embedding(src)

    def attend(self, query: Tensor, enc: Encoded) -> tuple[Tensor, Tensor]:
        """Attention of ``query`` ``(B, T, H)`` over the memory: ``(context (B, T, H), weights (B, T, S))``."""
        if self.config.attention == "luong":
            scores = torch.bmm(query, enc.keys.transpose(1, 2))  # (B, T, S)
        else:
            hidden = torch.tanh(self.attn_query(query).unsqueeze(2) + enc.keys.unsqueeze(1))  # (B, T, S, H)
            scores = self.attn_v(hidden).squeeze(3)  # (B, T, S)
        scores = scores.masked_fill(~enc.mask[:, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=2)
        return torch.bmm(weights, enc.memory), weights

    # ------------------------------------------------------------------- decoding

    def initial_feed(self, enc: Encoded) -> Optional[Tensor]:
        """``h~_0`` (zeros) when the decoder reads one, else ``None``."""
        return enc.memory.new_zeros(enc.memory.size(0), self.config.hidden_size) if self.config.feeds_context else None

    def step(self, y_prev: Tensor, state: LayerState, feed: Optional[Tensor],
             enc: Encoded) -> tuple[Tensor, LayerState, Optional[Tensor], Optional[Tensor]]:
        """One decoder step: previous ids ``(B,)`` to ``(logits (B, V), state, feed, weights (B, S) or None)``."""
        emb = self.drop(self.tgt_embedding(y_prev))  # (B, E)
        weights = None
        if self.config.attention == "bahdanau":
            top = (state[0] if isinstance(state, tuple) else state)[-1]  # s_{t-1}, (B, H)
            context, weights = self.attend(top[:, None], enc)
            out, state = self.decoder.step(torch.cat([emb, context[:, 0]], dim=1), state)
            attentional = torch.tanh(self.combine(torch.cat([context[:, 0], out], dim=1)))
            feed, weights = context[:, 0], weights[:, 0]
        else:
            x = torch.cat([emb, feed], dim=1) if feed is not None else emb
            out, state = self.decoder.step(x, state)
            attentional, weights = self._attentional(out[:, None], enc)
            attentional = attentional[:, 0]
            weights = None if weights is None else weights[:, 0]
            feed = attentional if feed is not None else None
        return self.out(self.drop(attentional)), state, feed, weights

    def _attentional(self, out: Tensor, enc: Encoded) -> tuple[Tensor, Optional[Tensor]]:
        """Decoder outputs ``(B, T, H)`` to ``h~`` ``(B, T, H)`` (and the weights, with Luong attention)."""
        if self.config.attention == "none":
            return torch.tanh(self.combine(out)), None
        context, weights = self.attend(out, enc)
        return torch.tanh(self.combine(torch.cat([context, out], dim=2))), weights

    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor, *, sampling_rate: float = 0.0,
                keep: Optional[Tensor] = None) -> Tensor:
        """Teacher-forced logits ``(B, T, V)`` for ``tgt_in`` (``<bos> y_1 .. y_{T-1}``).

        With ``sampling_rate`` p > 0 (scheduled sampling, Bengio et al. 2015) each step after
        the first reads the model's own previous argmax instead of the target with probability p.
        With ``keep`` ``(B, T)`` boolean, only those positions' logits are computed, as ``(N, V)``:
        the output layer is most of the cost, and padding needs none.
        """
        enc, state = self.encode(src, src_lengths)
        if not self.config.feeds_context and sampling_rate <= 0:
            out, _ = self.decoder(self.drop(self.tgt_embedding(tgt_in)), state)  # (B, T, H), fused
            attentional = self._attentional(out, enc)[0]  # (B, T, H)
            return self.out(self.drop(attentional if keep is None else attentional[keep]))
        feed, logits, y_prev = self.initial_feed(enc), [], tgt_in[:, 0]
        for t in range(tgt_in.size(1)):
            if t and sampling_rate > 0:
                own = logits[-1].argmax(-1)
                use_own = torch.rand(own.shape, device=own.device) < sampling_rate
                y_prev = torch.where(use_own, own, tgt_in[:, t])
            elif t:
                y_prev = tgt_in[:, t]
            step_logits, state, feed, _ = self.step(y_prev, state, feed, enc)
            logits.append(step_logits)
        stacked = torch.stack(logits, dim=1)  # (B, T, V)
        return stacked if keep is None else stacked[keep]

    @torch.no_grad()
    def greedy(self, src: Tensor, src_lengths: Tensor, max_length: int) -> tuple[Tensor, Tensor]:
        """Argmax decoding of a batch: ``(ids (B, T'), weights (B, T', S))``, ``<pad>`` after ``<eos>``.

        Stops when every sentence has produced ``<eos>`` or after ``max_length`` tokens.
        """
        enc, state = self.encode(src, src_lengths)
        feed, y_prev = self.initial_feed(enc), torch.full((src.size(0),), BOS, dtype=torch.long, device=src.device)
        finished = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
        tokens, attention = [], []
        for _ in range(max_length):
            logits, state, feed, weights = self.step(y_prev, state, feed, enc)
            y_prev = logits.argmax(dim=-1).masked_fill(finished, PAD)
            tokens.append(y_prev)
            attention.append(weights if weights is not None else enc.memory.new_zeros(src.size(0), src.size(1)))
            finished |= y_prev == EOS
            if bool(finished.all()):
                break
        return torch.stack(tokens, dim=1), torch.stack(attention, dim=1)

    @torch.no_grad()
    def beam_search(self, src: Tensor, src_lengths: Tensor, max_length: int, *, beam: int = 5,
                    length_penalty: float = 1.0) -> tuple[Tensor, Tensor]:
        """Batched beam search; returns the best hypothesis per sentence, as :meth:`greedy` does.

        Each of the ``K`` beams extends by every token; the ``K`` best sums of log-probabilities
        survive (a finished beam extends only by ``<pad>`` at no cost). The winner maximises
        ``log p(y|x) / |y|^length_penalty`` (``|y|`` counts ``<eos>``), so short outputs are not
        favoured merely for having fewer terms. ``beam=1`` is greedy decoding.
        """
        if not isinstance(beam, int) or beam < 1:
            raise RnnkitError(f"beam must be a positive integer, got {beam!r}")
        if not isinstance(max_length, int) or max_length < 1:
            raise RnnkitError(f"max_length must be a positive integer, got {max_length!r}")
        batch, k, vocab = src.size(0), beam, self.config.tgt_vocab_size
        enc, state = self.encode(src, src_lengths)
        enc = Encoded(*(t.repeat_interleave(k, dim=0) for t in enc))  # (B*K, ...)
        state = _index_state(state, torch.arange(batch, device=src.device).repeat_interleave(k))
        feed = self.initial_feed(enc)
        scores = src.new_zeros(batch, k, dtype=torch.float)
        scores[:, 1:] = float("-inf")  # all beams start equal: keep one until the first split
        tokens = torch.full((batch * k, 1), BOS, dtype=torch.long, device=src.device)
        attention = enc.memory.new_zeros(batch * k, 0, src.size(1))
        finished = torch.zeros(batch * k, dtype=torch.bool, device=src.device)
        lengths = torch.zeros(batch * k, device=src.device)
        offsets = torch.arange(batch, device=src.device)[:, None] * k  # (B, 1)
        for _ in range(max_length):
            logits, state, feed, weights = self.step(tokens[:, -1], state, feed, enc)
            logp = torch.log_softmax(logits.float(), dim=-1)  # (B*K, V)
            logp[finished] = float("-inf")
            logp[finished, PAD] = 0.0
            top_scores, top = (scores.view(-1, 1) + logp).view(batch, k * vocab).topk(k, dim=1)  # (B, K)
            origin = (offsets + top // vocab).view(-1)  # (B*K,) the beam each survivor extends
            new_tokens = (top % vocab).view(-1, 1)
            state, feed = _index_state(state, origin), None if feed is None else feed[origin]
            weights = weights if weights is not None else enc.memory.new_zeros(batch * k, src.size(1))
            attention = torch.cat([attention[origin], weights[origin, None]], dim=1)  # (B*K, t, S)
            tokens = torch.cat([tokens[origin], new_tokens], dim=1)
            lengths = lengths[origin] + (~finished[origin]).float()
            finished = finished[origin] | (new_tokens[:, 0] == EOS)
            scores = top_scores
            if bool(finished.all()):
                break
        normalised = scores / lengths.view(batch, k).clamp(min=1) ** length_penalty
        best = (offsets[:, 0] + normalised.argmax(dim=1))  # (B,)
        return tokens[best, 1:], attention[best]


def _index_state(state: LayerState, index: Tensor) -> LayerState:
    """Pick batch rows of a ``(L, B, H)`` state (or a pair of them)."""
    if isinstance(state, Tensor):
        return state[:, index]
    return tuple(s[:, index] for s in state)


__all__ = ["ATTENTIONS", "Encoded", "Seq2Seq", "Seq2SeqConfig"]

"""Text generation one token at a time: sampling a token, decoding it into text as it arrives,
and the slot that holds one stream's state so that a server can step many streams as one batch.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ..data.tokenizers import SPECIALS, Tokenizer
from ..errors import DataError, RnnkitError
from .base import StreamSlot


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                top_p: Optional[float] = None, generator: Optional[torch.Generator] = None) -> Tensor:
    """One token per row of ``logits`` ``(B, V)``: greedy at ``temperature == 0``, else sampled from
    ``softmax(logits / temperature)`` restricted to the ``top_k`` likeliest tokens and to the smallest
    set whose probability reaches ``top_p`` (nucleus sampling)."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        ordered, index = logits.sort(dim=-1, descending=True)
        probs = ordered.softmax(-1)
        beyond = probs.cumsum(-1) - probs > top_p  # the mass before a token already reaches top_p
        logits = torch.full_like(logits, float("-inf")).scatter(1, index, ordered.masked_fill(beyond, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


class TextStream:
    """Hands ``stream`` one sample's text as its tokens arrive, each piece once.

    A byte-level BPE token can end inside a character, which decodes as U+FFFD until the next
    token completes it: that text is held back rather than printed half. Each token decodes
    only the tokens not printed yet plus ``CONTEXT`` before them (a word tokenizer's spaces
    depend on the previous token), so a long sample costs no more per token than a short one.
    """

    CONTEXT = 8

    def __init__(self, tokenizer: Tokenizer, stream: Callable[[str], Any]) -> None:
        self.tokenizer, self.stream, self.ids, self.printed = tokenizer, stream, [], 0

    def add(self, token: int) -> None:
        """Take the next token; print the text it completes."""
        self.ids.append(token)
        self._print(final=False)

    def finish(self) -> None:
        """Print what is held back (an incomplete character at the very end prints as U+FFFD)."""
        self._print(final=True)

    def _print(self, final: bool) -> None:
        start = max(0, self.printed - self.CONTEXT)
        before, text = self.tokenizer.decode(self.ids[start:self.printed]), self.tokenizer.decode(self.ids[start:])
        if len(text) <= len(before) or not text.startswith(before) or (text.endswith("\ufffd") and not final):
            return  # nothing new yet, or a character still incomplete
        self.stream(text[len(before):])
        self.printed = len(self.ids)


class Generation(StreamSlot):
    """One text generation in progress (a slot of :meth:`TextGenerator.step_streams`).

    It holds what this stream alone needs between steps: the next-token logits ``(1, V)``, its
    recurrent state (batch 1), its sampling options and random generator, the tokens left, its
    stop strings, and the text completed but not yet taken.

    With stop strings, the generation ends where the text first contains one, which is left out.
    Text that could be the start of a stop string (``"\n"`` of ``"\n\n"``) is held back until
    the next tokens show it is not, so no piece sent to a client is ever taken back.
    """

    def __init__(self, tokenizer: Tokenizer, logits: Tensor, state: Any, options: dict[str, Any],
                 generator: Optional[torch.Generator]) -> None:
        self.logits, self.state, self.generator = logits, state, generator
        self.left = options["max_tokens"]
        self.sampling = (options["temperature"], options["top_k"], options["top_p"])
        self.stops, self.pending = options["stop"], ""  # pending: text held back as a stop's possible start
        self.pieces: list[str] = []
        self.printer = TextStream(tokenizer, self._text)
        self.done = self.left == 0

    def sample(self) -> Optional[Tensor]:
        """Draw the next token ``(1,)`` and add it to the text; ``done`` after the last one."""
        if self.done:
            return None
        self.logits[:, : len(SPECIALS)] = float("-inf")  # never <pad>, <unk>, <bos>, <eos>
        token = sample_next(self.logits, *self.sampling, generator=self.generator)
        self.printer.add(int(token[0]))
        self.left -= 1
        if self.left == 0 and not self.done:
            self.printer.finish()
            self.pieces += [self.pending] if self.pending and not self.done else []
            self.done = True
        return token

    def _text(self, piece: str) -> None:
        """Take a piece of decoded text: pass it on, up to a stop string or a possible start of one."""
        if not self.stops or self.done:
            self.pieces += [] if self.done else [piece]
            return
        text = self.pending + piece
        found = [i for i in (text.find(stop) for stop in self.stops) if i >= 0]
        if found:
            text, self.done = text[:min(found)], True
        held = 0 if found else max((k for stop in self.stops for k in range(1, len(stop))
                                    if text.endswith(stop[:k])), default=0)
        self.pending = text[len(text) - held:]
        if len(text) > held:
            self.pieces.append(text[:len(text) - held])

    def take(self) -> list[dict[str, Any]]:
        """The pieces of text completed since the last call, as stream_json's ``{"text": ...}``."""
        pieces, self.pieces[:] = [{"text": piece} for piece in self.pieces], []
        return pieces


def sampling_options(request: dict[str, Any]) -> dict[str, Any]:
    """A request's sampling options with their defaults (the ones of :meth:`TextGenerator.generate`)."""
    return {"prime": request.get("prime", ""), "max_tokens": request.get("max_tokens", 200),
            "temperature": request.get("temperature", 0.8), "top_k": request.get("top_k"),
            "top_p": request.get("top_p"), "seed": request.get("seed"), "stop": _stops(request.get("stop", []))}


def _stops(stops: list[str]) -> list[str]:
    if "" in stops:
        raise DataError(f"request.stop[{stops.index('')}] is empty; give each stop string at least one character")
    return list(stops)


def join_states(states: list[Any]) -> Any:
    """Per-stream states (each ``(L, 1, H)``, or an LSTM's pair of them) stacked into ``(L, B, H)``."""
    if isinstance(states[0], tuple):
        return tuple(torch.cat(parts, dim=1) for parts in zip(*states))
    return torch.cat(states, dim=1)


def state_row(state: Any, row: int) -> Any:
    """Stream ``row`` of a batched state, ``(L, 1, H)`` (or the pair)."""
    if isinstance(state, tuple):
        return tuple(part[:, row:row + 1] for part in state)
    return state[:, row:row + 1]


def check_sampling(num_samples: int, max_tokens: int, temperature: float, top_k: Optional[int],
                    top_p: Optional[float]) -> None:
    for name, value in (("num_samples", num_samples), ("max_tokens", max_tokens)):
        if not isinstance(value, int) or value < (1 if name == "num_samples" else 0):
            raise RnnkitError(f"{name} must be a {'positive' if name == 'num_samples' else 'non-negative'} "
                              f"integer, got {value!r}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise RnnkitError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise RnnkitError(f"top_k must be a positive integer or None, got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise RnnkitError(f"top_p must be in (0, 1] or None, got {top_p!r}")


__all__ = ["Generation", "TextStream", "check_sampling", "join_states", "sample_next", "sampling_options",
           "state_row"]

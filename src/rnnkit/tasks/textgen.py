"""Language modelling and text generation: a recurrent next-token model over a long corpus.

The corpus becomes ``B`` contiguous streams laid side by side, ``(B, L)``; the trainer cuts
them into ``seq_len``-step pieces (truncated BPTT) and carries each stream's state from
one piece to the next (``stateful``), so the model reads the whole corpus in order and
its memory is not cut at ``seq_len``. Held-out text (the last ``val_fraction``, contiguous)
is scored in bits per character; generation steps the trained layer token by token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor

from ..data.tokenizers import KINDS, SPECIALS, Tokenizer, build_tokenizer, tokenizer_from_dict, tokenizer_options
from ..errors import DataError, RnnkitError
from ..precision import autocast, check_precision
from ..topologies import ManyToMany
from ..training import TrainConfig, evaluate
from .base import Task, TaskConfig
from .language import next_token_loss, streams, with_state_resets
from .schema import sampling_properties
from .textgen_stream import (Generation, TextStream, check_sampling, join_states, sample_next, sampling_options,
                             state_row)

MODEL_TYPE = "text_generator"


@dataclass(frozen=True, kw_only=True)
class TextGeneratorConfig(TaskConfig):
    """Everything that defines a language model; saved in its bundle as ``config.json``."""

    KIND = "text generator"

    tokenizer: str = "char"              # char-rnn's choice: any text, tiny vocabulary, bits per character
    vocab_size: int = 4000               # word/bpe vocabulary; a char vocabulary is what the text holds
    cell: str = "lstm"                   # any recurrent cell: "lstm", "gru", "rnn", "mingru", "minlstm"
    hidden_size: int = 512               # char-rnn's size
    num_layers: int = 1                  # one layer wins at short CPU budgets; 2-3 pay off with hours
    embedding_size: Optional[int] = None  # None = hidden_size, which lets input and output weights be tied
    tie_weights: bool = True             # one matrix for embedding and output layer (Press & Wolf 2017)
    dropout: float = 0.0                 # between layers; a corpus read once or twice barely overfits
    seq_len: int = 128                   # truncated-BPTT piece; carried state reaches further back
    reset_prob: float = 0.1              # chance a stream's carried state restarts from zero at a piece:
    #                                      generation starts from zero, so training must see zero states too
    batch_size: int = 32                 # parallel streams: more is faster per token, fewer updates
    epochs: int = 10                     # an upper bound: the time budget usually ends first
    minutes: Optional[float] = 5.0       # a corpus is never exhausted: the budget is what ends a fit
    val_fraction: float = 0.05           # the last 5 % of the text, contiguous, is held out

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tokenizer not in KINDS:
            raise RnnkitError(f"tokenizer must be one of {', '.join(KINDS)}, got {self.tokenizer!r}")
        self.check_positive("vocab_size", "hidden_size", "num_layers", "seq_len")
        if not 0.0 < self.val_fraction < 0.5:
            raise RnnkitError(f"val_fraction must be in (0, 0.5), got {self.val_fraction!r}")
        if not 0.0 <= self.reset_prob < 1.0:
            raise RnnkitError(f"reset_prob must be in [0, 1), got {self.reset_prob!r}")
        if self.tie_weights and self.embedding_size not in (None, self.hidden_size):
            raise RnnkitError(f"tie_weights needs embedding_size == hidden_size ({self.hidden_size}), got "
                              f"{self.embedding_size}; drop embedding_size or set tie_weights=False")


def language_model(config: TextGeneratorConfig, vocab_size: int) -> ManyToMany:
    """Embedding, ``num_layers`` recurrent layers, a linear head over the vocabulary (tied or not)."""
    return ManyToMany(config.embedding_size or config.hidden_size, vocab_size, config.hidden_size, cell=config.cell,
                      num_layers=config.num_layers, dropout=config.dropout, vocab_size=vocab_size,
                      tie_weights=config.tie_weights)


class TextGenerator(Task):
    """A recurrent language model: ``fit`` a corpus, ``generate`` text, score held-out text.

    Example::

        lm = TextGenerator(hidden_size=256, minutes=2).fit(text)
        lm.metrics["val_bpc"]
        lm.generate("ROMEO:", max_tokens=300, temperature=0.8, seed=1, stream=print)
        lm.save("shakespeare.rnnkit")
    """

    name = "textgen"
    model_type = MODEL_TYPE
    config_class = TextGeneratorConfig
    request_schema = {"type": "object", "additionalProperties": False, "properties": {
        "prime": {"type": "string", "description": "text to continue; empty starts after a newline"},
        "max_tokens": {"type": "integer", "minimum": 0, "description": "tokens to generate (default 200)"},
        "top_k": {"type": ["integer", "null"], "minimum": 1, "description": "draw among the k likeliest tokens"},
        **sampling_properties(0.8, "greedy", "text"),
        "stop": {"type": "array", "items": {"type": "string"},
                 "description": "end where the text first contains one of these (left out)"}}}
    response_schema = {"type": "object", "properties": {"text": {"type": "string", "description": "prime + sample"}}}
    config: TextGeneratorConfig

    def __init__(self, config: Optional[TextGeneratorConfig] = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.tokenizer: Optional[Tokenizer] = None

    # --------------------------------------------------------------------- training

    def _fit(self, text: str, val_text: Optional[str] = None) -> None:
        """Train on ``text``; held out: ``val_text``, or else the last ``val_fraction`` of ``text``."""
        cfg = self.config
        if not isinstance(text, str) or not text.strip():
            raise DataError("the corpus is empty; pass some text to learn from")
        if val_text is None:
            cut = int(len(text) * (1 - cfg.val_fraction))
            text, val_text = text[:cut], text[cut:]
        self.tokenizer = build_tokenizer(cfg.tokenizer, [text], **tokenizer_options(cfg.tokenizer, cfg.vocab_size))
        ids = torch.tensor(self.tokenizer.encode(text), dtype=torch.long)
        rows = max(1, min(cfg.batch_size, (ids.numel() - 1) // cfg.seq_len))  # a short text: fewer streams
        torch.manual_seed(cfg.seed)
        self.model = self.build_model()
        self.train_results = []
        result = self.train(self.model, with_state_resets(cfg.reset_prob), streams(ids, rows), batch_size=rows,
                            tbptt=cfg.seq_len, stateful=True, decay_over_budget=cfg.minutes is not None)
        self.model.eval()
        tokens = result.steps * rows * min(cfg.seq_len, (ids.numel() - 1) // rows)
        self.metrics = {"train_tokens_per_s": tokens / max(result.elapsed_s, 1e-9), **self.training_summary(),
                        "epochs_completed": result.epochs_completed,
                        "train_loss": result.history[-1]["train_loss"] if result.history else None,
                        "parameters": sum(p.numel() for p in self.model.parameters())}
        if val_text.strip():
            self.metrics.update({f"val_{k}": v for k, v in self.evaluate(val_text).items()})

    def build_model(self) -> ManyToMany:
        return language_model(self.config, self.tokenizer.vocab_size)

    def preprocessing(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer.to_dict()}

    def restore(self, state: dict[str, Any]) -> None:
        self.tokenizer = tokenizer_from_dict(state["tokenizer"])

    @torch.no_grad()
    def evaluate(self, text: str, rows: int = 8) -> dict[str, float]:
        """Held-out scores of ``text``: ``bpc`` (bits per character), ``ppl`` (per-token perplexity), ``loss``.

        The text is read as ``rows`` contiguous streams, state carried throughout.
        """
        self.require_fitted()
        ids = torch.tensor(self.tokenizer.encode(text), dtype=torch.long)
        if ids.numel() < 2:
            raise DataError(f"held-out text of {ids.numel()} token(s) cannot be scored; give at least 2")
        rows = max(1, min(rows, (ids.numel() - 1) // self.config.seq_len))
        x, y = streams(ids, rows)
        config = TrainConfig(batch_size=rows, tbptt=self.config.seq_len, stateful=True, progress=False,
                             device=str(next(self.model.parameters()).device))
        nats = evaluate(self.model, next_token_loss, (x, y), config)  # mean per scored token
        chars_per_token = len(text) / ids.numel()
        return {"bpc": nats / math.log(2) / chars_per_token, "ppl": math.exp(min(nats, 50.0)), "loss": nats}

    # ------------------------------------------------------------------- generation

    def generate(self, prime: str = "", max_tokens: int = 200, *, temperature: float = 0.8,
                 top_k: Optional[int] = None, top_p: Optional[float] = None, seed: Optional[int] = None,
                 stream: Optional[Callable[[str], Any]] = None, precision: str = "fp32") -> str:
        """The prime followed by ``max_tokens`` generated tokens; ``stream`` gets each new piece of text."""
        return self.sample(prime, 1, max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                           stream=stream, precision=precision)[0]

    def sample(self, prime: str = "", num_samples: int = 1, max_tokens: int = 200, *, temperature: float = 0.8,
               top_k: Optional[int] = None, top_p: Optional[float] = None, seed: Optional[int] = None,
               stream: Optional[Callable[[str], Any]] = None, precision: str = "fp32") -> list[str]:
        """``num_samples`` continuations of ``prime`` generated at once as one batch (same seed, same texts).

        Unknown characters (words) in the prime are an error, as the model never saw them; an
        empty prime starts after a newline. ``stream`` (one sample only) receives the text as it grows.
        ``precision="bf16"`` steps the model under bfloat16 autocast (``rnnkit.precision``): the
        LSTM's step reads bfloat16 weights, half the bytes; the sampling stays float32.
        """
        if stream is not None and num_samples != 1:
            raise RnnkitError(f"stream prints one sample as it grows; got num_samples={num_samples}")
        printer = TextStream(self.tokenizer, stream) if stream is not None else None
        produced: list[Tensor] = []
        for token in self.tokens(prime, num_samples, max_tokens, temperature=temperature, top_k=top_k,
                                 top_p=top_p, seed=seed, precision=precision):
            produced.append(token)
            if printer is not None:
                printer.add(int(token[0]))
        if printer is not None:
            printer.finish()
        ids = torch.stack(produced, 1).tolist() if produced else [[] for _ in range(num_samples)]
        return [prime + self.tokenizer.decode(row) for row in ids]

    @torch.no_grad()
    def tokens(self, prime: str = "", num_samples: int = 1, max_tokens: int = 200, *, temperature: float = 0.8,
               top_k: Optional[int] = None, top_p: Optional[float] = None, seed: Optional[int] = None,
               precision: str = "fp32") -> Iterator[Tensor]:
        """The generated token ids, ``(num_samples,)`` at each step, as they are sampled."""
        check_sampling(num_samples, max_tokens, temperature, top_k, top_p)
        logits, state, generator = self._start(prime, num_samples, seed, precision)
        device = logits.device
        for _ in range(max_tokens):
            logits[:, : len(SPECIALS)] = float("-inf")  # never <pad>, <unk>, <bos>, <eos>
            token = sample_next(logits, temperature, top_k, top_p, generator)  # (N,)
            yield token
            with autocast(precision, device):
                logits, state = self.model.step(token, state)  # (N, V)
            logits = logits.float()

    def predict_json(self, request: dict[str, Any]) -> dict[str, Any]:
        options = sampling_options(request)
        if options.pop("stop"):  # the stream's slot applies them: the same text as streamed
            return {"text": options["prime"] + "".join(piece["text"] for piece in self.stream_json(request))}
        return {"text": self.generate(**options)}

    def stream_json(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        slot = self.open_stream(request)
        while not slot.done:
            yield from self.step_streams([slot])[0]

    def merge_pieces(self, pieces: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Text pieces joined into one."""
        return [{"text": "".join(piece["text"] for piece in pieces)}] if len(pieces) > 1 else pieces

    @torch.no_grad()
    def open_stream(self, request: dict[str, Any]) -> Generation:
        """One generation as a slot: the prime read (batch 1), nothing sampled yet."""
        options = sampling_options(request)
        check_sampling(1, options["max_tokens"], options["temperature"], options["top_k"], options["top_p"])
        logits, state, generator = self._start(options["prime"], 1, options["seed"])
        return Generation(self.tokenizer, logits, state, options, generator)

    @torch.no_grad()
    def step_streams(self, slots: list[Generation]) -> list[list[dict[str, Any]]]:
        """Sample each slot's next token with its own options, then step the live ones as one batch.

        The states of the slots still generating are stacked along the batch axis ``(L, B, H)``,
        stepped once (the layer's multi-stream path) and split back, one row per slot.
        """
        tokens = [slot.sample() for slot in slots]  # each (1,), or None for a slot already done
        live = [i for i, slot in enumerate(slots) if not slot.done]
        if live:
            state = join_states([slots[i].state for i in live])
            logits, state = self.model.step(torch.cat([tokens[i] for i in live]), state)  # (B, V)
            for row, i in enumerate(live):
                slots[i].logits, slots[i].state = logits[row:row + 1].float(), state_row(state, row)
        return [slot.take() for slot in slots]

    def _start(self, prime: str, rows: int, seed: Optional[int], precision: str = "fp32"
               ) -> tuple[Tensor, Any, Optional[torch.Generator]]:
        """Read the prime into ``rows`` identical streams: next-token logits ``(rows, V)``, state, generator."""
        self.require_fitted()
        prime_ids = self._encode_prime(prime)
        device = next(self.model.parameters()).device
        check_precision(precision, device)
        generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
        with autocast(precision, device):
            logits, state = self.model(torch.tensor([prime_ids] * rows, device=device))  # (N, P, V)
        return logits[:, -1].float(), state, generator  # sampled in float32 whatever the precision

    def _encode_prime(self, prime: str) -> list[int]:
        if not isinstance(prime, str):
            raise RnnkitError(f"prime must be a string, got {type(prime).__name__}")
        unknown = self.tokenizer.unknown(prime)
        if unknown:
            raise DataError(f"the prime contains {len(unknown)} token(s) the model never saw: "
                            f"{', '.join(map(repr, unknown[:10]))}; remove them or train on text that has them")
        ids = self.tokenizer.encode(prime) or self.tokenizer.encode("\n")
        return ids or [len(SPECIALS)]  # a vocabulary without a newline: its first real token


__all__ = ["Generation", "TextGenerator", "TextGeneratorConfig", "language_model", "next_token_loss", "sample_next",
           "streams"]

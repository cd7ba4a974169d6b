"""The encoder-decoder tasks' shared half: a source in, a sentence out, through a recurrent encoder-decoder.

Translation (a sentence, its translation), the chatbot (the conversation so far, the next
reply) and image captioning (an image, its caption) are one learning problem: a
:class:`~rnnkit.seq2seq.Seq2Seq` over ``(source, target)`` pairs whose target is a tokenized
sentence, trained by the shared trainer with length-grouped batches and decoded greedily or by
beam search. :class:`EncoderDecoder` holds that once: the held-out split, the target
vocabulary's ids, the loss, the training call, and the decoding loop that cuts each answer at
``<eos>`` and keeps its attention over the source.

What differs is the source, and a task says what its source is through the *source encoder*
hooks. A source, as the encoder reads it, is a sequence whose ``len`` is its number of steps
(token ids; an image's columns):

- ``_training_source(source, target_ids)``: one training source encoded, or ``None`` to leave
  the pair out (too long);
- ``_source(item, index)``: one input to answer, checked (a one-line
  :class:`~rnnkit.errors.DataError` naming it) and encoded;
- ``_source_batch(sources)``: encoded sources as one right-padded batch ``(src, lengths)``,
  which ``build_model``'s module reads (``Seq2Seq.embed_source``);
- ``_decode_limit(lengths)``: the most tokens an answer to that batch may have;
- ``_build_vocabularies(pairs)``: the tokenizers, ``self.target_tokenizer`` among them.

:class:`TextEncoderDecoder` is the source of token ids through an embedding (translation,
chat; tokenizers from :mod:`rnnkit.data.tokenizers`: char, word or BPE, one per side or one
joint vocabulary); :mod:`.caption` reads image columns as feature vectors.

Stated handling of lengths (text): training pairs longer than ``max_length`` tokens on either
side are left out (``fit`` reports how many in ``self.skipped``); an input longer than
``max_length`` tokens raises a :class:`~rnnkit.errors.DataError` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .. import metrics
from ..data.tokenizers import BOS, EOS, PAD, Tokenizer, build_tokenizer, tokenizer_from_dict, tokenizer_options
from ..errors import DataError, RnnkitError
from ..seq2seq import Seq2Seq, Seq2SeqConfig
from .base import Task, TaskConfig

Pair = tuple[str, str]


@dataclass(frozen=True, kw_only=True)
class EncoderDecoderConfig(TaskConfig):
    """The options every encoder-decoder task shares: the Seq2Seq's shape, its loss and its training."""

    KIND = "encoder-decoder"

    cell: str = "lstm"  # "lstm" or "gru" (the decoder steps an LSTM/GRU cell)
    attention: str = "luong"  # "luong", "bahdanau" or "none"
    input_feeding: bool = False  # Luong only; off keeps training on the fused kernel (faster on a CPU)
    hidden_size: int = 256
    embedding_size: int = 128  # the target words' embeddings and each source step's vector
    encoder_layers: int = 1
    decoder_layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.1
    sampling_rate: float = 0.0  # scheduled sampling: feed own predictions this often in training
    label_smoothing: float = 0.1  # keeps the decoder from over-confidence; helps beam search
    epochs: int = 50  # an upper bound: the time budget or early stopping usually ends first
    minutes: Optional[float] = 12.0  # translation needs many updates: the longest default budget
    batch_size: int = 64
    lr: float = 2e-3
    patience: Optional[int] = 6  # validations without improvement before stopping
    val_fraction: float = 0.05  # pairs held out for early stopping when no validation pairs are given
    length_penalty: float = 1.0  # beam search: score / length^alpha

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_positive("hidden_size", "embedding_size")
        if not 0.0 <= self.sampling_rate < 1.0 or not 0.0 <= self.label_smoothing < 1.0:
            raise RnnkitError("sampling_rate and label_smoothing must be in [0, 1)")
        if not 0.0 < self.val_fraction < 0.5:
            raise RnnkitError(f"val_fraction must be in (0, 0.5), got {self.val_fraction!r}")
        self.model_config(8, 8)  # validates cell, attention, sizes

    def model_config(self, src_vocab: int, tgt_vocab: int) -> Seq2SeqConfig:
        return Seq2SeqConfig(src_vocab_size=src_vocab, tgt_vocab_size=tgt_vocab, cell=self.cell,
                             embedding_size=self.embedding_size, hidden_size=self.hidden_size,
                             encoder_layers=self.encoder_layers, decoder_layers=self.decoder_layers,
                             bidirectional=self.bidirectional, attention=self.attention,
                             input_feeding=self.input_feeding, dropout=self.dropout)


class EncoderDecoder(Task):
    """Base of the tasks that answer a source (a text, an image) with a sentence; the source is
    the subclass's, through the source-encoder hooks (see the module docstring)."""

    config: EncoderDecoderConfig
    #: decode sources of similar lengths together (less padding); off: batches in the caller's order
    decode_by_length: ClassVar[bool] = True

    def __init__(self, config: Optional[EncoderDecoderConfig] = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.target_tokenizer: Optional[Tokenizer] = None
        self.skipped = 0  # training pairs left out for length

    # ------------------------------------------------------------------ the source encoder (hooks)

    def _build_vocabularies(self, pairs: Sequence[tuple[Any, str]]) -> None:
        """Build the tokenizers from the training pairs; ``self.target_tokenizer`` among them."""
        raise NotImplementedError

    def _training_source(self, source: Any, target_ids: list[int]) -> Optional[Sequence]:
        """One training source as the encoder reads it, or None to leave its pair out."""
        raise NotImplementedError

    def _source(self, item: Any, index: int) -> Sequence:
        """Input ``index`` (from 0) to answer, checked and encoded as ``_training_source`` does."""
        raise NotImplementedError

    def _source_batch(self, sources: Sequence[Sequence]) -> tuple[Tensor, Tensor]:
        """Encoded sources as one right-padded batch ``(src, lengths (N,))``, ``lengths[i] = len(sources[i])``."""
        raise NotImplementedError

    def _decode_limit(self, lengths: Tensor) -> int:
        """The most tokens (``<eos>`` included) an answer to a batch of these source lengths may have."""
        raise NotImplementedError

    def _all_left_out(self) -> str:
        """The error when ``_training_source`` leaves every training pair out: which limit to raise."""
        return "every training pair was left out"

    # ------------------------------------------------------------------ training

    def _train_pairs(self, pairs: Sequence[tuple[Any, str]], val_pairs: Optional[Sequence[tuple[Any, str]]]) -> int:
        """Train on checked ``(source, target)`` pairs; ``val_pairs`` (None: a held-out slice)
        stop training early and pick the best weights. Returns how many pairs it trained on."""
        cfg = self.config
        if val_pairs is None:
            val_pairs, pairs = self._hold_out(pairs)
        self._build_vocabularies(pairs)
        train = self._tensors(pairs)
        val = self._tensors(val_pairs) if val_pairs else None
        self.skipped = len(pairs) - len(train[0])
        if len(train[0]) == 0:
            raise DataError(self._all_left_out())
        torch.manual_seed(cfg.seed)
        self.model = self.build_model()
        steps_per_epoch = -(-len(train[0]) // cfg.batch_size)
        self.train_results = []
        result = self.train(self.model, self._loss_fn, train, val, lengths=self._group_lengths(train),
                            patience=cfg.patience if val else None,
                            eval_every=min(steps_per_epoch, 200) if val else None)
        self.model.cpu()
        self.metrics = {"best_val_loss": result.best_val_loss, **self.training_summary()}
        return len(train[0])

    def _hold_out(self, pairs: list) -> tuple[list, list]:
        """``(val, train)``: a seeded random ``val_fraction`` of the pairs held out (none of 20 or fewer)."""
        cut = max(1, int(len(pairs) * self.config.val_fraction)) if len(pairs) > 20 else 0
        order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(self.config.seed)).tolist()
        return [pairs[i] for i in order[:cut]], [pairs[i] for i in order[cut:]]

    def _group_lengths(self, train: tuple[Tensor, ...]) -> Tensor:
        """Each pair's length for batching: batches of near-equal lengths are trimmed to their
        longest pair (``_loss_fn``), so little of them is padding. Source plus target steps."""
        return train[1] + (train[3] != PAD).sum(dim=1)

    def _tensors(self, pairs: Sequence[tuple[Any, str]]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Padded ``(src, src_lengths (N,), tgt_in (N, T), tgt_out (N, T))``; the pairs that
        ``_training_source`` leaves out are not in them."""
        sources, targets = [], []
        for source, target in pairs:
            ids = self.target_tokenizer.encode(target)
            encoded = self._training_source(source, ids)
            if encoded is not None:
                sources.append(encoded)
                targets.append([BOS, *ids, EOS])
        src, lengths = self._source_batch(sources)
        tgt = pad_ids(targets, 2)
        return src, lengths, tgt[:, :-1], tgt[:, 1:]

    def _loss_fn(self, model: nn.Module, batch: tuple[Tensor, ...], state: Any) -> tuple[Tensor, None]:
        src, src_lengths, tgt_in, tgt_out = batch
        src = src[:, : int(src_lengths.max())]  # trim the padding this batch does not need
        width = int((tgt_out != PAD).sum(dim=1).max())
        tgt_in, tgt_out = tgt_in[:, :width], tgt_out[:, :width]
        rate = self.config.sampling_rate if model.training else 0.0
        keep = tgt_out != PAD  # (B, T)
        logits = model(src, src_lengths, tgt_in, sampling_rate=rate, keep=keep)  # (N, V), real tokens only
        loss = nn.functional.cross_entropy(logits, tgt_out[keep], label_smoothing=self.config.label_smoothing)
        return loss, None

    # ------------------------------------------------------------------ decoding

    @torch.no_grad()
    def decode(self, items: Sequence[Any], *, beam: int = 1, batch_size: int = 64) -> list[dict[str, Any]]:
        """Answer each input (``beam`` 1: greedy; more: beam search). Per input: ``output`` (the
        text), ``source`` (as ``_source`` encoded it), ``target_tokens`` (through ``<eos>``) and
        ``attention``, a ``(T, S)`` tensor of each output token's weights over the source steps
        (zeros without attention). With ``decode_by_length``, sources of similar lengths share a
        batch, so little of it is padding."""
        self.require_fitted()
        sources = [self._source(item, index) for index, item in enumerate(items)]
        order = list(range(len(sources)))
        if self.decode_by_length:
            order.sort(key=lambda i: len(sources[i]))
        results: list[dict[str, Any]] = [{}] * len(sources)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            src, lengths = self._source_batch([sources[i] for i in chunk])
            limit = self._decode_limit(lengths)
            if beam == 1:
                ids, attention = self.model.greedy(src, lengths, limit)
            else:
                ids, attention = self.model.beam_search(src, lengths, limit, beam=beam,
                                                        length_penalty=self.config.length_penalty)
            for row, i in enumerate(chunk):
                tokens = ids[row].tolist()
                end = tokens.index(EOS) if EOS in tokens else len(tokens)
                results[i] = {"output": self.target_tokenizer.decode(tokens[:end]), "source": sources[i],
                              "target_tokens": [self.target_tokenizer.tokens[t] for t in tokens[:end + 1]],
                              "attention": attention[row, : end + 1, : len(sources[i])]}
        return results


@dataclass(frozen=True, kw_only=True)
class TextEncoderDecoderConfig(EncoderDecoderConfig):
    """An encoder-decoder over text pairs: the shared options, the tokenizers and the length limit."""

    tokenizer: str = "bpe"  # "bpe", "word" or "char"
    vocab_size: int = 4000  # per side for bpe/word; small vocabularies keep the softmax cheap on a CPU
    joint_vocab: bool = False  # one vocabulary for both sides (related languages, copying names)
    max_length: int = 64  # tokens per side; longer training pairs are skipped, longer inputs refused

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_positive("vocab_size", "max_length")
        if self.tokenizer not in ("bpe", "word", "char"):
            raise RnnkitError(f"tokenizer must be bpe, word or char, got {self.tokenizer!r}")


class TextEncoderDecoder(EncoderDecoder):
    """Base of the tasks that answer a text with a text: the source encoder is token ids through an embedding."""

    config: TextEncoderDecoderConfig
    input_name = "text"  # what an input is called in errors: "a sentence to translate"

    def __init__(self, config: Optional[TextEncoderDecoderConfig] = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.source_tokenizer: Optional[Tokenizer] = None

    def _fit(self, pairs: Sequence[Pair], val_pairs: Optional[Sequence[Pair]] = None) -> None:
        """Train on ``(source, target)`` pairs; ``val_pairs`` (default: a held-out slice) stop early."""
        pairs = check_pairs(pairs, "pairs")
        if val_pairs:
            val_pairs = check_pairs(val_pairs, "val_pairs")
        self._train_pairs(pairs, val_pairs)
        self.metrics["skipped_pairs"] = self.skipped

    def build_model(self) -> Seq2Seq:
        return Seq2Seq(self.config.model_config(self.source_tokenizer.vocab_size, self.target_tokenizer.vocab_size))

    def preprocessing(self) -> dict[str, Any]:
        return {"source": self.source_tokenizer.to_dict(), "target": self.target_tokenizer.to_dict(),
                "joint": self.source_tokenizer is self.target_tokenizer}

    def restore(self, state: dict[str, Any]) -> None:
        self.source_tokenizer = tokenizer_from_dict(state["source"])
        self.target_tokenizer = (self.source_tokenizer if state.get("joint")
                                 else tokenizer_from_dict(state["target"]))

    # ------------------------------------------------------------------ the source: token ids

    def _build_vocabularies(self, pairs: Sequence[Pair]) -> None:
        cfg = self.config
        options = tokenizer_options(cfg.tokenizer, cfg.vocab_size)
        sources, targets = [s for s, _ in pairs], [t for _, t in pairs]
        if cfg.joint_vocab:
            self.source_tokenizer = self.target_tokenizer = build_tokenizer(cfg.tokenizer, sources + targets, **options)
        else:
            self.source_tokenizer = build_tokenizer(cfg.tokenizer, sources, **options)
            self.target_tokenizer = build_tokenizer(cfg.tokenizer, targets, **options)

    def _training_source(self, source: str, target_ids: list[int]) -> Optional[list[int]]:
        limit = self.config.max_length
        ids = self.source_tokenizer.encode(source)
        return ids if 0 < len(ids) <= limit and len(target_ids) <= limit else None

    def _all_left_out(self) -> str:
        return (f"every training pair is longer than max_length={self.config.max_length} tokens; "
                "raise max_length (--max-length)")

    def _source(self, text: str, index: int) -> list[int]:
        number = index + 1
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"input {number} is empty: give a {self.input_name}")
        ids = self.source_tokenizer.encode(" ".join(text.split()))
        if not ids:
            raise DataError(f"input {number} has no tokens this model can read: give a {self.input_name}")
        if len(ids) > self.config.max_length:
            raise DataError(f"input {number} has {len(ids)} tokens; this model reads at most "
                            f"{self.config.max_length} (max_length): split it into shorter sentences")
        return ids

    def _source_batch(self, sources: Sequence[list[int]]) -> tuple[Tensor, Tensor]:
        return pad_ids(list(sources), 1), torch.tensor([len(s) for s in sources], dtype=torch.long)

    def _decode_limit(self, lengths: Tensor) -> int:
        return min(self.config.max_length + 1, 2 * int(lengths.max()) + 10)

    # ------------------------------------------------------------------ answers

    def decode_detailed(self, texts: Sequence[str], *, beam: int = 1, batch_size: int = 64) -> list[dict[str, Any]]:
        """Outputs with their pieces and attention: ``output``, ``source_tokens``, ``target_tokens``,
        ``attention`` (a ``(T, S)`` tensor; zeros without attention)."""
        return [{"output": d["output"], "source_tokens": [self.source_tokenizer.tokens[t] for t in d["source"]],
                 "target_tokens": d["target_tokens"], "attention": d["attention"]}
                for d in self.decode(texts, beam=beam, batch_size=batch_size)]

    def plot_attention(self, text: str, path: Union[str, Path], *, beam: int = 1) -> Path:
        """Answer ``text`` and write its attention heatmap (output tokens x source tokens) as a PNG."""
        if self.config.attention == "none":
            raise RnnkitError("this model has no attention (attention='none'): nothing to plot")
        from ..plotting import plot_attention  # matplotlib, only when a plot is asked for

        detail = self.decode_detailed([text], beam=beam)[0]
        return plot_attention(detail["attention"], detail["source_tokens"], detail["target_tokens"], path,
                              title=f"{text} -> {detail['output']}")

    def score(self, pairs: Sequence[Pair], *, beam: int = 1) -> dict[str, float]:
        """Corpus BLEU and chrF (sacrebleu) and exact-match rate of the outputs against the references."""
        pairs = check_pairs(pairs, "pairs")
        hypotheses = [d["output"] for d in self.decode_detailed([s for s, _ in pairs], beam=beam)]
        references = [t for _, t in pairs]
        return {"bleu": metrics.bleu(hypotheses, references), "chrf": metrics.chrf(hypotheses, references),
                "exact": metrics.exact_match(hypotheses, references), "count": len(pairs)}


def pad_ids(rows: list[list[int]], minimum: int) -> Tensor:
    """Right-pad id lists with ``<pad>`` into ``(N, max(len))``."""
    out = torch.full((len(rows), max([minimum, *map(len, rows)])), PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def check_pairs(pairs: Sequence[Pair], name: str) -> list[Pair]:
    pairs = list(pairs)
    if not pairs:
        raise DataError(f"{name} is empty: expected (source, target) sentence pairs")
    for number, pair in enumerate(pairs, start=1):
        if (not isinstance(pair, (tuple, list)) or len(pair) != 2
                or not all(isinstance(side, str) and side.strip() for side in pair)):
            raise DataError(f"{name}[{number - 1}] must be a (source, target) pair of non-empty strings, got {pair!r}")
    return [(s, t) for s, t in pairs]


__all__ = ["EncoderDecoder", "EncoderDecoderConfig", "Pair", "TextEncoderDecoder", "TextEncoderDecoderConfig",
           "check_pairs", "pad_ids"]

"""The encoder-decoder tasks' shared half: text pairs in, an RNN encoder-decoder with attention.

Translation (a sentence, its translation) and the chatbot (the conversation so far, the next
reply) are one learning problem: a :class:`~rnnkit.seq2seq.Seq2Seq` over tokenized
``(source, target)`` pairs, trained by the shared trainer with length-grouped batches and decoded
greedily or by beam search. :class:`EncoderDecoder` holds that; a task built on it says what its
pairs are and what its requests and answers look like. Tokenizers come from
:mod:`rnnkit.data.tokenizers` (char, word or BPE; one per side, or one joint vocabulary).

Stated handling of lengths: training pairs longer than ``max_length`` tokens on either side
are left out (``fit`` reports how many in ``self.skipped``); an input longer than
``max_length`` tokens raises a :class:`~rnnkit.errors.DataError` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

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
    """What defines an encoder-decoder task's model, tokenizers and training; saved in its bundle."""

    KIND = "encoder-decoder"

    cell: str = "lstm"  # "lstm" or "gru" (the decoder steps an LSTM/GRU cell)
    attention: str = "luong"  # "luong", "bahdanau" or "none"
    input_feeding: bool = False  # Luong only; off keeps training on the fused kernel (faster on a CPU)
    hidden_size: int = 256
    embedding_size: int = 128
    encoder_layers: int = 1
    decoder_layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.1
    tokenizer: str = "bpe"  # "bpe", "word" or "char"
    vocab_size: int = 4000  # per side for bpe/word; small vocabularies keep the softmax cheap on a CPU
    joint_vocab: bool = False  # one vocabulary for both sides (related languages, copying names)
    max_length: int = 64  # tokens per side; longer training pairs are skipped, longer inputs refused
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
        self.check_positive("hidden_size", "embedding_size", "vocab_size", "max_length")
        if self.tokenizer not in ("bpe", "word", "char"):
            raise RnnkitError(f"tokenizer must be bpe, word or char, got {self.tokenizer!r}")
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
    """Base of the tasks that answer a text with a text through a recurrent encoder-decoder."""

    config: EncoderDecoderConfig
    input_name = "text"  # what an input is called in errors: "a sentence to translate"

    def __init__(self, config: Optional[EncoderDecoderConfig] = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.source_tokenizer: Optional[Tokenizer] = None
        self.target_tokenizer: Optional[Tokenizer] = None
        self.skipped = 0  # training pairs left out for length

    def _fit(self, pairs: Sequence[Pair], val_pairs: Optional[Sequence[Pair]] = None) -> None:
        """Train on ``(source, target)`` pairs; ``val_pairs`` (default: a held-out slice) stop early."""
        cfg = self.config
        pairs = check_pairs(pairs, "pairs")
        if val_pairs is None:
            cut = max(1, int(len(pairs) * cfg.val_fraction)) if len(pairs) > 20 else 0
            order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
            val_pairs, pairs = [pairs[i] for i in order[:cut]], [pairs[i] for i in order[cut:]]
        self._build_tokenizers(pairs)
        train = self._tensors(pairs)
        val = self._tensors(check_pairs(val_pairs, "val_pairs")) if val_pairs else None
        self.skipped = len(pairs) - len(train[0])
        if len(train[0]) == 0:
            raise DataError(f"every training pair is longer than max_length={cfg.max_length} tokens; "
                            "raise max_length (--max-length)")
        torch.manual_seed(cfg.seed)
        self.model = self.build_model()
        steps_per_epoch = -(-len(train[0]) // cfg.batch_size)
        # Batches of near-equal lengths: each is trimmed to its longest pair, so little is padding.
        pair_lengths = train[1] + (train[3] != PAD).sum(dim=1)
        self.train_results = []
        result = self.train(self.model, self._loss_fn, train, val, lengths=pair_lengths,
                            patience=cfg.patience if val else None,
                            eval_every=min(steps_per_epoch, 200) if val else None)
        self.model.cpu()
        self.metrics = {"best_val_loss": result.best_val_loss, **self.training_summary(),
                        "skipped_pairs": self.skipped}

    def build_model(self) -> Seq2Seq:
        return Seq2Seq(self.config.model_config(self.source_tokenizer.vocab_size, self.target_tokenizer.vocab_size))

    def preprocessing(self) -> dict[str, Any]:
        return {"source": self.source_tokenizer.to_dict(), "target": self.target_tokenizer.to_dict(),
                "joint": self.source_tokenizer is self.target_tokenizer}

    def restore(self, state: dict[str, Any]) -> None:
        self.source_tokenizer = tokenizer_from_dict(state["source"])
        self.target_tokenizer = (self.source_tokenizer if state.get("joint")
                                 else tokenizer_from_dict(state["target"]))

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

    def _build_tokenizers(self, pairs: Sequence[Pair]) -> None:
        cfg = self.config
        options = tokenizer_options(cfg.tokenizer, cfg.vocab_size)
        sources, targets = [s for s, _ in pairs], [t for _, t in pairs]
        if cfg.joint_vocab:
            self.source_tokenizer = self.target_tokenizer = build_tokenizer(cfg.tokenizer, sources + targets, **options)
        else:
            self.source_tokenizer = build_tokenizer(cfg.tokenizer, sources, **options)
            self.target_tokenizer = build_tokenizer(cfg.tokenizer, targets, **options)

    def _tensors(self, pairs: Sequence[Pair]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Padded ``(src (N, S), src_lengths (N,), tgt_in (N, T), tgt_out (N, T))``, over-long pairs left out."""
        limit = self.config.max_length
        rows = []
        for source, target in pairs:
            src, tgt = self.source_tokenizer.encode(source), self.target_tokenizer.encode(target)
            if 0 < len(src) <= limit and len(tgt) <= limit:
                rows.append((src, [BOS, *tgt, EOS]))
        src = pad_ids([s for s, _ in rows], 1)
        tgt = pad_ids([t for _, t in rows], 2)
        return src, torch.tensor([len(s) for s, _ in rows], dtype=torch.long), tgt[:, :-1], tgt[:, 1:]

    @torch.no_grad()
    def decode_detailed(self, texts: Sequence[str], *, beam: int = 1, batch_size: int = 64) -> list[dict[str, Any]]:
        """Outputs with their pieces and attention: ``output``, ``source_tokens``, ``target_tokens``,
        ``attention`` (a ``(T, S)`` tensor; zeros without attention)."""
        self.require_fitted()
        encoded = [self._encode_source(text, number) for number, text in enumerate(texts, start=1)]
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
        results: list[dict[str, Any]] = [{}] * len(texts)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            src = pad_ids([encoded[i] for i in chunk], 1)
            lengths = torch.tensor([len(encoded[i]) for i in chunk])
            max_length = min(self.config.max_length + 1, 2 * int(lengths.max()) + 10)
            if beam == 1:
                ids, attention = self.model.greedy(src, lengths, max_length)
            else:
                ids, attention = self.model.beam_search(src, lengths, max_length, beam=beam,
                                                        length_penalty=self.config.length_penalty)
            for row, i in enumerate(chunk):
                tokens = ids[row].tolist()
                end = tokens.index(EOS) if EOS in tokens else len(tokens)
                results[i] = {
                    "output": self.target_tokenizer.decode(tokens[:end]),
                    "source_tokens": [self.source_tokenizer.tokens[t] for t in encoded[i]],
                    "target_tokens": [self.target_tokenizer.tokens[t] for t in tokens[:end + 1]],
                    "attention": attention[row, : end + 1, : len(encoded[i])],
                }
        return results

    def _encode_source(self, text: str, number: int) -> list[int]:
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"input {number} is empty: give a {self.input_name}")
        ids = self.source_tokenizer.encode(" ".join(text.split()))
        if not ids:
            raise DataError(f"input {number} has no tokens this model can read: give a {self.input_name}")
        if len(ids) > self.config.max_length:
            raise DataError(f"input {number} has {len(ids)} tokens; this model reads at most "
                            f"{self.config.max_length} (max_length): split it into shorter sentences")
        return ids

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


__all__ = ["EncoderDecoder", "EncoderDecoderConfig", "Pair", "check_pairs", "pad_ids"]

"""Translation: an encoder-decoder with attention over (source, target) sentence pairs.

A thin estimator (``fit`` / ``translate`` / ``evaluate`` / ``save``) over the
:class:`~rnnkit.seq2seq.Seq2Seq` topology, trained by the shared trainer. Tokenizers come from
:mod:`rnnkit.data.tokenizers` (char, word or BPE; one per side, or one joint vocabulary).

Stated handling of lengths: training pairs longer than ``max_length`` tokens on either side
are left out (``fit`` reports how many in ``self.skipped``); an input to ``translate`` longer
than ``max_length`` tokens raises a :class:`~rnnkit.errors.DataError` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .. import metrics
from ..bundle import Bundle, load_weights, register, save_bundle
from ..config import JsonConfig
from ..data.tokenizers import BOS, EOS, PAD, Tokenizer, build_tokenizer, tokenizer_from_dict
from ..errors import DataError, RnnkitError
from ..plotting import plot_attention
from ..precision import check_precision
from ..seq2seq import Seq2Seq, Seq2SeqConfig
from ..training import TrainConfig, TrainResult, check_clock, fit

MODEL_TYPE = "translator"
Pair = tuple[str, str]


@dataclass(frozen=True, kw_only=True)
class TranslatorConfig(JsonConfig):
    """Everything that defines a translator; saved in its bundle as ``config.json``."""

    KIND = "translator"

    cell: str = "lstm"  # "lstm" or "gru"
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
    minutes: Optional[float] = 12.0  # time budget of one fit: 20,000 short pairs fit under 15 min
    clock: str = "wall"  # what minutes count: "wall" or this process's "cpu" time (see TrainConfig)
    precision: str = "fp32"  # training's: "bf16" on CPUs with AVX-512 BF16 or AMX (see TrainConfig)
    batch_size: int = 64
    lr: float = 2e-3
    patience: Optional[int] = 6  # validations without improvement before stopping
    val_fraction: float = 0.05  # pairs held out for early stopping when no validation pairs are given
    length_penalty: float = 1.0  # beam search: score / length^alpha
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        check_clock(self.clock, "TranslatorConfig")  # here, not when fit() starts after tokenising
        check_precision(self.precision)
        for name in ("hidden_size", "embedding_size", "vocab_size", "max_length", "epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise RnnkitError(f"{name} must be a positive integer, got {value!r}")
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


class Translator:
    """Sentence-to-sentence translation with a recurrent encoder-decoder.

    Example::

        tr = Translator(attention="luong").fit(pairs)      # [(source, target), ...]
        tr.translate("In the beginning", beam=5)
        tr.evaluate(test_pairs, beam=5)                   # {"bleu": ..., "chrf": ..., "exact": ...}
        tr.save("en-es.rnnkit"); rnnkit.load("en-es.rnnkit")
    """

    def __init__(self, config: Optional[TranslatorConfig] = None, **options: Any) -> None:
        self.config = config or TranslatorConfig(**options)
        self.model: Optional[Seq2Seq] = None
        self.source_tokenizer: Optional[Tokenizer] = None
        self.target_tokenizer: Optional[Tokenizer] = None
        self.train_result: Optional[TrainResult] = None
        self.skipped = 0  # training pairs left out for length

    # --------------------------------------------------------------------- training

    def fit(self, pairs: Sequence[Pair], val_pairs: Optional[Sequence[Pair]] = None) -> "Translator":
        """Train on ``(source, target)`` pairs; ``val_pairs`` (default: a held-out slice) stop early."""
        cfg = self.config
        pairs = _check_pairs(pairs, "pairs")
        if val_pairs is None:
            cut = max(1, int(len(pairs) * cfg.val_fraction)) if len(pairs) > 20 else 0
            order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
            val_pairs, pairs = [pairs[i] for i in order[:cut]], [pairs[i] for i in order[cut:]]
        self._build_tokenizers(pairs)
        train = self._tensors(pairs)
        val = self._tensors(_check_pairs(val_pairs, "val_pairs")) if val_pairs else None
        self.skipped = len(pairs) - len(train[0])
        if len(train[0]) == 0:
            raise DataError(f"every training pair is longer than max_length={cfg.max_length} tokens; "
                            "raise max_length (--max-length)")
        torch.manual_seed(cfg.seed)
        self.model = Seq2Seq(cfg.model_config(self.source_tokenizer.vocab_size, self.target_tokenizer.vocab_size))
        steps_per_epoch = -(-len(train[0]) // cfg.batch_size)
        train_config = TrainConfig(epochs=cfg.epochs, minutes=cfg.minutes, batch_size=cfg.batch_size, lr=cfg.lr,
                                   patience=cfg.patience if val else None, seed=cfg.seed, progress=cfg.progress,
                                   eval_every=min(steps_per_epoch, 200) if val else None, clock=cfg.clock,
                                   precision=cfg.precision)
        # Batches of near-equal lengths: each is trimmed to its longest pair, so little is padding.
        pair_lengths = train[1] + (train[3] != PAD).sum(dim=1)
        self.train_result = fit(self.model, self._loss_fn, train, val, train_config, lengths=pair_lengths)
        self.model.cpu().eval()
        return self

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
        options = {} if cfg.tokenizer == "char" else {"vocab_size" if cfg.tokenizer == "bpe" else "max_size":
                                                      cfg.vocab_size}
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
        src = _pad([s for s, _ in rows], 1)
        tgt = _pad([t for _, t in rows], 2)
        return src, torch.tensor([len(s) for s, _ in rows], dtype=torch.long), tgt[:, :-1], tgt[:, 1:]

    # ------------------------------------------------------------------ translation

    def translate(self, text: Union[str, Sequence[str]], *, beam: int = 1,
                  batch_size: int = 64) -> Union[str, list[str]]:
        """Translate one sentence (returns a string) or a list of them (returns a list)."""
        single = isinstance(text, str)
        results = self.translate_detailed([text] if single else list(text), beam=beam, batch_size=batch_size)
        outputs = [r["translation"] for r in results]
        return outputs[0] if single else outputs

    @torch.no_grad()
    def translate_detailed(self, texts: Sequence[str], *, beam: int = 1, batch_size: int = 64) -> list[dict[str, Any]]:
        """Translations with their pieces and attention: ``translation``, ``source_tokens``,
        ``target_tokens``, ``attention`` (a ``(T, S)`` tensor; zeros without attention)."""
        self._require_fitted()
        encoded = [self._encode_source(text, number) for number, text in enumerate(texts, start=1)]
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
        results: list[dict[str, Any]] = [{}] * len(texts)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            src = _pad([encoded[i] for i in chunk], 1)
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
                    "translation": self.target_tokenizer.decode(tokens[:end]),
                    "source_tokens": [self.source_tokenizer.tokens[t] for t in encoded[i]],
                    "target_tokens": [self.target_tokenizer.tokens[t] for t in tokens[:end + 1]],
                    "attention": attention[row, : end + 1, : len(encoded[i])],
                }
        return results

    def _encode_source(self, text: str, number: int) -> list[int]:
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"input {number} is empty: give a sentence to translate")
        ids = self.source_tokenizer.encode(" ".join(text.split()))
        if not ids:
            raise DataError(f"input {number} has no tokens this model can read: give a sentence to translate")
        if len(ids) > self.config.max_length:
            raise DataError(f"input {number} has {len(ids)} tokens; this model reads at most "
                            f"{self.config.max_length} (max_length): split it into shorter sentences")
        return ids

    def plot_attention(self, text: str, path: Union[str, Path], *, beam: int = 1) -> Path:
        """Translate ``text`` and write its attention heatmap (output tokens x source tokens) as a PNG."""
        if self.config.attention == "none":
            raise RnnkitError("this model has no attention (attention='none'): nothing to plot")
        detail = self.translate_detailed([text], beam=beam)[0]
        return plot_attention(detail["attention"], detail["source_tokens"], detail["target_tokens"], path,
                              title=f"{text} -> {detail['translation']}")

    def evaluate(self, pairs: Sequence[Pair], *, beam: int = 1) -> dict[str, float]:
        """Corpus BLEU and chrF (sacrebleu) and exact-match rate of translations against references."""
        pairs = _check_pairs(pairs, "pairs")
        hypotheses = self.translate([s for s, _ in pairs], beam=beam)
        references = [t for _, t in pairs]
        return {"bleu": metrics.bleu(hypotheses, references), "chrf": metrics.chrf(hypotheses, references),
                "exact": metrics.exact_match(hypotheses, references), "count": len(pairs)}

    # ----------------------------------------------------------------------- bundles

    def save(self, path: Union[str, Path]) -> Path:
        """Write a bundle directory: config, safetensors weights, both tokenizers as JSON, metrics."""
        self._require_fitted()
        result = self.train_result
        metrics_json = {"best_val_loss": result.best_val_loss, "steps": result.steps, "stopped": result.stopped,
                        "skipped_pairs": self.skipped, "history": result.history} if result else {}
        return save_bundle(path, model_type=MODEL_TYPE, config=self.config.to_dict(), model=self.model,
                           preprocessing={"source": self.source_tokenizer.to_dict(),
                                          "target": self.target_tokenizer.to_dict(),
                                          "joint": self.source_tokenizer is self.target_tokenizer},
                           metrics=metrics_json)

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> "Translator":
        """Rebuild a fitted translator from a bundle read by :func:`rnnkit.bundle.read_bundle`."""
        translator = cls(TranslatorConfig.from_dict(bundle.config))
        translator.source_tokenizer = tokenizer_from_dict(bundle.preprocessing["source"])
        translator.target_tokenizer = (translator.source_tokenizer if bundle.preprocessing.get("joint")
                                       else tokenizer_from_dict(bundle.preprocessing["target"]))
        translator.model = Seq2Seq(translator.config.model_config(translator.source_tokenizer.vocab_size,
                                                                  translator.target_tokenizer.vocab_size))
        load_weights(translator.model, bundle)
        translator.model.eval()
        return translator

    def _require_fitted(self) -> None:
        if self.model is None:
            raise RnnkitError("this translator is not fitted yet; call fit(pairs) or load a bundle")


register(MODEL_TYPE)(Translator.from_bundle)


def _pad(rows: list[list[int]], minimum: int) -> Tensor:
    """Right-pad id lists with ``<pad>`` into ``(N, max(len))``."""
    out = torch.full((len(rows), max([minimum, *map(len, rows)])), PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def _check_pairs(pairs: Sequence[Pair], name: str) -> list[Pair]:
    pairs = list(pairs)
    if not pairs:
        raise DataError(f"{name} is empty: expected (source, target) sentence pairs")
    for number, pair in enumerate(pairs, start=1):
        if (not isinstance(pair, (tuple, list)) or len(pair) != 2
                or not all(isinstance(side, str) and side.strip() for side in pair)):
            raise DataError(f"{name}[{number - 1}] must be a (source, target) pair of non-empty strings, got {pair!r}")
    return [(s, t) for s, t in pairs]


__all__ = ["Translator", "TranslatorConfig"]

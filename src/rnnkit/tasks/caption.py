"""Image captioning: an image in, a sentence out, the decoder attending over the image's columns.

A thin estimator over :class:`~rnnkit.seq2seq.Seq2Seq`, whose source is an image instead of
token ids. The encoder reads the image as a sequence of columns: two 3x3 convolutions give
``C`` feature maps, each column's ``C x H`` values go through a linear map (the "embedding" of
that column), and a bidirectional recurrent stack runs over the columns, left to right and
back. The decoder, its attention over those column positions, greedy and beam decoding are
Seq2Seq's own: a word attends to the columns that say it, so the attention map shows which
part of the image each word was read from.

Images are ``config.height`` rows high and up to ``config.max_width`` columns wide (any width in
between: a batch is padded on the right and the padding is masked out of the attention);
pixel intensities are 0..16, as in scikit-learn's ``load_digits``. The data the CLI and the
benchmark train on is composed from real handwritten digits (:mod:`rnnkit.data.digits`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from .. import metrics
from ..data.digits import HEIGHT, MAX_WIDTH
from ..data.tokenizers import BOS, EOS, PAD, Tokenizer, build_tokenizer, tokenizer_from_dict
from ..errors import DataError, RnnkitError
from ..seq2seq import Seq2Seq, Seq2SeqConfig
from .base import Task, TaskConfig
from .encoder_decoder import pad_ids

MODEL_TYPE = "captioner"
MAX_VALUE = 16.0  # pixel intensities are 0..16 (load_digits' scale); the model reads them / 16


@dataclass(frozen=True, kw_only=True)
class CaptionerConfig(TaskConfig):
    """Everything that defines a captioner; saved in its bundle as ``config.json``."""

    KIND = "captioner"

    cell: str = "lstm"          # the encoder's and decoder's recurrent cell
    attention: str = "luong"    # "luong", "bahdanau" or "none" (the decoder then sees only the final state)
    hidden_size: int = 128      # decoder width; the encoder gets half per direction
    embedding_size: int = 64    # word embeddings and each column's feature vector
    channels: int = 16          # convolution feature maps: strokes, not objects, at 8x8
    dropout: float = 0.1
    height: int = HEIGHT        # rows of every image
    max_width: int = 4 * MAX_WIDTH  # the widest image accepted, in columns
    max_words: int = 16         # decoding stops after this many words
    length_penalty: float = 1.0  # beam search: score / length^alpha
    epochs: int = 40            # an upper bound: the time budget or early stopping usually ends first
    minutes: Optional[float] = 3.0  # a small model: a few CPU minutes reach most of its accuracy
    batch_size: int = 64
    patience: Optional[int] = 6  # validations without improvement before stopping
    val_fraction: float = 0.1   # examples held out for early stopping when no validation set is given

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_positive("hidden_size", "embedding_size", "channels", "height", "max_width", "max_words")
        if not 0.0 < self.val_fraction < 0.5:
            raise RnnkitError(f"val_fraction must be in (0, 0.5), got {self.val_fraction!r}")
        self.model_config(5)  # the topology's own checks (attention, even hidden size, dropout)

    def model_config(self, vocab_size: int) -> Seq2SeqConfig:
        return Seq2SeqConfig(src_vocab_size=1, tgt_vocab_size=vocab_size, cell=self.cell,
                             embedding_size=self.embedding_size, hidden_size=self.hidden_size,
                             bidirectional=True, attention=self.attention, dropout=self.dropout)


class ColumnFeatures(nn.Module):
    """Image columns ``(B, W, H)`` to one feature vector per column ``(B, W, E)``.

    Two 3x3 convolutions (``C`` maps each) see each pixel's neighbourhood, so a column's vector
    knows the stroke it cuts through; a linear map of the column's ``C x H`` values follows.
    """

    def __init__(self, height: int, channels: int, size: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())
        self.project = nn.Linear(channels * height, size)

    def forward(self, columns: Tensor) -> Tensor:
        maps = self.conv(columns.transpose(1, 2).unsqueeze(1))  # (B, C, H, W)
        return torch.relu(self.project(maps.permute(0, 3, 1, 2).flatten(2)))  # (B, W, C*H) -> (B, W, E)


class ImageSeq2Seq(Seq2Seq):
    """:class:`~rnnkit.seq2seq.Seq2Seq` whose source is image columns ``(B, W, H)`` in 0..1:
    its ``src_embedding`` is :class:`ColumnFeatures`; everything else (bridge, attention,
    decoder, greedy and beam search) is Seq2Seq's."""

    def __init__(self, config: Seq2SeqConfig, height: int, channels: int) -> None:
        super().__init__(config)
        self.height = height
        self.src_embedding = ColumnFeatures(height, channels, config.embedding_size)

    def embed_source(self, src: Tensor) -> Tensor:
        if src.dim() != 3 or src.size(2) != self.height:
            raise RnnkitError(f"expected image columns (batch, width, {self.height}), got {tuple(src.shape)}")
        return self.src_embedding(src)


class Captioner(Task):
    """Describe an image in words with a CNN + bidirectional RNN encoder and an attending decoder.

    Example::

        from rnnkit.data.digits import digit_composites
        train = digit_composites("train", 20000)
        cap = Captioner(minutes=3).fit(train.images, train.captions)
        cap.caption(image)                          # "three hundred and forty two"
        cap.evaluate(test.images, test.captions)    # {"exact": ..., "bleu": ...}
    """

    name = "caption"
    model_type = MODEL_TYPE
    config_class = CaptionerConfig
    request_schema = {"type": "object", "required": ["image"], "additionalProperties": False, "properties": {
        "image": {"type": "array", "minItems": 1, "description": "rows of pixel intensities 0..16 "
                  "(load_digits' scale), all rows as wide, as many rows as the model's height",
                  "items": {"type": "array", "minItems": 1, "items": {"type": "number"}}},
        "beam": {"type": "integer", "minimum": 1, "description": "beam width; 1 = greedy (default)"}}}
    response_schema = {"type": "object", "properties": {
        "caption": {"type": "string"}, "words": {"type": "array", "items": {"type": "string"}},
        "attention": {"type": "array", "description": "per word (and <eos>), its weights over the image columns"}}}
    config: CaptionerConfig

    def __init__(self, config: Optional[CaptionerConfig] = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.tokenizer: Optional[Tokenizer] = None

    # --------------------------------------------------------------------- training

    def _fit(self, images: Sequence[Any], captions: Sequence[str], val_images: Optional[Sequence[Any]] = None,
             val_captions: Optional[Sequence[str]] = None) -> None:
        """Train on ``images`` and their ``captions``; the validation pair (default: a held-out
        slice of the training examples) stops training early and picks the best weights."""
        cfg = self.config
        images, captions = self._check_examples(images, captions, "images")
        if val_images is None:
            cut = max(1, int(len(images) * cfg.val_fraction)) if len(images) >= 10 else 0
            order = np.random.default_rng(cfg.seed).permutation(len(images))
            val_images, val_captions = [images[i] for i in order[:cut]], [captions[i] for i in order[:cut]]
            images, captions = [images[i] for i in order[cut:]], [captions[i] for i in order[cut:]]
        elif val_captions is None:
            raise DataError("val_images needs val_captions")
        self.tokenizer = build_tokenizer("word", captions, max_size=10_000)
        train = self._tensors(images, captions)
        val = self._tensors(*self._check_examples(val_images, val_captions, "val_images")) if val_images else None
        torch.manual_seed(cfg.seed)
        self.model = self.build_model()
        steps_per_epoch = -(-len(images) // cfg.batch_size)
        self.train_results = []
        result = self.train(self.model, self._loss_fn, train, val, lengths=train[1],
                            patience=cfg.patience if val else None,
                            eval_every=min(steps_per_epoch, 200) if val else None)
        self.model.cpu()
        self.metrics = {"best_val_loss": result.best_val_loss, **self.training_summary(),
                        "train_examples": len(images)}

    def build_model(self) -> ImageSeq2Seq:
        cfg = self.config
        return ImageSeq2Seq(cfg.model_config(self.tokenizer.vocab_size), cfg.height, cfg.channels)

    def preprocessing(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer.to_dict()}

    def restore(self, state: dict[str, Any]) -> None:
        self.tokenizer = tokenizer_from_dict(state["tokenizer"])

    def _loss_fn(self, model: nn.Module, batch: tuple[Tensor, ...], state: Any) -> tuple[Tensor, None]:
        columns, widths, tgt_in, tgt_out = batch
        columns = columns[:, : int(widths.max())]  # trim the padding this batch does not need
        words = int((tgt_out != PAD).sum(dim=1).max())
        tgt_in, tgt_out = tgt_in[:, :words], tgt_out[:, :words]
        keep = tgt_out != PAD  # (B, T)
        logits = model(columns, widths, tgt_in, keep=keep)  # (N, V), real tokens only
        return nn.functional.cross_entropy(logits, tgt_out[keep]), None

    def _tensors(self, images: Sequence[np.ndarray], captions: Sequence[str]) -> tuple[Tensor, ...]:
        """``(columns (N, W, H), widths (N,), tgt_in (N, T), tgt_out (N, T))``, images scaled to 0..1."""
        columns, widths = self._columns(images)
        tgt = pad_ids([[BOS, *self.tokenizer.encode(c), EOS] for c in captions], 2)
        return columns, widths, tgt[:, :-1], tgt[:, 1:]

    def _columns(self, images: Sequence[np.ndarray]) -> tuple[Tensor, Tensor]:
        widths = torch.tensor([image.shape[1] for image in images], dtype=torch.long)
        columns = torch.zeros(len(images), int(widths.max()), self.config.height)
        for i, image in enumerate(images):
            columns[i, : image.shape[1]] = torch.from_numpy(image.T / MAX_VALUE)
        return columns, widths

    # --------------------------------------------------------------------- checks

    def check_image(self, image: Any, where: str = "image") -> np.ndarray:
        """``image`` as a ``(height, width)`` float32 array, or a one-line :class:`DataError` saying
        what is wrong with it (shape, ragged rows, NaN, values outside 0..16)."""
        height, max_width = self.config.height, self.config.max_width
        try:
            array = np.asarray(image, dtype=np.float32)
        except (TypeError, ValueError):
            raise DataError(f"{where} must be rows of numbers, all rows as wide (got ragged or non-numeric rows)") \
                from None
        if array.ndim != 2 or array.shape[0] != height or not 1 <= array.shape[1] <= max_width:
            raise DataError(f"{where} must be {height} rows of 1..{max_width} pixels, got shape {array.shape}; "
                            f"pad or crop it to {height} rows")
        if not np.isfinite(array).all():
            raise DataError(f"{where} has NaN or infinite pixels; give intensities 0..16")
        if array.min() < 0 or array.max() > MAX_VALUE:
            raise DataError(f"{where} has pixels outside 0..16 ({array.min():g}..{array.max():g}); "
                            "scale them to load_digits' 0..16")
        return array

    def _check_examples(self, images: Sequence[Any], captions: Sequence[str], name: str) -> tuple[list, list]:
        images, captions = list(images), list(captions)
        if not images:
            raise DataError(f"{name} is empty: give images and their captions")
        if len(images) != len(captions):
            raise DataError(f"{name} has {len(images)} images but {len(captions)} captions; give one caption each")
        for k, caption in enumerate(captions):
            if not isinstance(caption, str) or not caption.strip():
                raise DataError(f"caption {k} must be a non-empty string, got {caption!r}")
        return [self.check_image(image, f"{name}[{k}]") for k, image in enumerate(images)], captions

    # --------------------------------------------------------------------- captioning

    @torch.no_grad()
    def describe(self, images: Sequence[Any], *, beam: int = 1, batch_size: int = 256) -> list[dict[str, Any]]:
        """Per image: ``caption``, ``words`` (ending in ``<eos>``) and ``attention``, a ``(words, width)``
        array of each word's weights over the image's columns."""
        self.require_fitted()
        checked = [self.check_image(image, f"image {k}") for k, image in enumerate(images)]
        results: list[dict[str, Any]] = []
        for start in range(0, len(checked), batch_size):
            chunk = checked[start:start + batch_size]
            columns, widths = self._columns(chunk)
            if beam == 1:
                ids, attention = self.model.greedy(columns, widths, self.config.max_words + 1)
            else:
                ids, attention = self.model.beam_search(columns, widths, self.config.max_words + 1, beam=beam,
                                                        length_penalty=self.config.length_penalty)
            for row, image in enumerate(chunk):
                tokens = ids[row].tolist()
                end = tokens.index(EOS) if EOS in tokens else len(tokens)
                results.append({"caption": self.tokenizer.decode(tokens[:end]),
                                "words": [self.tokenizer.tokens[t] for t in tokens[:end + 1]],
                                "attention": attention[row, : end + 1, : image.shape[1]].numpy()})
        return results

    def caption(self, image: Any, *, beam: int = 1) -> str:
        """The caption of one image (rows of intensities 0..16)."""
        return self.describe([image], beam=beam)[0]["caption"]

    def evaluate(self, images: Sequence[Any], captions: Sequence[str], *, beam: int = 1) -> dict[str, float]:
        """Exact-caption accuracy and corpus BLEU (sacrebleu) of the captions against ``captions``."""
        hypotheses = [d["caption"] for d in self.describe(images, beam=beam)]
        return {"exact": metrics.exact_match(hypotheses, list(captions)),
                "bleu": metrics.bleu(hypotheses, list(captions)), "count": len(hypotheses)}

    def plot(self, images: Sequence[Any], path: Union[str, Path], *, beam: int = 1,
             references: Optional[Sequence[str]] = None) -> Path:
        """Write a PNG: each image above its attention map (a row per word, a column per image
        column), titled with the caption (and the reference, when given)."""
        if self.config.attention == "none":
            raise RnnkitError("this model has no attention (attention='none'): nothing to plot")
        from ..plotting import plot_captions  # matplotlib, only when a plot is asked for

        details = self.describe(images, beam=beam)
        return plot_captions([self.check_image(i) for i in images], details, path, references=references)

    def predict_json(self, request: dict[str, Any]) -> dict[str, Any]:
        detail = self.describe([request["image"]], beam=request.get("beam", 1))[0]
        weights = [[round(float(w), 5) for w in row] for row in detail["attention"]]
        return {"caption": detail["caption"], "words": detail["words"], "attention": weights}


__all__ = ["Captioner", "CaptionerConfig", "ColumnFeatures", "ImageSeq2Seq"]

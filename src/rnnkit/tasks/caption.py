"""Image captioning: an image in, a sentence out, the decoder attending over the image's columns.

A thin subclass of the shared encoder-decoder task (:class:`~.encoder_decoder.EncoderDecoder`:
held-out split, training, loss, greedy and beam decoding), whose source encoder reads an image
instead of token ids. The encoder reads the image as a sequence of columns: two 3x3
convolutions give ``C`` feature maps, each column's ``C x H`` values go through a linear map
(the "embedding" of that column, :class:`ColumnFeatures` in :class:`ImageSeq2Seq`), and a
bidirectional recurrent stack runs over the columns, left to right and back. The decoder and
its attention over those column positions are :class:`~rnnkit.seq2seq.Seq2Seq`'s own: a word
attends to the columns that say it, so the attention map shows which part of the image each
word was read from. What this module keeps is the image's: its checks, its columns as the
source (the source-encoder hooks), the word vocabulary of its captions, and its answers.

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
from ..data.tokenizers import Tokenizer, build_tokenizer, tokenizer_from_dict
from ..errors import DataError, RnnkitError
from ..seq2seq import Seq2Seq, Seq2SeqConfig
from .encoder_decoder import EncoderDecoder, EncoderDecoderConfig

MODEL_TYPE = "captioner"
MAX_VALUE = 16.0  # pixel intensities are 0..16 (load_digits' scale); the model reads them / 16


@dataclass(frozen=True, kw_only=True)
class CaptionerConfig(EncoderDecoderConfig):
    """Everything that defines a captioner; saved in its bundle as ``config.json``. The
    encoder-decoder's options are shared; these are the image's and the captioner's defaults."""

    KIND = "captioner"

    hidden_size: int = 128      # decoder width; a bidirectional encoder gets half per direction
    embedding_size: int = 64    # word embeddings and each column's feature vector
    channels: int = 16          # convolution feature maps: strokes, not objects, at 8x8
    height: int = HEIGHT        # rows of every image
    max_width: int = 4 * MAX_WIDTH  # the widest image accepted, in columns
    max_words: int = 16         # decoding stops after this many words
    label_smoothing: float = 0.0  # captions are short and exact: no smoothing
    epochs: int = 40            # an upper bound: the time budget or early stopping usually ends first
    minutes: Optional[float] = 3.0  # a small model: a few CPU minutes reach most of its accuracy
    lr: float = 3e-3            # TaskConfig's rate: a small model takes larger steps than a translator
    val_fraction: float = 0.1   # examples held out for early stopping when no validation set is given

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_positive("channels", "height", "max_width", "max_words")


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


class Captioner(EncoderDecoder):
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
    # Images in the caller's order: an image's last column reads the first convolution's output
    # over the padding to its right, so its answer depends on whether its batch pads it.
    decode_by_length = False

    @property
    def tokenizer(self) -> Optional[Tokenizer]:
        """The captions' word vocabulary (the encoder-decoder's target tokenizer)."""
        return self.target_tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer: Optional[Tokenizer]) -> None:
        self.target_tokenizer = tokenizer

    # --------------------------------------------------------------------- training

    def _fit(self, images: Sequence[Any], captions: Sequence[str], val_images: Optional[Sequence[Any]] = None,
             val_captions: Optional[Sequence[str]] = None) -> None:
        """Train on ``images`` and their ``captions``; the validation pair (default: a held-out
        slice of the training examples) stops training early and picks the best weights."""
        pairs = list(zip(*self._check_examples(images, captions, "images")))
        val_pairs = None
        if val_images is not None:
            if val_captions is None:
                raise DataError("val_images needs val_captions")
            val_pairs = list(zip(*self._check_examples(val_images, val_captions, "val_images"))) if val_images else []
        trained_on = self._train_pairs(pairs, val_pairs)
        self.metrics["train_examples"] = trained_on

    def _hold_out(self, pairs: list) -> tuple[list, list]:
        """``(val, train)`` held out as the captioner always has (numpy's generator, from ten
        examples on), so a seed still trains the captioner it trained before the shared base."""
        cut = max(1, int(len(pairs) * self.config.val_fraction)) if len(pairs) >= 10 else 0
        order = np.random.default_rng(self.config.seed).permutation(len(pairs))
        return [pairs[i] for i in order[:cut]], [pairs[i] for i in order[cut:]]

    def _group_lengths(self, train: tuple[Tensor, ...]) -> Tensor:
        """Batches grouped by image width alone, as the captioner always has (a caption's few words
        add little to an image's columns)."""
        return train[1]

    def build_model(self) -> ImageSeq2Seq:
        cfg = self.config
        return ImageSeq2Seq(cfg.model_config(1, self.tokenizer.vocab_size), cfg.height, cfg.channels)

    def preprocessing(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer.to_dict()}

    def restore(self, state: dict[str, Any]) -> None:
        self.tokenizer = tokenizer_from_dict(state["tokenizer"])

    # --------------------------------------------------------------------- the source: image columns

    def _build_vocabularies(self, pairs: Sequence[tuple[np.ndarray, str]]) -> None:
        self.tokenizer = build_tokenizer("word", [caption for _, caption in pairs], max_size=10_000)

    def _training_source(self, image: np.ndarray, target_ids: list[int]) -> Tensor:
        return columns_of(image)

    def _source(self, image: Any, index: int) -> Tensor:
        return columns_of(self.check_image(image, f"image {index}"))

    def _source_batch(self, sources: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """``(columns (N, W, H), widths (N,))``: each image's columns, zeros to the right of it."""
        widths = torch.tensor([len(columns) for columns in sources], dtype=torch.long)
        batch = torch.zeros(len(sources), int(widths.max()), self.config.height)
        for i, columns in enumerate(sources):
            batch[i, : len(columns)] = columns
        return batch, widths

    def _decode_limit(self, lengths: Tensor) -> int:
        return self.config.max_words + 1

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

    def describe_images(self, images: Sequence[Any], *, beam: int = 1, batch_size: int = 256) -> list[dict[str, Any]]:
        """Per image: ``caption``, ``words`` (ending in ``<eos>``) and ``attention``, a ``(words, width)``
        array of each word's weights over the image's columns."""
        return [{"caption": d["output"], "words": d["target_tokens"], "attention": d["attention"].numpy()}
                for d in self.decode(images, beam=beam, batch_size=batch_size)]

    def caption(self, image: Any, *, beam: int = 1) -> str:
        """The caption of one image (rows of intensities 0..16)."""
        return self.describe_images([image], beam=beam)[0]["caption"]

    def evaluate(self, images: Sequence[Any], captions: Sequence[str], *, beam: int = 1) -> dict[str, float]:
        """Exact-caption accuracy and corpus BLEU (sacrebleu) of the captions against ``captions``."""
        hypotheses = [d["caption"] for d in self.describe_images(images, beam=beam)]
        return {"exact": metrics.exact_match(hypotheses, list(captions)),
                "bleu": metrics.bleu(hypotheses, list(captions)), "count": len(hypotheses)}

    def plot(self, images: Sequence[Any], path: Union[str, Path], *, beam: int = 1,
             references: Optional[Sequence[str]] = None) -> Path:
        """Write a PNG: each image above its attention map (a row per word, a column per image
        column), titled with the caption (and the reference, when given)."""
        if self.config.attention == "none":
            raise RnnkitError("this model has no attention (attention='none'): nothing to plot")
        from ..plotting import plot_captions  # matplotlib, only when a plot is asked for

        details = self.describe_images(images, beam=beam)
        return plot_captions([self.check_image(i) for i in images], details, path, references=references)

    def predict_json(self, request: dict[str, Any]) -> dict[str, Any]:
        detail = self.describe_images([request["image"]], beam=request.get("beam", 1))[0]
        weights = [[round(float(w), 5) for w in row] for row in detail["attention"]]
        return {"caption": detail["caption"], "words": detail["words"], "attention": weights}


def columns_of(image: np.ndarray) -> Tensor:
    """A checked ``(H, W)`` image as the encoder reads it: ``W`` columns of ``H`` values in 0..1."""
    return torch.from_numpy(image.T / MAX_VALUE)


__all__ = ["Captioner", "CaptionerConfig", "ColumnFeatures", "ImageSeq2Seq", "columns_of"]

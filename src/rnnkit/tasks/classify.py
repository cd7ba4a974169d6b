"""Text classification (sentiment and the like): a recurrent many-to-one model over token ids.

Each batch is cut to its longest text and the recurrent layer is given every text's
length, so padding never reaches a valid step or the summary (packed sequences on the fused
path): a text's prediction does not depend on what it is batched with. Class weights
counter imbalance; a stratified slice of the training data picks the best epoch. A linear bag
of the text's words and hashed word pairs (:class:`~rnnkit.tasks.ngrams.NgramBag`, the "wide"
part) adds its scores to the network's: it learns the telling words and pairs in a few epochs,
where the recurrent part learns what depends on order and context.

Transfer from a language model (ULMFiT, Howard & Ruder 2018): ``fit(..., pretrained=LM)``
starts the embedding and the recurrent stack from a text generator's, and ``pretrain_minutes``
first fine-tunes that language model (or a fresh one) on the training texts, labels ignored,
plus any ``unlabelled`` texts. The classifier is then fine-tuned as ULMFiT does it: a
slanted triangular schedule, lower rates for lower layers, and the layers unfrozen one per
epoch from the head down, so the pretrained weights are not scrambled by a random head.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import copy

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from .. import metrics
from ..data.tokenizers import KINDS, UNK, Tokenizer, build_tokenizer, tokenizer_from_dict, tokenizer_options
from ..errors import DataError, RnnkitError
from ..topologies import POOLINGS, ManyToOne
from .base import Task, TaskConfig
from .language import (check_encoder, encoder_groups, encoder_sizes, language_model_for, read_language_model,
                       seed_encoder, train_language_model)
from .ngrams import NgramBag

MODEL_TYPE = "sequence_classifier"
AUTO_MEMBERS = 5  # ensemble=None: at most this many members, as many as the time budget fits


@dataclass(frozen=True, kw_only=True)
class SequenceClassifierConfig(TaskConfig):
    """Everything that defines a text classifier; saved in its bundle as ``config.json``."""

    KIND = "sequence classifier"

    tokenizer: str = "word"          # sentiment lives in words; "bpe" for rich morphology, "char" for codes
    vocab_size: int = 20000          # words seen less often fall to <unk>
    min_count: int = 2               # a word seen once cannot be learned, only memorised: <unk>
    cell: str = "lstm"               # any recurrent cell: "lstm", "gru", "rnn", "mingru", "minlstm"
    embedding_size: int = 128
    hidden_size: int = 128           # per direction; short texts need little memory
    num_layers: int = 1
    bidirectional: bool = True       # a word's meaning depends on what follows it too ("not bad")
    pooling: str = "attention"       # "attention" weighs the telling words; "last" = final states;
    #                                  "concat" = final state, max and mean side by side (ULMFiT)
    dropout: float = 0.5             # on embeddings, between layers, before the head: words are sparse
    max_len: int = 128               # tokens kept per text (the start); tweets are far shorter
    class_weights: Optional[str] = "balanced"  # weigh classes by n / (k * count): rare classes count
    ensemble: Optional[int] = None   # members from different seeds, probabilities averaged: steadier, for
    #                                  ensemble x the training time (the budget is shared among them);
    #                                  None = as many as minutes fits, up to AUTO_MEMBERS: each member gets
    #                                  what is left, and another starts while what is left is at least what
    #                                  the last took (many on few texts, where early stopping ends a fit soon)
    minutes: Optional[float] = 5.0   # a short default budget: texts are short and early stopping ends most fits
    batch_size: int = 32             # small batches: more, noisier steps regularise a net that overfits words
    lr: float = 5e-3
    patience: Optional[int] = 3      # epochs without a better validation loss before stopping
    val_fraction: float = 0.1        # stratified slice of the training texts that picks the best epoch
    pretrain_minutes: Optional[float] = None  # language-model fine-tuning on the texts first (ULMFiT); on
    #                                  top of minutes, on the same clock; None = none
    pretrain_lr: float = 3e-3        # the language model's rate: the trainer's default for recurrent nets
    layer_lr_decay: float = 2.6      # a pretrained encoder: each layer group below the head at lr / 2.6^k (ULMFiT)
    unfreeze_every: Optional[int] = 1  # a pretrained encoder: epochs between unfreezing one more layer group
    #                                  from the head down (ULMFiT's gradual unfreezing); None = all at once
    ngram_buckets: int = 2 ** 18     # rows for hashed word pairs in the linear bag of words and pairs added
    #                                  to the network's scores (rnnkit.tasks.ngrams); 0 = no bag

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tokenizer not in KINDS:
            raise RnnkitError(f"tokenizer must be one of {', '.join(KINDS)}, got {self.tokenizer!r}")
        self.check_positive("vocab_size", "min_count", "embedding_size", "hidden_size", "num_layers", "max_len",
                            *(("ensemble",) if self.ensemble is not None else ()))
        if not isinstance(self.ngram_buckets, int) or isinstance(self.ngram_buckets, bool) or self.ngram_buckets < 0:
            raise RnnkitError(f"ngram_buckets must be 0 (no word bag) or a positive integer, got {self.ngram_buckets!r}")
        if self.class_weights not in (None, "balanced"):
            raise RnnkitError(f"class_weights must be 'balanced' or None, got {self.class_weights!r}")
        if not 0.0 < self.val_fraction < 0.5:
            raise RnnkitError(f"val_fraction must be in (0, 0.5), got {self.val_fraction!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise RnnkitError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.pooling not in POOLINGS:
            raise RnnkitError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        self.train_config(lr=self.pretrain_lr, layer_lr_decay=self.layer_lr_decay,  # the trainer checks these
                          unfreeze_every=self.unfreeze_every, minutes=self.pretrain_minutes)
        if self.pretrain_minutes is not None and self.bidirectional:
            raise RnnkitError("pretrain_minutes trains a language model, which reads left to right: "
                              "set bidirectional=False (--no-bidirectional)")

    @property
    def members(self) -> int:
        """Members built: ``ensemble``, or ``AUTO_MEMBERS`` of which those the budget fits are kept."""
        return AUTO_MEMBERS if self.ensemble is None else self.ensemble

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SequenceClassifierConfig":
        """The inverse of ``to_dict``. A bundle saved before the n-gram part keeps classifying as it did."""
        return super().from_dict({"ngram_buckets": 0, **data})

    @classmethod
    def matching(cls, pretrained: Any, **options: Any) -> "SequenceClassifierConfig":
        """A config whose encoder fits the language model ``pretrained`` (a TextGenerator or its
        bundle's path): its cell, sizes and tokenizer, read left to right; ``options`` set the rest."""
        lm = read_language_model(pretrained)
        check_encoder(options, lm)
        return cls(**{**options, **encoder_sizes(lm)})


class TextClassifierNet(nn.Module):
    """:class:`~rnnkit.topologies.ManyToOne` over token ids, with dropout on the embedded tokens
    and on the pooled summary as well as between layers: tweets are few for a vocabulary of words.

    Shapes: ids ``(B, T)`` and ``lengths`` ``(B,)`` to logits ``(B, C)``.
    """

    def __init__(self, config: SequenceClassifierConfig, vocab_size: int, num_classes: int) -> None:
        super().__init__()
        self.body = ManyToOne(config.embedding_size, num_classes, config.hidden_size, cell=config.cell,
                              num_layers=config.num_layers, bidirectional=config.bidirectional,
                              dropout=config.dropout, pooling=config.pooling, vocab_size=vocab_size)
        self.dropout = nn.Dropout(config.dropout)
        self.ngrams = NgramBag(vocab_size, config.ngram_buckets, num_classes) if config.ngram_buckets else None

    def forward(self, x: Tensor, *, lengths: Optional[Tensor] = None) -> Tensor:
        embedded = self.dropout(self.body.embed(x))  # (B, T, E)
        outputs, state = self.body.recurrent(embedded, lengths=lengths)  # (B, T, D*H)
        logits = self.body.head(self.dropout(self.body.summarise(outputs, state, lengths)))
        return logits if self.ngrams is None else logits + self.ngrams(x, lengths)


class ClassifierEnsemble(nn.Module):
    """``config.members`` :class:`TextClassifierNet` members; returns the log of their mean class
    probabilities ``(B, C)``, so a softmax of the output gives the ensemble's probabilities."""

    def __init__(self, config: SequenceClassifierConfig, vocab_size: int, num_classes: int) -> None:
        super().__init__()
        self.members = nn.ModuleList(TextClassifierNet(config, vocab_size, num_classes)
                                     for _ in range(config.members))

    def forward(self, x: Tensor, *, lengths: Optional[Tensor] = None) -> Tensor:
        probs = torch.stack([member(x, lengths=lengths).softmax(-1) for member in self.members])  # (M, B, C)
        return probs.mean(dim=0).log()


def classifier_model(config: SequenceClassifierConfig, vocab_size: int, num_classes: int) -> ClassifierEnsemble:
    return ClassifierEnsemble(config, vocab_size, num_classes)


def pad_ids(sequences: Sequence[Sequence[int]], max_len: int) -> tuple[Tensor, Tensor]:
    """Token id lists to right-padded ids ``(N, T)`` and lengths ``(N,)``; an empty text becomes one ``<unk>``."""
    cut = [list(s[:max_len]) or [UNK] for s in sequences]
    lengths = torch.tensor([len(s) for s in cut], dtype=torch.long)
    ids = torch.zeros(len(cut), int(lengths.max()) if cut else 1, dtype=torch.long)  # <pad> is 0
    for i, s in enumerate(cut):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return ids, lengths


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(keep, held)``: ``fraction`` of each class held out (at least one if it has two)."""
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for label in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == label))
        n_held = int(round(len(index) * fraction)) if len(index) > 1 else 0
        n_held = max(n_held, 1) if len(index) > 1 else 0
        held.append(index[:n_held]), keep.append(index[n_held:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


class SequenceClassifier(Task):
    """A recurrent text classifier: ``fit(texts, labels)``, ``predict``, ``predict_proba``, ``evaluate``.

    Example::

        clf = SequenceClassifier(cell="gru").fit(texts, labels)
        clf.predict(["what a lovely car"])        # ['positive']
        clf.predict_proba(["what a lovely car"])  # label, prob_negative, prob_neutral, prob_positive
    """

    name = "classify"
    model_type = MODEL_TYPE
    config_class = SequenceClassifierConfig
    request_schema = {"type": "object", "required": ["texts"], "additionalProperties": False, "properties": {
        "texts": {"type": "array", "items": {"type": "string"}, "minItems": 1, "description": "texts to classify"}}}
    response_schema = {"type": "object", "properties": {"predictions": {"type": "array", "items": {
        "type": "object", "properties": {"label": {"type": "string"}, "probabilities": {
            "type": "object", "description": "class -> probability"}}}}}}
    config: SequenceClassifierConfig

    def __init__(self, config: Optional[SequenceClassifierConfig] = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.tokenizer: Optional[Tokenizer] = None
        self.classes: list[str] = []
        self._pretrain_metrics: dict[str, Any] = {}

    def _fit(self, texts: Sequence[str], labels: Sequence[Any], pretrained: Any = None,
             unlabelled: Sequence[str] = ()) -> None:
        """Train on texts and their labels (any hashable; kept as strings). ``pretrained`` (a
        TextGenerator or its bundle's path) seeds the encoder; ``unlabelled`` texts join the
        training texts in the language-model stage (``pretrain_minutes``) only."""
        cfg = self.config
        lm = None if pretrained is None else read_language_model(pretrained)
        if lm is not None:
            check_encoder(self._encoder_options(), lm)
        texts, labels = _check_texts(texts), np.asarray([str(label) for label in labels])
        if len(texts) != len(labels):
            raise DataError(f"got {len(texts)} texts but {len(labels)} labels; give one label per text")
        self.classes = sorted(set(labels.tolist()))
        if len(self.classes) < 2:
            raise DataError(f"need at least 2 classes to classify, got {self.classes}; check the label column")
        y = np.searchsorted(self.classes, labels)
        keep, held = stratified_split(y, cfg.val_fraction, cfg.seed)
        if len(held) == 0:
            raise DataError(f"{len(texts)} texts are too few to hold out a validation slice; give more")
        self.tokenizer = lm.tokenizer if lm is not None else build_tokenizer(
            cfg.tokenizer, [texts[i] for i in keep], **tokenizer_options(cfg.tokenizer, cfg.vocab_size, cfg.min_count))
        self._pretrain_metrics = {} if lm is None else {
            "pretrained": str(pretrained) if isinstance(pretrained, (str, Path)) else "a TextGenerator"}
        encoder = self._pretrain(lm, [texts[i] for i in keep] + _check_texts(unlabelled, allow_empty=True),
                                 [texts[i] for i in held])
        ids, lengths = pad_ids([self.tokenizer.encode(t) for t in texts], cfg.max_len)
        targets = torch.as_tensor(y, dtype=torch.long)
        weights = None
        if cfg.class_weights == "balanced":
            counts = np.bincount(y[keep], minlength=len(self.classes)).clip(min=1)
            weights = torch.tensor(len(keep) / (len(self.classes) * counts), dtype=torch.float32)
        torch.manual_seed(cfg.seed)
        self.model = self.build_model()  # members differ in init
        fine_tune = {}
        if encoder is not None:
            for member in self.model.members:
                seed_encoder(member.body, encoder)
            fine_tune = dict(schedule="slanted", layer_lr_decay=cfg.layer_lr_decay, unfreeze_every=cfg.unfreeze_every)

        def loss_fn(model: nn.Module, batch: tuple[Tensor, ...], state: Any) -> tuple[Tensor, None]:
            x, n, target = batch
            logits = model(x[:, : int(n.max())], lengths=n)  # (B, C): cut to the batch's longest text
            w = None if weights is None else weights.to(logits.device)
            return nn.functional.cross_entropy(logits, target, weight=w), None

        train, val = (ids[keep], lengths[keep], targets[keep]), (ids[held], lengths[held], targets[held])
        self.train_results = []
        for k, member, minutes in self.member_budgets(self.model.members, fill=cfg.ensemble is None):
            # Batches of texts of near-equal length: each is cut to its longest text, so little is padding.
            self.train(member, loss_fn, train, val, member=k, lengths=train[1], minutes=minutes,
                       seed=cfg.seed + k, decay_over_budget=minutes is not None,
                       layer_groups=encoder_groups(member.body) if encoder is not None else None, **fine_tune)
        if cfg.ensemble is None:  # the members the budget fitted are the ensemble (and the bundle's count)
            del self.model.members[len(self.train_results):]
            self.config = replace(cfg, ensemble=len(self.train_results))
        self.model.eval()
        scores = self.evaluate([texts[i] for i in held], labels[held].tolist())
        members = [{"steps": r.steps, "epochs_completed": r.epochs_completed, "stopped": r.stopped,
                    "best_val_loss": r.best_val_loss} for r in self.train_results]
        self.metrics = {**self.training_summary(), "members": members, "val_size": len(held),
                        **{f"val_{k}": v for k, v in scores.items() if k != "classes"}, **self._pretrain_metrics}

    def _encoder_options(self) -> dict[str, Any]:
        cfg = self.config
        return {"cell": cfg.cell, "embedding_size": cfg.embedding_size, "hidden_size": cfg.hidden_size,
                "num_layers": cfg.num_layers, "tokenizer": cfg.tokenizer, "bidirectional": cfg.bidirectional}

    def _pretrain(self, lm: Any, texts: list[str], val_texts: list[str]) -> Optional[nn.Module]:
        """The language model whose encoder seeds the classifier: ``lm``'s, fine-tuned on ``texts``
        for ``pretrain_minutes`` if set (a fresh one if there is no ``lm``); ``None`` for neither."""
        cfg = self.config
        if cfg.pretrain_minutes is None:
            return None if lm is None else lm.model
        model = (copy.deepcopy(lm.model) if lm is not None  # the user's language model stays as it was
                 else language_model_for(self._encoder_options(), self.tokenizer.vocab_size))
        torch.manual_seed(cfg.seed)
        config = cfg.train_config(minutes=cfg.pretrain_minutes, lr=cfg.pretrain_lr, max_steps=None, epochs=1000,
                                  decay_over_budget=True, schedule="slanted")
        result = train_language_model(model, texts, val_texts, self.tokenizer, config)
        self._pretrain_metrics["pretrain"] = {"steps": result.steps, "epochs_completed": result.epochs_completed,
                                              "stopped": result.stopped, "val_loss": result.best_val_loss,
                                              "texts": len(texts), "seconds": result.elapsed_s}
        return model

    def build_model(self) -> ClassifierEnsemble:
        return classifier_model(self.config, self.tokenizer.vocab_size, len(self.classes))

    def preprocessing(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer.to_dict(), "classes": self.classes}

    def restore(self, state: dict[str, Any]) -> None:
        self.tokenizer = tokenizer_from_dict(state["tokenizer"])
        self.classes = list(state["classes"])

    def predict_proba(self, texts: Sequence[str], batch_size: int = 256) -> pd.DataFrame:
        """Columns ``label`` and ``prob_<class>`` per class, one row per text, in input order."""
        probs = self.probabilities(texts, batch_size)
        frame = pd.DataFrame(probs, columns=[f"prob_{c}" for c in self.classes])
        frame.insert(0, "label", [self.classes[i] for i in probs.argmax(1)] if len(probs) else [])
        return frame

    def probabilities(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Class probabilities ``(N, C)``, one row per text, classes in ``self.classes`` order."""
        self.require_fitted()
        texts = _check_texts(texts, allow_empty=True)
        device = next(self.model.parameters()).device
        ids, lengths = pad_ids([self.tokenizer.encode(t) for t in texts], self.config.max_len)
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                n = lengths[start:start + batch_size]
                x = ids[start:start + batch_size, : int(n.max())].to(device)
                chunks.append(self.model(x, lengths=n.to(device)).softmax(-1).cpu())  # (b, C)
        return torch.cat(chunks).numpy() if chunks else np.zeros((0, len(self.classes)))

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The likeliest class of each text."""
        return self.predict_proba(texts)["label"].tolist()

    def predict_json(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._answer(self.probabilities(request["texts"]))

    def predict_many(self, requests: Sequence[Any]) -> list[Any]:
        """Every valid request's texts classified in one batch (see :meth:`Task.predict_many`)."""
        answers = [self.refusal(request) for request in requests]
        valid = [i for i, answer in enumerate(answers) if answer is None]
        try:
            probs = self.probabilities([text for i in valid for text in requests[i]["texts"]])
        except Exception:  # a failure is answered request by request, each on its own
            return super().predict_many(requests)
        start = 0
        for i in valid:
            count = len(requests[i]["texts"])
            answers[i], start = self._answer(probs[start:start + count]), start + count
        return answers

    def _answer(self, probs: np.ndarray) -> dict[str, Any]:
        return {"predictions": [{"label": self.classes[int(row.argmax())],
                                 "probabilities": dict(zip(self.classes, row.astype(float).tolist()))}
                                for row in probs]}

    def evaluate(self, texts: Sequence[str], labels: Sequence[Any], plot: Optional[Union[str, Path]] = None
                 ) -> dict[str, Any]:
        """Accuracy, macro-F1 and the confusion matrix (rows true, columns predicted; a PNG with ``plot``)."""
        predicted = self.predict(texts)
        truth = [str(label) for label in labels]
        unknown = sorted(set(truth) - set(self.classes))
        if unknown:
            raise DataError(f"labels {unknown} were not seen in training (classes: {self.classes})")
        y, y_hat = np.searchsorted(self.classes, truth), np.searchsorted(self.classes, predicted)
        matrix = metrics.confusion_matrix(y, y_hat, len(self.classes))
        if plot is not None:
            from ..plotting import plot_confusion_matrix

            plot_confusion_matrix(matrix, self.classes, plot)
        return {"accuracy": metrics.accuracy(y, y_hat), "macro_f1": metrics.macro_f1(y, y_hat, len(self.classes)),
                "confusion_matrix": matrix.tolist(), "classes": list(self.classes)}


def _check_texts(texts: Any, allow_empty: bool = False) -> list[str]:
    if isinstance(texts, str):
        raise RnnkitError("expected a list of texts, got a single string; wrap it: [text]")
    texts = [str(t) for t in texts]
    if not texts and not allow_empty:
        raise DataError("no texts to train on; pass a non-empty list")
    return texts


__all__ = ["AUTO_MEMBERS", "ClassifierEnsemble", "SequenceClassifier", "SequenceClassifierConfig", "classifier_model",
           "pad_ids", "stratified_split"]

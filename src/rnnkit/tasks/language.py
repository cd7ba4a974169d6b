"""Language modelling pieces any task may use: the corpus as streams, the next-token loss, and
transfer from a language model to another task (ULMFiT, Howard & Ruder 2018).

A text generator's bundle holds an embedding and a recurrent stack that have learnt to read
text; a classifier (and later a decoder) built with the same sizes can start from them
instead of from random weights. :func:`read_language_model` opens such a bundle (refusing
any other kind), :func:`check_encoder` says in one line what does not fit, and
:func:`seed_encoder` copies the weights. :func:`train_language_model` fine-tunes a language
model on a task's own texts, labels ignored: ULMFiT's second stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence, Union

import torch
from torch import Tensor, nn

from ..bundle import load, read_bundle
from ..data.tokenizers import EOS, Tokenizer
from ..errors import BundleError, DataError, RnnkitError
from ..topologies import ManyToMany
from ..training import TrainConfig, TrainResult, fit

#: the model_type of a text generator's bundle, the one kind of bundle that seeds an encoder
LANGUAGE_MODEL_TYPE = "text_generator"


def streams(ids: Tensor, rows: int) -> tuple[Tensor, Tensor]:
    """A token sequence ``(N,)`` as ``rows`` contiguous streams: inputs and next-token targets ``(rows, L)``."""
    length = (ids.numel() - 1) // rows
    if length < 1:
        raise DataError(f"{ids.numel()} tokens are too few for {rows} stream(s); give more text")
    x = ids[: rows * length].view(rows, length)  # (B, L): row b is the corpus from b*L on
    y = ids[1: rows * length + 1].view(rows, length)
    return x, y


def next_token_loss(model: nn.Module, batch: tuple[Tensor, ...], state: Any) -> tuple[Tensor, Any]:
    """Mean cross-entropy of the next token, the state carried in and out (the trainer's ``loss_fn``)."""
    x, y = batch
    logits, state = model(x, state)  # (B, T, V)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1)), state


def with_state_resets(reset_prob: float) -> Callable[..., tuple[Tensor, Any]]:
    """``next_token_loss`` where, in training, each stream's incoming state is zeroed with ``reset_prob``.

    A model that only ever continues warm states can fall into gibberish when generation
    starts it from zero; occasional resets teach it to start, at a small cost in bits per character.
    """
    def loss_fn(model: nn.Module, batch: tuple[Tensor, ...], state: Any) -> tuple[Tensor, Any]:
        if state is not None and model.training and reset_prob > 0:
            keep = (torch.rand(batch[0].size(0), device=batch[0].device) >= reset_prob).float()[None, :, None]
            state = tuple(s * keep for s in state) if isinstance(state, tuple) else state * keep  # (L, B, H)
        return next_token_loss(model, batch, state)

    return loss_fn


# --------------------------------------------------------------------------- transfer


def read_language_model(source: Union[str, Path, Any], option: str = "pretrained") -> Any:
    """A fitted text generator from a bundle path (or the task itself); any other bundle is
    refused in one line naming ``option`` (the argument or CLI option that gave it)."""
    if not isinstance(source, (str, Path)):
        if getattr(source, "model_type", None) != LANGUAGE_MODEL_TYPE or getattr(source, "model", None) is None:
            raise RnnkitError(f"{option} must be a fitted TextGenerator or the path of its bundle, "
                              f"got {type(source).__name__}")
        return source
    bundle = read_bundle(source)
    if bundle.model_type != LANGUAGE_MODEL_TYPE:
        raise BundleError(f"{option} {bundle.path} holds a {bundle.model_type!r} model, not a language model; "
                          "pass a bundle written by `rnnkit textgen train`")
    return load(bundle.path, LANGUAGE_MODEL_TYPE)


def encoder_sizes(lm: Any) -> dict[str, Any]:
    """The sizes of ``lm``'s encoder as classifier options: cell, embedding, hidden, layers, tokenizer,
    and the direction (a language model reads left to right)."""
    recurrent = lm.model.recurrent
    return {"cell": recurrent.cell_type, "embedding_size": recurrent.input_size, "hidden_size": recurrent.hidden_size,
            "num_layers": recurrent.num_layers, "tokenizer": lm.tokenizer.kind, "bidirectional": recurrent.bidirectional}


def check_encoder(wanted: dict[str, Any], lm: Any, option: str = "pretrained") -> None:
    """Refuse, in one line, an encoder whose options differ from the language model's sizes."""
    have = encoder_sizes(lm)
    differ = [f"{name} {wanted[name]!r} (the language model's: {have[name]!r})"
              for name in have if name in wanted and wanted[name] != have[name]]
    if differ:
        raise RnnkitError(f"the {option} language model does not fit this model: {'; '.join(differ)}; "
                          f"leave those options unset to take the language model's")


def seed_encoder(target: nn.Module, lm: Any) -> None:
    """Copy ``lm``'s embedding and recurrent weights into ``target`` (a topology with both),
    whose sizes must match (:func:`check_encoder`)."""
    source = lm.model if hasattr(lm, "model") else lm
    target.embedding.load_state_dict(source.embedding.state_dict())
    target.recurrent.load_state_dict(source.recurrent.state_dict())


def encoder_groups(topology: nn.Module) -> list[list[nn.Parameter]]:
    """A topology's parameters as ULMFiT's layer groups, bottom to top: the embedding with the
    first recurrent layer, then each further layer (both directions together); the trainer
    adds whatever is left (pooling, head) as the top group."""
    recurrent, groups = topology.recurrent, []
    per_layer = recurrent.num_directions
    for layer in range(recurrent.num_layers):
        cells = recurrent.cells[layer * per_layer: (layer + 1) * per_layer]
        groups.append([p for cell in cells for p in cell.parameters()])
    groups[0] = list(topology.embedding.parameters()) + groups[0]
    return groups + [[]]  # the top group: filled by the trainer with the rest


def language_model_for(sizes: dict[str, Any], vocab_size: int, dropout: float = 0.0) -> ManyToMany:
    """A fresh language model with an encoder of ``sizes`` (:func:`encoder_sizes`); output tied
    to the embedding when their widths allow, as a text generator ties them."""
    tie = sizes["embedding_size"] == sizes["hidden_size"]
    return ManyToMany(sizes["embedding_size"], vocab_size, sizes["hidden_size"], cell=sizes["cell"],
                      num_layers=sizes["num_layers"], dropout=dropout, vocab_size=vocab_size, tie_weights=tie)


def corpus_ids(texts: Sequence[str], tokenizer: Tokenizer) -> Tensor:
    """Texts as one token sequence ``(N,)``, each text followed by ``<eos>``: the language model
    learns where a text ends, and the state carries from one text into the next as in a corpus."""
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer.encode(text))
        ids.append(EOS)
    return torch.tensor(ids, dtype=torch.long)


def train_language_model(model: ManyToMany, texts: Sequence[str], val_texts: Sequence[str], tokenizer: Tokenizer,
                         config: TrainConfig, seq_len: int = 64) -> TrainResult:
    """Fine-tune ``model`` in place to predict the next token of ``texts`` (labels play no part).

    The texts are read as ``config.batch_size`` contiguous streams cut into ``seq_len`` pieces
    with the state carried (``stateful``), as a text generator reads its corpus; ``val_texts``
    pick the best weights. ``config`` bounds the run (its minutes, steps or epochs).
    """
    ids, held = corpus_ids(texts, tokenizer), corpus_ids(val_texts, tokenizer)
    rows = max(1, min(config.batch_size, (ids.numel() - 1) // seq_len))  # few texts: fewer streams
    val = streams(held, rows) if held.numel() > rows else None  # stateful: the same rows as training
    config = TrainConfig.from_dict({**config.to_dict(), "batch_size": rows, "tbptt": seq_len, "stateful": True,
                                    "patience": None})
    return fit(model, next_token_loss, streams(ids, rows), val, config)


__all__ = ["LANGUAGE_MODEL_TYPE", "check_encoder", "corpus_ids", "encoder_groups", "encoder_sizes",
           "language_model_for", "next_token_loss", "read_language_model", "seed_encoder", "streams",
           "train_language_model", "with_state_resets"]

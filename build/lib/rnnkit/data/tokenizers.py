"""Text to token ids and back: characters, words, or subword BPE; saved as JSON in a bundle.

Every tokenizer reserves the same special tokens at the same ids, so models and
decoders can rely on them: ``<pad>`` 0, ``<unk>`` 1, ``<bos>`` 2, ``<eos>`` 3.
Unknown characters or words map to ``<unk>``; ``decode`` drops the specials.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Iterable, Optional, Sequence

from ..errors import DataError

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")


class Tokenizer:
    """The shared interface: ``encode``, ``decode``, ``vocab_size``, ``to_dict`` / ``from_dict``."""

    kind = "base"

    def __init__(self, tokens: Sequence[str]) -> None:
        self.tokens = list(tokens)  # id -> token, specials first
        self.ids = {token: index for index, token in enumerate(self.tokens)}

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        return [self.ids.get(piece, UNK) for piece in self.split(text)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.join([self.tokens[i] for i in ids if i >= len(SPECIALS)])

    def unknown(self, text: str) -> list[str]:
        """The pieces of ``text`` this vocabulary does not know (they encode as ``<unk>``)."""
        return sorted({piece for piece in self.split(text) if piece not in self.ids})

    def split(self, text: str) -> list[str]:
        raise NotImplementedError

    def join(self, pieces: list[str]) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "tokens": self.tokens}


class CharTokenizer(Tokenizer):
    """One token per character (char-rnn): any text, a small vocabulary, long sequences."""

    kind = "char"

    @classmethod
    def fit(cls, texts: Iterable[str], min_count: int = 1) -> "CharTokenizer":
        counts = Counter(ch for text in texts for ch in text)
        return cls([*SPECIALS, *sorted(ch for ch, n in counts.items() if n >= min_count)])

    def split(self, text: str) -> list[str]:
        return list(text)

    def join(self, pieces: list[str]) -> str:
        return "".join(pieces)


class WordTokenizer(Tokenizer):
    """Words and punctuation marks, optionally lower-cased, the rarest dropped to ``<unk>``."""

    kind = "word"
    pattern = re.compile(r"\w+|[^\w\s]")

    def __init__(self, tokens: Sequence[str], lowercase: bool = True) -> None:
        super().__init__(tokens)
        self.lowercase = lowercase

    @classmethod
    def fit(cls, texts: Iterable[str], max_size: int = 20000, min_count: int = 1,
            lowercase: bool = True) -> "WordTokenizer":
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(cls.pattern.findall(text.lower() if lowercase else text))
        # Most frequent first; ties alphabetical so the vocabulary is reproducible.
        kept = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls([*SPECIALS, *kept[: max_size - len(SPECIALS)]], lowercase)

    def split(self, text: str) -> list[str]:
        return self.pattern.findall(text.lower() if self.lowercase else text)

    def join(self, pieces: list[str]) -> str:
        text = " ".join(pieces)
        return re.sub(r" ([^\w\s])", r"\1", text)  # no space before punctuation

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "lowercase": self.lowercase}


class BPETokenizer(Tokenizer):
    """Byte-pair-encoding subwords, trained and run by Hugging Face's ``tokenizers`` library."""

    kind = "bpe"

    def __init__(self, model_json: str) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self.model_json = model_json
        self.hf = HFTokenizer.from_str(model_json)
        vocab = self.hf.get_vocab()
        super().__init__(sorted(vocab, key=vocab.get))

    @classmethod
    def fit(cls, texts: Iterable[str], vocab_size: int = 4000) -> "BPETokenizer":
        from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

        hf = HFTokenizer(models.BPE(unk_token="<unk>"))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        hf.train_from_iterator(texts, trainer)
        return cls(hf.to_str())

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode([i for i in ids if i >= len(SPECIALS)])

    def split(self, text: str) -> list[str]:
        return self.hf.encode(text, add_special_tokens=False).tokens

    def unknown(self, text: str) -> list[str]:
        return []  # byte-level BPE can spell any text

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model_json}


def build_tokenizer(kind: str, texts: Sequence[str], **options: Any) -> Tokenizer:
    """Fit a tokenizer of ``kind`` (``"char"``, ``"word"`` or ``"bpe"``) on ``texts``."""
    if kind not in KINDS:
        raise DataError(f"unknown tokenizer {kind!r}; choose one of {', '.join(KINDS)}")
    if not any(text.strip() for text in texts):
        raise DataError("no text to build a vocabulary from: the input is empty or blank")
    return KINDS[kind].fit(texts, **options)


def tokenizer_from_dict(data: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer saved with ``to_dict`` (for instance from a bundle's preprocessing.json)."""
    kind: Optional[str] = data.get("kind")
    if kind == "char":
        return CharTokenizer(data["tokens"])
    if kind == "word":
        return WordTokenizer(data["tokens"], data.get("lowercase", True))
    if kind == "bpe":
        return BPETokenizer(data["model"])
    raise DataError(f"unknown tokenizer kind {kind!r} in saved preprocessing; expected char, word or bpe")


KINDS: dict[str, type[Tokenizer]] = {"char": CharTokenizer, "word": WordTokenizer, "bpe": BPETokenizer}

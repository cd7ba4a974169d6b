"""Translation: an encoder-decoder with attention over (source, target) sentence pairs.

A thin estimator (``fit`` / ``translate`` / ``evaluate`` / ``save``) over the shared
encoder-decoder task (:mod:`.encoder_decoder`: the :class:`~rnnkit.seq2seq.Seq2Seq` topology,
tokenizers, length handling, beam search), trained by the shared trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, Union

from .encoder_decoder import Pair, TextEncoderDecoder, TextEncoderDecoderConfig

MODEL_TYPE = "translator"


@dataclass(frozen=True, kw_only=True)
class TranslatorConfig(TextEncoderDecoderConfig):
    """Everything that defines a translator; saved in its bundle as ``config.json``."""

    KIND = "translator"


class Translator(TextEncoderDecoder):
    """Sentence-to-sentence translation with a recurrent encoder-decoder.

    Example::

        tr = Translator(attention="luong").fit(pairs)      # [(source, target), ...]
        tr.translate("In the beginning", beam=5)
        tr.evaluate(test_pairs, beam=5)                   # {"bleu": ..., "chrf": ..., "exact": ...}
        tr.save("en-es.rnnkit"); rnnkit.load("en-es.rnnkit")
    """

    name = "translate"
    model_type = MODEL_TYPE
    config_class = TranslatorConfig
    request_schema = {"type": "object", "required": ["texts"], "additionalProperties": False, "properties": {
        "texts": {"type": "array", "items": {"type": "string"}, "minItems": 1, "description": "sentences"},
        "beam": {"type": "integer", "minimum": 1, "description": "beam width; 1 = greedy (default)"},
        "attention": {"type": "boolean", "description": "also return each attention matrix (T x S)"}}}
    response_schema = {"type": "object", "properties": {"translations": {"type": "array", "items": {
        "type": "object", "properties": {"translation": {"type": "string"},
                                         "source_tokens": {"type": "array"}, "target_tokens": {"type": "array"},
                                         "attention": {"type": "array"}}}}}}
    config: TranslatorConfig
    input_name = "sentence to translate"

    # ------------------------------------------------------------------ translation

    def translate(self, text: Union[str, Sequence[str]], *, beam: int = 1,
                  batch_size: int = 64) -> Union[str, list[str]]:
        """Translate one sentence (returns a string) or a list of them (returns a list)."""
        single = isinstance(text, str)
        results = self.translate_detailed([text] if single else list(text), beam=beam, batch_size=batch_size)
        outputs = [r["translation"] for r in results]
        return outputs[0] if single else outputs

    def translate_detailed(self, texts: Sequence[str], *, beam: int = 1, batch_size: int = 64) -> list[dict[str, Any]]:
        """Translations with their pieces and attention: ``translation``, ``source_tokens``,
        ``target_tokens``, ``attention`` (a ``(T, S)`` tensor; zeros without attention)."""
        details = self.decode_detailed(texts, beam=beam, batch_size=batch_size)
        return [{"translation": d.pop("output"), **d} for d in details]

    def evaluate(self, pairs: Sequence[Pair], *, beam: int = 1) -> dict[str, float]:
        """Corpus BLEU and chrF (sacrebleu) and exact-match rate of translations against references."""
        return self.score(pairs, beam=beam)

    def predict_json(self, request: dict[str, Any]) -> dict[str, Any]:
        details = self.translate_detailed(request["texts"], beam=request.get("beam", 1))
        keep = ("translation", "source_tokens", "target_tokens") + (("attention",) if request.get("attention") else ())
        return {"translations": [{k: d[k].tolist() if k == "attention" else d[k] for k in keep} for d in details]}


__all__ = ["Translator", "TranslatorConfig"]

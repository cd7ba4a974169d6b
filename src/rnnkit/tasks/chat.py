"""A chatbot: the encoder-decoder of translation, reading the conversation so far, writing the reply.

The source side is the last ``context_turns`` turns joined by ``TURN`` (:mod:`rnnkit.data.dialog`),
so the reply to "and then?" depends on what came before it; the target side is the next turn.
One vocabulary serves both sides (one language), and everything else (tokenizers, attention,
length-grouped batches, beam search) is :class:`~.encoder_decoder.TextEncoderDecoder`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from ..data.dialog import Conversation, context_of, dialog_pairs
from ..errors import DataError
from .encoder_decoder import TextEncoderDecoder, TextEncoderDecoderConfig

MODEL_TYPE = "chatbot"


@dataclass(frozen=True, kw_only=True)
class ChatbotConfig(TextEncoderDecoderConfig):
    """Everything that defines a chatbot; saved in its bundle as ``config.json``."""

    KIND = "chatbot"

    context_turns: int = 2  # turns the model reads: the message and the turn before it
    tokenizer: str = "word"
    vocab_size: int = 3000
    joint_vocab: bool = True  # one language: the words it reads are the words it writes
    max_length: int = 96  # tokens per side; a reply longer than this is left out of training
    minutes: Optional[float] = 5.0
    val_fraction: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_positive("context_turns")


class Chatbot(TextEncoderDecoder):
    """Replies to a message in the context of the turns before it.

    Example::

        conversations = rnnkit.data.dialog.load_chatterbot()   # [[turn, turn, ...], ...]
        bot = Chatbot(minutes=5).fit(conversations)
        bot.reply("hello")
        bot.reply("and then?", history=["tell me a story", "once upon a time there was a robot"])
        bot.evaluate(test_conversations)                       # {"bleu": ..., "chrf": ..., "exact": ...}
    """

    name = "chat"
    model_type = MODEL_TYPE
    config_class = ChatbotConfig
    request_schema = {"type": "object", "required": ["message"], "additionalProperties": False, "properties": {
        "message": {"type": "string", "description": "what the user says now"},
        "history": {"type": "array", "items": {"type": "string"},
                    "description": "the conversation before it, oldest first (user and bot turns alternating)"},
        "beam": {"type": "integer", "minimum": 1, "description": "beam width; 1 = greedy (default)"}}}
    response_schema = {"type": "object", "properties": {"reply": {"type": "string"},
                                                        "context": {"type": "string",
                                                                    "description": "the turns the model read"}}}
    config: ChatbotConfig
    input_name = "message"

    def _fit(self, conversations: Sequence[Conversation],
             val_conversations: Optional[Sequence[Conversation]] = None) -> None:
        """Train on conversations (lists of turns); ``val_conversations`` (default: a held-out slice) stop early."""
        k = self.config.context_turns
        super()._fit(dialog_pairs(_checked(conversations, "conversations"), k),
                     None if val_conversations is None else dialog_pairs(_checked(val_conversations,
                                                                                  "val_conversations"), k))

    def reply(self, message: str, history: Sequence[str] = (), *, beam: int = 1) -> str:
        """The reply to ``message`` after the turns in ``history`` (oldest first)."""
        return self.reply_detailed(message, history, beam=beam)["reply"]

    def reply_detailed(self, message: str, history: Sequence[str] = (), *, beam: int = 1) -> dict[str, Any]:
        """The reply and the context it answered: the last turns that fit in ``max_length`` tokens."""
        self.require_fitted()
        if not isinstance(message, str) or not message.strip():
            raise DataError("the message is empty: say something")
        turns = [" ".join(turn.split()) for turn in [*history, message] if turn.strip()]
        context = turns[-1]
        for k in range(min(self.config.context_turns, len(turns)), 0, -1):  # drop old turns until it fits
            context = context_of(turns, k)
            if len(self.source_tokenizer.encode(context)) <= self.config.max_length:
                break
        return {"reply": self.decode_detailed([context], beam=beam)[0]["output"], "context": context}

    def evaluate(self, conversations: Sequence[Conversation], *, beam: int = 1) -> dict[str, float]:
        """BLEU, chrF and exact match of every reply in ``conversations``, given the turns before it."""
        return self.score(dialog_pairs(_checked(conversations, "conversations"), self.config.context_turns),
                          beam=beam)

    def predict_json(self, request: dict[str, Any]) -> dict[str, Any]:
        return self.reply_detailed(request["message"], request.get("history", []), beam=request.get("beam", 1))


def _checked(conversations: Sequence[Conversation], name: str) -> list[Conversation]:
    conversations = list(conversations)
    for number, turns in enumerate(conversations):
        if (not isinstance(turns, (list, tuple)) or len(turns) < 2
                or not all(isinstance(turn, str) and turn.strip() for turn in turns)):
            raise DataError(f"{name}[{number}] must be a list of two or more non-empty turns, got {turns!r}"[:300])
    if not conversations:
        raise DataError(f"{name} is empty: give conversations, each a list of two or more turns")
    return conversations


__all__ = ["Chatbot", "ChatbotConfig"]

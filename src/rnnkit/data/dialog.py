"""Conversations for the chatbot: chatterbot-corpus's English dialogues (offline, from pip), or a file.

A conversation is a list of turns, each one answering the turn before it. The chatbot learns
``(context, reply)`` pairs: for every turn after the first, the reply is that turn and the context
the ``context_turns`` turns before it, joined by ``TURN``, so the model sees who said what last.

A conversation file is plain UTF-8 text, one turn per line, a blank line between conversations.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Sequence

import torch

from ..errors import DataError

#: joins the turns of a context: a token of its own for the word tokenizer, short for BPE
TURN = " | "
Conversation = list[str]


def load_chatterbot() -> list[Conversation]:
    """chatterbot-corpus's English conversations (21 topics, from greetings to trivia), in file order."""
    import yaml  # PyYAML: the corpus's own format

    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the chatbot corpus needs the package 'chatterbot-corpus'; "
                        "install it with `pip install chatterbot-corpus==1.3.3`")
    root = Path(list(spec.submodule_search_locations)[0]) / "data" / "english"
    conversations = []
    for path in sorted(root.glob("*.yml")):
        for turns in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations", []):
            turns = [" ".join(str(turn).split()) for turn in turns if turn is not None]
            if len([t for t in turns if t]) >= 2 and all(turns):
                conversations.append(turns)
    if not conversations:
        raise DataError(f"no conversations in {root}; reinstall with `pip install chatterbot-corpus==1.3.3`")
    return conversations


def read_conversations(path: Path) -> list[Conversation]:
    """Conversations from a text file: one turn per line, a blank line between conversations."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} is not a file; give a UTF-8 text file: one turn per line, "
                        f"a blank line between conversations")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    blocks = [[" ".join(line.split()) for line in block.splitlines() if line.strip()]
              for block in text.replace("\r\n", "\n").split("\n\n")]
    conversations = [turns for turns in blocks if len(turns) >= 2]
    if not conversations:
        raise DataError(f"{path} holds no conversation of two or more turns; write one turn per line, "
                        f"a blank line between conversations")
    return conversations


def context_of(turns: Sequence[str], context_turns: int) -> str:
    """The last ``context_turns`` turns joined by ``TURN``: what the model reads to answer."""
    return TURN.join(turns[-context_turns:])


def dialog_pairs(conversations: Sequence[Conversation], context_turns: int) -> list[tuple[str, str]]:
    """``(context, reply)`` for every turn after the first of every conversation."""
    return [(context_of(turns[:i], context_turns), turns[i]) for turns in conversations for i in range(1, len(turns))]


def split_conversations(conversations: Sequence[Conversation], seed: int = 0, held_out: float = 0.1
                        ) -> tuple[list[Conversation], list[Conversation], list[Conversation]]:
    """Conversations into train, validation and test (``held_out`` of the openings each), shuffled by
    ``seed``. Conversations that open alike (case and punctuation aside) stay in one part: the corpus
    repeats questions across its topics, and a test question seen in training would measure recall."""
    groups: dict[str, list[Conversation]] = {}
    for turns in conversations:
        groups.setdefault(re.sub(r"[^a-z0-9 ]", "", turns[0].lower()).strip(), []).append(turns)
    keys = list(groups)
    order = torch.randperm(len(keys), generator=torch.Generator().manual_seed(seed)).tolist()
    cut = max(1, int(len(keys) * held_out))
    pick = lambda part: [turns for i in part for turns in groups[keys[i]]]  # noqa: E731
    return pick(order[2 * cut:]), pick(order[:cut]), pick(order[cut:2 * cut])


__all__ = ["TURN", "Conversation", "context_of", "dialog_pairs", "load_chatterbot", "read_conversations",
           "split_conversations"]

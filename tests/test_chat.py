"""The chatbot: conversations to (context, reply) pairs, a model that answers by its context, its bundle,
its requests and its commands."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import rnnkit
from rnnkit.cli import app
from rnnkit.data.dialog import TURN, dialog_pairs, load_chatterbot, read_conversations, split_conversations
from rnnkit.errors import DataError
from rnnkit.tasks.chat import Chatbot, ChatbotConfig
from threads import one_thread

#: the same message, "and then?", wants another reply after cats than after dogs
DIALOGS = [["tell me about cats", "cats purr", "and then?", "they sleep all day"],
           ["tell me about dogs", "dogs bark", "and then?", "they run after balls"],
           ["hello", "hi there"],
           ["how are you?", "fine thanks"]]


def _tiny(**options) -> Chatbot:
    settings = dict(hidden_size=64, embedding_size=32, minutes=None, max_steps=300, batch_size=8, dropout=0.0,
                    label_smoothing=0.0, patience=None, progress=False, seed=0)
    return Chatbot(ChatbotConfig(**{**settings, **options}))


@pytest.fixture(scope="module")
def bot() -> Chatbot:
    with one_thread():
        return _tiny().fit(DIALOGS * 6, DIALOGS)


def test_pairs_put_the_last_turns_before_each_reply() -> None:
    pairs = dialog_pairs([["a", "b", "c", "d"]], context_turns=2)
    assert pairs == [("a", "b"), (f"a{TURN}b", "c"), (f"b{TURN}c", "d")]
    assert dialog_pairs([["a", "b", "c"]], context_turns=1)[-1] == ("b", "c")


def test_conversation_files_split_at_blank_lines_and_bad_ones_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "talk.txt"
    path.write_text("hi\nhello  there\n\n\nlonely line\n\nhow are you?\nfine\nand you?\n", encoding="utf-8")
    assert read_conversations(path) == [["hi", "hello there"], ["how are you?", "fine", "and you?"]]
    path.write_text("one turn only\n", encoding="utf-8")
    with pytest.raises(DataError, match="no conversation of two or more turns"):
        read_conversations(path)
    with pytest.raises(DataError, match="is not a file"):
        read_conversations(tmp_path / "missing.txt")


def test_the_chatterbot_corpus_splits_into_disjoint_conversations() -> None:
    conversations = load_chatterbot()
    assert len(conversations) > 1000 and all(len(turns) >= 2 for turns in conversations)
    train, val, test = split_conversations(conversations, seed=0)
    assert len(train) + len(val) + len(test) == len(conversations)
    assert not {id(c) for c in val} & {id(c) for c in test} and not {id(c) for c in train} & {id(c) for c in test}


def test_the_reply_depends_on_the_turns_before_the_message(bot: Chatbot) -> None:
    assert bot.reply("and then?", ["tell me about cats", "cats purr"]) == "they sleep all day"
    assert bot.reply("and then?", ["tell me about dogs", "dogs bark"]) == "they run after balls"
    assert bot.reply("hello") == "hi there"
    assert bot.evaluate(DIALOGS)["exact"] == 1.0
    assert _tiny(max_steps=1).fit(DIALOGS).evaluate(DIALOGS)["exact"] < 0.5  # untrained: it has to learn them


def test_a_long_history_is_cut_to_the_turns_that_fit(bot: Chatbot) -> None:
    detail = bot.reply_detailed("and then?", ["hello " * 200, "tell me about dogs", "dogs bark"])
    assert detail["context"] == f"dogs bark{TURN}and then?"  # context_turns=2: the message and one turn


def test_bundle_round_trip_and_requests(bot: Chatbot, tmp_path: Path) -> None:
    loaded = rnnkit.load(bot.save(tmp_path / "bot.rnnkit"))
    assert isinstance(loaded, Chatbot)
    assert loaded.reply("and then?", ["tell me about cats", "cats purr"]) == "they sleep all day"
    assert loaded.predict_checked({"message": "hello"})["reply"] == "hi there"
    with pytest.raises(DataError, match="message"):
        loaded.predict_checked({"history": ["hello"]})
    with pytest.raises(DataError, match="empty"):
        loaded.reply("   ")


def test_bad_conversations_are_refused() -> None:
    with pytest.raises(DataError, match="two or more non-empty turns"):
        _tiny().fit([["only one"]])
    with pytest.raises(DataError, match="is empty"):
        _tiny().fit([])


def test_the_commands_train_say_and_talk(tmp_path: Path) -> None:
    corpus = tmp_path / "talk.txt"
    corpus.write_text("\n\n".join("\n".join(turns) for turns in DIALOGS * 6), encoding="utf-8")
    runner = CliRunner()
    done = runner.invoke(app, ["chat", "train", str(corpus), "--out", str(tmp_path / "bot"), "--max-steps", "5",
                               "--hidden-size", "32", "--no-progress"])
    assert done.exit_code == 0, done.output
    said = runner.invoke(app, ["chat", "say", str(tmp_path / "bot"), "hello", "--history", "hi"])
    assert said.exit_code == 0 and len(said.output.splitlines()) == 1, said.output
    talked = runner.invoke(app, ["chat", "talk", str(tmp_path / "bot")], input="hello\n\nhow are you?\n")
    assert talked.exit_code == 0 and len(talked.output.splitlines()) == 2, talked.output
    refused = runner.invoke(app, ["chat", "say", str(tmp_path / "bot"), " "])
    assert refused.exit_code != 0 and "empty" in refused.output


def test_conversations_that_open_alike_stay_in_one_split() -> None:
    conversations = [[f"Question {i}?", "answer"] for i in range(40)] + [["question 7", "another answer"]]
    parts = split_conversations(conversations, seed=1)
    holding = [n for n, part in enumerate(parts) if any(turns[0].lower().startswith("question 7") for turns in part)]
    assert len(holding) == 1 and sum(map(len, parts)) == len(conversations)

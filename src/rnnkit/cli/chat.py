"""`rnnkit chat train | say | talk`: a chatbot from conversations, answering in context."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ..data.dialog import load_chatterbot, read_conversations, split_conversations
from ..tasks.chat import Chatbot, ChatbotConfig
from . import create_app
from .options import CELL_HELP, BundleOut, TrainingOptions, training_options

app = create_app("A chatbot: an encoder-decoder LSTM that reads the last turns of a conversation and replies.")
console = Console(stderr=True)
Bundle = Annotated[Path, typer.Argument(help="A chatbot bundle.", show_default=False)]
Beam = Annotated[int, typer.Option(help="Beam size; 1 is greedy decoding.")]


@app.command()
@training_options(minutes=5.0)
def train(
    corpus: Annotated[str, typer.Argument(
        help="`chatterbot` (chatterbot-corpus's English conversations), or a UTF-8 file: one turn per line, "
             "a blank line between conversations.", show_default=False)],
    out: BundleOut,
    training: TrainingOptions,
    context_turns: Annotated[int, typer.Option(help="Turns the model reads: the message and those before it.")] = 2,
    cell: Annotated[str, typer.Option(help=CELL_HELP)] = "lstm",
    hidden_size: Annotated[int, typer.Option(help="Decoder width; the encoder gets half per direction.")] = 256,
    tokenizer: Annotated[str, typer.Option(help="word, bpe or char.")] = "word",
    vocab_size: Annotated[int, typer.Option(help="Vocabulary size (word, bpe).")] = 3000,
) -> None:
    """Train a chatbot on CORPUS (a tenth of its conversations held out to stop early) and write a bundle."""
    conversations = load_chatterbot() if corpus == "chatterbot" else read_conversations(Path(corpus))
    train_part, val_part, more = split_conversations(conversations, seed=training.seed)  # no test split here
    config = ChatbotConfig(context_turns=context_turns, cell=cell, hidden_size=hidden_size, tokenizer=tokenizer,
                           vocab_size=vocab_size, **training.config_fields())
    bot = Chatbot(config).fit(train_part + more, val_part, **training.fit_options())
    path = bot.save(out)
    result = bot.train_results[-1]
    console.print(f"trained on {len(conversations) - len(val_part)} conversations, {result.steps} steps "
                  f"({result.stopped}); bundle: {path}")


@app.command()
def say(
    bundle: Bundle,
    message: Annotated[str, typer.Argument(help="What you say.", show_default=False)],
    history: Annotated[Optional[list[str]], typer.Option(
        help="An earlier turn, oldest first; repeat the option for several.")] = None,
    beam: Beam = 1,
) -> None:
    """Print the bot's reply to MESSAGE (after the --history turns)."""
    typer.echo(Chatbot.load(bundle).reply(message, history or [], beam=beam))


@app.command()
def talk(bundle: Bundle, beam: Beam = 1) -> None:
    """Converse: each line of standard input is your turn, each line printed the bot's; it keeps the context."""
    bot, turns = Chatbot.load(bundle), []
    for line in typer.get_text_stream("stdin"):
        if not line.strip():
            continue
        reply = bot.reply(line, turns, beam=beam)
        turns += [line.strip(), reply]
        typer.echo(reply)

"""Helpers of the server tests: tiny bundles of three tasks, and a real server on a loopback port."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import torch
import uvicorn

from rnnkit import SequenceClassifier, TextGenerator
from rnnkit.tasks.translate import Translator
from test_text import CORPUS, TINY_CLF, TINY_LM, toy_reviews
from test_translate import _toy_pairs


def train_lm(directory: Path) -> Path:
    """A character LSTM that learns CORPUS in a few seconds, saved as ``directory/lm``."""
    torch.manual_seed(0)
    return TextGenerator(**TINY_LM).fit(CORPUS).save(directory / "lm")


def tiny_bundles(directory: Path) -> dict[str, Path]:
    """Bundles of a classifier, a language model and a translator, each trained in seconds."""
    torch.manual_seed(0)
    clf = SequenceClassifier(**TINY_CLF).fit(*toy_reviews())
    torch.manual_seed(0)
    tr = Translator(tokenizer="char", hidden_size=16, embedding_size=8, epochs=2, minutes=None, patience=None,
                    progress=False, max_length=20).fit(_toy_pairs())
    return {"clf": clf.save(directory / "clf"), "lm": train_lm(directory), "tr": tr.save(directory / "tr")}


@contextlib.contextmanager
def running(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()

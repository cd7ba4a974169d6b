"""Recurrent cells: one file per family, each with its reference equations and fused path."""

from .base import RecurrentCell
from .gru import GRU
from .lstm import LSTM
from .rnn import RNN

CELLS: dict[str, type[RecurrentCell]] = {"rnn": RNN, "lstm": LSTM, "gru": GRU}

__all__ = ["CELLS", "GRU", "LSTM", "RNN", "RecurrentCell"]

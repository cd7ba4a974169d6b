"""Recurrent cells: one file per family, each with its reference equations and fused path."""

from .base import RecurrentCell
from .gru import GRU
from .lstm import LSTM
from .minimal import MinGRU, MinLSTM
from .rnn import RNN

CELLS: dict[str, type[RecurrentCell]] = {
    "rnn": RNN, "lstm": LSTM, "gru": GRU, "mingru": MinGRU, "minlstm": MinLSTM,
}

__all__ = ["CELLS", "GRU", "LSTM", "MinGRU", "MinLSTM", "RNN", "RecurrentCell"]

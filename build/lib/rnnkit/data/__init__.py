"""Data: real datasets that install offline, tokenizers and windowing."""

from .datasets import DATASETS, list_datasets, load_dataset
from .text import TEXT_DATASETS, load_text_dataset

__all__ = ["DATASETS", "TEXT_DATASETS", "list_datasets", "load_dataset", "load_text_dataset"]

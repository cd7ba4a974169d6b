"""Data: real datasets that install offline, and (later) tokenizers and windowing."""

from .datasets import DATASETS, list_datasets, load_dataset

__all__ = ["DATASETS", "list_datasets", "load_dataset"]

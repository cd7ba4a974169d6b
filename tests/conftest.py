"""Suite-wide settings: one thread (small tensors gain nothing from two, and parallel CI jobs
fight over the cores), and a fixed seed per test."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread_and_seed():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)

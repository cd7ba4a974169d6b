"""Suite-wide settings: one thread (small tensors gain nothing from two, and OpenMP spin-waits
on an oversubscribed CI box turned 0.01 s tests into 1.7 s ones), and a fixed seed per test."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread_and_seed():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)

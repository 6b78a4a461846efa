"""Shared test set-up."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    """One torch thread per test: predictable run times on the shared 2-core machines."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

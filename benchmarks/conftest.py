"""Fixtures shared by the pytest-benchmark files in this folder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Time on one CPU thread: multi-threaded small ops are dominated by thread wake-ups
    on small or shared machines, which makes the numbers unrepeatable. Restores PyTorch's
    thread count after each module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

"""Policy tests run torch on one thread: six agents share two cores, and two spinning threads per process
made generation ~50x slower than one thread under that load."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)

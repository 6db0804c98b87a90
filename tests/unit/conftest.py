"""Fixtures of the unit tests: a tiny, seeded random BERT and one torch thread."""

from __future__ import annotations

import pytest
import torch

from learner.encoder import tiny_bert


@pytest.fixture(scope="module")
def base():
    """A tiny random BERT (no download), the same for every module: fast and deterministic."""
    return tiny_bert(seed=0)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models are fastest on one thread, and 2 threads stall badly when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

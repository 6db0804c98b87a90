"""Fixtures of the unit tests: a tiny, seeded random BERT and one torch thread."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from learner.encoder import tiny_bert

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def base():
    """A tiny random BERT (no download), the same for every module: fast and deterministic."""
    return tiny_bert(seed=0)


@pytest.fixture(scope="module")
def retail():
    """The catalogue and the first 12,000 interactions of the bundled data, as the replay produces them."""
    from ops.retail_events import read_table, retail_events

    events = retail_events(read_table(REPO / "data" / "online_retail.parquet"), limit=12_000)
    return events.items, events.interactions


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models are fastest on one thread, and 2 threads stall badly when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def worker(base):
    """A serving worker with an in-memory publisher, serving version 0 (see ``test_serving_app.make_worker``)."""
    from tests.unit.test_serving_app import make_worker

    return make_worker(base)


@pytest.fixture(scope="module")
def client(worker):
    """A FastAPI test client of ``worker``'s app."""
    from fastapi.testclient import TestClient

    from serving.app import create_app

    with TestClient(create_app(worker)) as client:
        yield client

"""The learner fed the interaction partitions interleaved (as the worker's ingest forwards them) learns what it
learns from the same events in order: the same baskets held out, in the same order, the same weights.

Partitions are interleaved record by record, as Faust delivers them: over 6,000 events of the bundled data the
partitions drift up to three days of event time apart, enough to split baskets when baskets are not closed per
partition.
"""

from __future__ import annotations

import zlib
from itertools import zip_longest

import pytest
import torch

from learner.service import LearnerService
from ops.retail_events import read_table, retail_events
from tests.unit.test_learner_service import DATA, KEY, settings

PARTITIONS = 4


@pytest.fixture(scope="module")
def retail():
    events = retail_events(read_table(DATA), limit=12_000)
    return events.items, events.interactions


def partition_of(user_id: str) -> int:
    return zlib.crc32(user_id.encode()) % PARTITIONS


def round_robin(interactions: list) -> tuple[list, list[int]]:
    """The interactions interleaved record by record across partitions, and each one's partition."""
    parts = [[e for e in interactions if partition_of(e.user_id) == p] for p in range(PARTITIONS)]
    interleaved = [e for group in zip_longest(*parts) for e in group if e is not None]
    return interleaved, [partition_of(e.user_id) for e in interleaved]


def feed(service: LearnerService, records: list, sources: list | None, size: int) -> None:
    for i in range(0, len(records), size):
        for update in service.process(records[i:i + size], None if sources is None else sources[i:i + size]).updates:
            service.mark_published(update.version)


def test_interleaved_partitions_with_sources_learn_what_the_ordered_stream_teaches(base, retail, tmp_path):
    items, interactions = retail
    events = interactions[:6000]
    ordered = LearnerService(settings(), tmp_path / "ordered", key=KEY, base=base)
    ordered.process(items)
    feed(ordered, events, [0] * len(events), 700)  # one partition: in event-time order
    interleaved, sources = round_robin(events)
    assert interleaved != events
    live = LearnerService(settings(), tmp_path / "live", key=KEY, base=base)
    live.process(items)
    feed(live, interleaved, sources, 450)
    for service in (ordered, live):  # the stream ends: a final watermark closes what the last partition left open
        service.advance_to(events[-1].ts + 1)

    assert live.status.examples == ordered.status.examples > 0
    assert [h.user_id for h in live.ranker.window] == [h.user_id for h in ordered.ranker.window]
    assert len(live.status.published) == len(ordered.status.published) >= 2
    for name, p in ordered.model.trainable_parameters().items():
        assert torch.allclose(live.model.trainable_parameters()[name], p, atol=1e-6), name


def test_sources_must_match_the_records(base, tmp_path):
    service = LearnerService(settings(), tmp_path, key=KEY, base=base)
    with pytest.raises(ValueError, match="2 sources for 1 records"):
        service.process([object()], [0, 1])

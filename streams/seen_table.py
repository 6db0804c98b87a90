"""The deduplication table of one source partition, and the compacted changelog topic that makes it durable.

A worker keeps, for each partition of ``interactions`` and ``explanation-feedback`` it owns, which ``event_id``
it has handled (``event_id -> [event ts, partition, offset, arrival]``: :mod:`streams.dedup`). Every write and
deletion is queued (:meth:`SeenTable.take_changes`) and sent to the same partition of the table's changelog
topic before the source offsets move on (:mod:`streams.ingest_consumer`); a worker that takes the partition over
(a restart, a rebalance) reads the changelog partition back (:func:`read_changelog`) before it handles a message.

The records are a Faust table's changelog records, JSON key and JSON value, a tombstone for a deletion, on the
topic a Faust table of the same name used (``<app id>-<table>-changelog``): a worker that deduplicated with
Faust tables before keeps its history.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any

import orjson

from streams.settings import KafkaSettings
from streams.topics import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

#: The deduplication tables: source topic (without prefix) -> table name (its changelog: ``<app id>-<name>-changelog``).
SEEN_TABLES = {"interactions": "seen-interactions", "explanation-feedback": "seen-explanation-feedback"}


def changelog_topic(app_id: str, table: str) -> str:
    """
    >>> changelog_topic("worker-1", "seen-interactions")
    'worker-1-seen-interactions-changelog'
    """
    return f"{app_id}-{table}-changelog"


class SeenTable(MutableMapping[str, Any]):
    """One partition's entries, with the changes not yet sent to its changelog (the last change of a key wins).

    >>> table = SeenTable(3)
    >>> table["e1"] = [1.0, 3, 7, 5.0]; table["e2"] = [2.0, 3, 8, 5.0]; del table["e1"]
    >>> dict(table), table.take_changes(), table.take_changes()
    ({'e2': [2.0, 3, 8, 5.0]}, [('e1', None), ('e2', [2.0, 3, 8, 5.0])], [])
    """

    def __init__(self, partition: int, entries: dict[str, Any] | None = None) -> None:
        self.partition = partition
        self._data: dict[str, Any] = entries if entries is not None else {}
        self._changes: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def get(self, key: str, default: Any = None) -> Any:  # the hot path: one dict lookup
        return self._data.get(key, default)

    def __setitem__(self, key: str, value: Any) -> None:
        self._data[key] = value
        self._changes[key] = value

    def __delitem__(self, key: str) -> None:
        del self._data[key]
        self._changes[key] = None

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def take_changes(self) -> list[tuple[str, Any]]:
        """The writes (``(key, entry)``) and deletions (``(key, None)``) since the last call, in key order."""
        changes, self._changes = sorted(self._changes.items()), {}
        return changes


def changelog_record(key: str, entry: Any) -> tuple[bytes, bytes | None]:
    """A table change as a changelog record (a deletion is a tombstone).

    >>> changelog_record("e1", [1.0, 0, 7, 5.0]), changelog_record("e1", None)
    ((b'"e1"', b'[1.0,0,7,5.0]'), (b'"e1"', None))
    """
    return orjson.dumps(key), None if entry is None else orjson.dumps(entry)


def apply_changelog_record(entries: dict[str, Any], key: bytes | None, value: bytes | None) -> None:
    """Replay one changelog record onto ``entries``; a record that is not JSON is skipped with a warning.

    >>> entries = {}
    >>> apply_changelog_record(entries, b'"e1"', b'[1.0,0,7,5.0]'); apply_changelog_record(entries, b'"e2"', b'3.0')
    >>> apply_changelog_record(entries, b'"e1"', None); entries
    {'e2': 3.0}
    """
    try:
        event_id = orjson.loads(key) if key is not None else None
        entry = None if value is None else orjson.loads(value)
    except orjson.JSONDecodeError:
        log.warning("skipped a changelog record that is not JSON: key=%r", key[:80] if key else key)
        return
    if not isinstance(event_id, str):
        log.warning("skipped a changelog record whose key is not an event id: %r", event_id)
        return
    if entry is None:
        entries.pop(event_id, None)
    else:
        entries[event_id] = entry


async def read_changelog(kafka: KafkaSettings, topic: str, partitions: Iterable[int]) -> dict[int, dict[str, Any]]:
    """Each partition's entries, read from the beginning of its changelog partition to its end offset."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    tables: dict[int, dict[str, Any]] = {p: {} for p in partitions}
    if not tables:
        return tables
    consumer = AIOKafkaConsumer(**kafka.aiokafka_options(), enable_auto_commit=False, group_id=None,
                                max_partition_fetch_bytes=MAX_MESSAGE_BYTES)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in tables]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if await consumer.position(tp) < end[tp]}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000, max_records=20_000)
            for tp, messages in batches.items():
                entries = tables[tp.partition]
                for message in messages:
                    apply_changelog_record(entries, message.key, message.value)
            remaining = {tp for tp in remaining if await consumer.position(tp) < end[tp]}
    finally:
        await consumer.stop()
    log.info("restored %s from %s: %s", "deduplication entries", topic,
             {p: len(entries) for p, entries in sorted(tables.items())})
    return tables

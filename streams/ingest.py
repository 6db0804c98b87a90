"""Ingest logic shared by the agents: validate, dead-letter, count (deduplication: :mod:`streams.dedup`).

Plain functions and classes, so they are tested without a broker; the Faust agents in
:mod:`streams.agents` only move messages in and out of them.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Generic

from streams.records import DeadLetter, InvalidRecord, R, decode


@dataclass(frozen=True, slots=True)
class SourcePosition:
    """Where a message was read: what a dead letter needs to point back at it."""

    topic: str
    partition: int
    offset: int


def validate(cls: type[R], value: bytes | None, *, key: bytes | None,
             source: SourcePosition) -> R | DeadLetter:
    """Return the valid record, or the dead letter that explains why it is not one.

    >>> from streams.records import Interaction
    >>> letter = validate(Interaction, b"{oops", key=b"u1", source=SourcePosition("t", 0, 7))
    >>> letter.offset, letter.error.startswith("not valid UTF-8 JSON")
    (7, True)
    """
    try:
        return decode(cls, value)
    except InvalidRecord as exc:
        return dead_letter(value, key=key, source=source, error=str(exc))


def dead_letter(value: bytes | None, *, key: bytes | None, source: SourcePosition, error: str) -> DeadLetter:
    return DeadLetter(source_topic=source.topic, partition=source.partition, offset=source.offset,
                      error=error, value=None if value is None else bytes(value),
                      key=None if key is None else bytes(key), ts=time.time())


def error_kind(error: str) -> str:
    """A short, low-cardinality label for a dead-letter reason (for counters and summaries).

    >>> error_kind("missing field 'user_id'")
    'missing field'
    >>> error_kind("field 'ts' must be a number, got str")
    'wrong type or value'
    """
    if error.startswith("missing field"):
        return "missing field"
    if error.startswith("not valid UTF-8 JSON"):
        return "invalid json"
    if "exceeds the" in error:
        return "too large"
    if "must be one of" in error:
        return "unknown enum value"
    if error.startswith("expected a JSON object"):
        return "not an object"
    if error.startswith("unsupported schema_version"):
        return "schema version"
    if error.startswith("empty message"):
        return "empty message"
    return "wrong type or value"


@dataclass
class SourceCounts:
    accepted: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    forgotten: int = 0
    by_type: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    first_at: float | None = None
    last_at: float | None = None

    def touch(self) -> None:
        now = time.monotonic()
        if self.first_at is None:
            self.first_at = now
        self.last_at = now

    def as_dict(self) -> dict:
        busy = (self.last_at - self.first_at) if self.first_at is not None and self.last_at is not None else 0.0
        return {"accepted": self.accepted, "duplicates": self.duplicates, "dead_lettered": self.dead_lettered,
                "dedup_forgotten": self.forgotten,
                "by_type": dict(self.by_type), "errors": dict(self.errors), "busy_s": round(busy, 6)}


class IngestStats(Generic[R]):
    """Counts what one worker process did with each source topic."""

    def __init__(self) -> None:
        self.sources: dict[str, SourceCounts] = {}

    def of(self, source: str) -> SourceCounts:
        counts = self.sources.get(source)
        if counts is None:
            counts = self.sources[source] = SourceCounts()
        return counts

    def accepted(self, source: str, kind: str) -> None:
        counts = self.of(source)
        counts.accepted += 1
        counts.by_type[kind] += 1
        counts.touch()

    def duplicate(self, source: str) -> None:
        counts = self.of(source)
        counts.duplicates += 1
        counts.touch()

    def forgotten(self, source: str, n: int) -> None:
        """``n`` event ids of ``source`` left the deduplication window."""
        self.of(source).forgotten += n

    def dead_lettered(self, source: str, error: str) -> None:
        counts = self.of(source)
        counts.dead_lettered += 1
        counts.errors[error_kind(error)] += 1
        counts.touch()

    def snapshot(self) -> dict[str, dict]:
        return {name: counts.as_dict() for name, counts in sorted(self.sources.items())}

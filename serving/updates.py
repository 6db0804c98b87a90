"""Adapter hot-swap: follow ``recloop.model-updates``, verify every update, build it off to the side, swap.

Every serving worker reads the whole (compacted, single-partition) topic with a group-less
consumer from the beginning. At boot it serves the newest update that verifies; afterwards it
applies every new one. An update is applied only if its sha256, its HMAC signature, its base
fingerprint and its architecture all check out; anything else is logged with its reason and
counted, and the version already serving keeps serving.

**Lineages.** The adapters trained on one frozen base form a lineage; a worker serves only its own
base's, and within it **versions strictly increase**: an update whose running number
(:func:`~learner.adapter_store.version_sequence`) is not above the one serving is refused as
``not newer`` and counted, however validly it is signed — a replayed old record (a mistaken replay of
the topic, an attacker with broker access) can never silently roll serving back. A rollback is an
explicit new version (``recloop adapters rollback``: ``v<next>-rollback-<old>``). At boot the
candidates of this base are tried from the highest number down (a replayed old record published last
is not taken for the newest), whatever numbers another lineage used. Updates
of another base found at boot (a run on another base model earlier on the same topic) are skipped
with one log line saying how many and which base, not refused one by one. One that arrives while the
worker runs is refused and counted like any other: a learner on another base is publishing to this
worker's topic, and the operator must hear about it.

Decoding, verifying and building run in a worker thread (``asyncio.to_thread``): a version
without shipped item vectors re-encodes the whole catalogue, ~20 s of CPU with MiniLM. The
swap itself is one reference assignment on the event loop. If several updates arrive while a
build runs, only the newest is built ("latest wins", as the topic's compaction says).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from learner.adapter_store import require_newer, version_sequence
from learner.artifacts import AdapterRejected, verify
from serving.history import LiveBehaviour, wait_for_assignment
from serving.state import CatalogueSnapshot, ServingState, StateBuilder, StateHolder, Swap
from streams.records import AdapterUpdate, InvalidRecord, decode
from streams.settings import KafkaSettings
from streams.topics import MAX_MESSAGE_BYTES, MODEL_UPDATES

log = logging.getLogger(__name__)

#: How many of the newest published updates of its base a booting worker tries before falling back to version 0.
BOOT_CANDIDATES = 16

#: Reason prefixes of :class:`AdapterRejected` and what an operator's dashboard calls them.
_REJECTION_KINDS = (
    ("sha256 mismatch", "sha256"),
    ("bad signature", "signature"),
    ("wrong base", "base_fingerprint"),
    ("incompatible config", "config"),
    ("version mismatch", "version"),
    ("malformed payload", "malformed"),
    ("unknown payload format", "malformed"),
    ("not newer", "replayed"),
)


def rejection_kind(reason: str) -> str:
    """A short, bounded label for a rejection reason (for metrics).

    >>> rejection_kind("bad signature: not signed with this deployment's key")
    'signature'
    >>> rejection_kind("something new")
    'other'
    """
    for prefix, kind in _REJECTION_KINDS:
        if reason.startswith(prefix):
            return kind
    return "other"


@dataclass(frozen=True)
class Lineage:
    """Which base an update was trained on, read without decoding its payload."""

    version: str
    base_fingerprint: str


def peek_lineage(raw: bytes) -> Lineage | None:
    """The version and base of an encoded update; None when it is not readable as one (verify says why later).

    >>> peek_lineage(b'{"version": "v000003", "base_fingerprint": "abc", "payload": ""}')
    Lineage(version='v000003', base_fingerprint='abc')
    >>> peek_lineage(b'not json') is None
    True
    """
    try:
        data = orjson.loads(raw)
        return Lineage(str(data["version"]), str(data["base_fingerprint"]))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


@dataclass
class OtherLineage:
    """The updates of one other base seen at boot: how many, the first and last version published."""

    count: int = 0
    first: str = ""
    last: str = ""

    def add(self, version: str) -> None:
        self.first = self.first or version
        self.last = version
        self.count += 1


@dataclass
class BootBacklog:
    """What a booting worker read from the topic: the newest ``size`` updates it may serve (its own base, or
    unreadable ones, which verification then refuses with their reason), and the other bases' only counted.

    Only those candidates are kept in memory: until compaction runs the topic may hold many multi-MB versions.
    """

    base_fingerprint: str
    size: int = BOOT_CANDIDATES
    read: int = 0
    candidates: deque[bytes] = field(init=False, repr=False)
    other_bases: dict[str, OtherLineage] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.candidates = deque(maxlen=self.size)

    def extend(self, messages: Iterable[bytes | None]) -> None:
        for raw in messages:
            self.read += 1
            if raw is None:  # a compaction tombstone
                continue
            lineage = peek_lineage(raw)
            if lineage is not None and lineage.base_fingerprint != self.base_fingerprint:
                self.other_bases.setdefault(lineage.base_fingerprint, OtherLineage()).add(lineage.version)
            else:
                self.candidates.append(raw)

    @property
    def skipped(self) -> int:
        return sum(other.count for other in self.other_bases.values())

    def by_version(self) -> list[bytes]:
        """The candidates, lowest version number first (publication order among equal ones; unreadable first).

        >>> backlog = BootBacklog("b")
        >>> backlog.extend([b'{"version": "v000002", "base_fingerprint": "b"}', b'{"version": "v000003", '
        ...                 b'"base_fingerprint": "b"}', b'{"version": "v000001", "base_fingerprint": "b"}'])
        >>> [peek_lineage(raw).version for raw in backlog.by_version()]
        ['v000001', 'v000002', 'v000003']
        """
        def number(raw: bytes) -> int:
            lineage = peek_lineage(raw)
            return version_sequence(lineage.version) if lineage is not None else -1
        return sorted(self.candidates, key=number)  # stable: publication order among equal numbers

    def describe_skipped(self) -> str:
        """One line for the log: how many updates of which other bases were skipped.

        >>> backlog = BootBacklog("mine")
        >>> backlog.extend([b'{"version": "v000001", "base_fingerprint": "0123456789abcdef"}',
        ...                 b'{"version": "v000002", "base_fingerprint": "0123456789abcdef"}'])
        >>> backlog.describe_skipped()
        'skipped 2 published update(s) trained on another base: 2 on base 0123456789ab… (v000001 … v000002)'
        """
        parts = [f"{other.count} on base {fingerprint[:12]}… ({other.first} … {other.last})"
                 for fingerprint, other in self.other_bases.items()]
        return f"skipped {self.skipped} published update(s) trained on another base: {'; '.join(parts)}"


@dataclass(frozen=True)
class Outcome:
    """What became of one update: ``accepted`` (swapped in, or already serving) or refused with ``reason``."""

    accepted: bool
    swap: Swap | None = None
    reason: str | None = None


class SwapListener(Protocol):
    """Where swaps and rejections are reported (the worker's Prometheus metrics)."""

    def swapped(self, swap: Swap, cause: str) -> None: ...

    def rejected(self, kind: str, reason: str) -> None: ...


class StateUpdater:
    """Every change of the serving state goes through here, one at a time.

    Plain class, no Kafka: tests hand it raw update messages; :class:`UpdateFollower` feeds it
    from the topic and :meth:`refresh_catalogue` folds catalogue changes in.
    """

    def __init__(self, builder: StateBuilder, holder: StateHolder, live: LiveBehaviour, key: bytes,
                 listener: SwapListener) -> None:
        self.builder = builder
        self.holder = holder
        self.live = live
        self.key = key
        self.listener = listener
        self._lock = asyncio.Lock()

    async def boot(self, backlog: BootBacklog) -> Outcome | None:
        """Serve the newest update of this base in ``backlog`` that verifies, else version 0; None means version 0.

        Updates of other bases are another lineage: one log line says how many were skipped.
        """
        if backlog.skipped:
            log.info("%s; this worker's base is %s… (a new lineage starts here)", backlog.describe_skipped(),
                     self.builder.base.fingerprint[:12])
        log.info("read %d published updates; trying the newest %d of this base", backlog.read,
                 len(backlog.candidates))
        outcome = await self.apply_newest(backlog.by_version())
        if outcome is None:
            await self.serve_base()
        return outcome

    async def serve_base(self) -> Swap:
        """Serve version 0 (no adapter yet, or none verified)."""
        async with self._lock:
            state = await asyncio.to_thread(self.builder.build, None, self.live.snapshot())
            swap = self.holder.swap(state)
        self.listener.swapped(swap, "base")
        return swap

    async def apply_newest(self, messages: Sequence[bytes | None]) -> Outcome | None:
        """Apply the newest update of ``messages`` that verifies; older ones are superseded, not built."""
        for raw in reversed(messages):
            if raw is None:  # a compaction tombstone
                continue
            outcome = await self.apply(raw)
            if outcome.accepted:
                return outcome
        return None

    async def apply(self, raw: bytes) -> Outcome:
        """Verify and build one update off the event loop, then swap it in."""
        async with self._lock:
            started = time.perf_counter()
            current = self.holder.current
            try:
                state = await asyncio.to_thread(self.build, raw, self.live.snapshot(), current)
            except (AdapterRejected, InvalidRecord) as exc:
                reason = getattr(exc, "reason", str(exc))
                kind = "invalid_record" if isinstance(exc, InvalidRecord) else rejection_kind(reason)
                log.warning("rejected adapter update kind=%s reason=%r; still serving version=%s", kind, reason,
                            current.version if current else None)
                self.listener.rejected(kind, reason)
                return Outcome(False, reason=reason)
            except Exception as exc:  # a bug or a resource problem must not stop the follower
                log.exception("failed to build adapter update; still serving version=%s",
                              current.version if current else None)
                reason = f"{exc.__class__.__name__}: {exc}"
                self.listener.rejected("error", reason)
                return Outcome(False, reason=reason)
            if state is None:
                return Outcome(True)
            swap = self.holder.swap(state)
        log.info("serving version=%s (was %s) apply_ms=%.3f build_ms=%.0f total_ms=%.0f", state.version,
                 swap.previous.version if swap.previous else None, swap.apply_ms, state.built_ms,
                 (time.perf_counter() - started) * 1000)
        self.listener.swapped(swap, "adapter")
        return Outcome(True, swap)

    def build(self, raw: bytes, catalogue: CatalogueSnapshot, current: ServingState | None) -> ServingState | None:
        """Decode, verify and build (in a worker thread); None when this exact version already serves."""
        update = decode(AdapterUpdate, raw)
        content = verify(update, self.key, self.builder.base.fingerprint, model=self.builder.reference)
        if current is not None and current.source.content is not None:
            if current.version == update.version and current.source.content.manifest == content.manifest:
                log.info("version %s is already serving", update.version)
                return None
            require_newer(update.version, current.version)
        return self.builder.build(content, catalogue, current)

    async def refresh_catalogue(self) -> Swap | None:
        """Fold new or retitled catalogue items into the current version (encodes only those items)."""
        current = self.holder.current
        if current is None or current.catalogue.generation == self.live.generation:
            return None
        async with self._lock:
            current = self.holder.current
            snapshot = self.live.snapshot()
            if current is None or current.catalogue.generation == snapshot.generation:
                return None
            state = await asyncio.to_thread(self.builder.extend, current, snapshot)
            swap = self.holder.swap(state)
        self.listener.swapped(swap, "catalogue")
        return swap


class UpdateFollower:
    """Feeds ``recloop.model-updates`` to :class:`StateUpdater`: the newest valid at boot, then each new one."""

    def __init__(self, kafka: KafkaSettings, updater: StateUpdater) -> None:
        self.kafka = kafka
        self.updater = updater
        self.booted = asyncio.Event()
        self.topic = kafka.topic(MODEL_UPDATES.name)

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(self.topic, **self.kafka.aiokafka_options(), group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    max_partition_fetch_bytes=MAX_MESSAGE_BYTES, fetch_max_bytes=MAX_MESSAGE_BYTES)
        await consumer.start()
        try:
            partitions = await self._assign(consumer)
            await self._boot(consumer, partitions)
            while True:
                batches = await consumer.getmany(timeout_ms=1000)
                records = [m for tp in sorted(batches) for m in batches[tp]]
                if records:
                    log.info("received %d update(s), the newest published %.2fs ago", len(records),
                             time.time() - records[-1].timestamp / 1000)
                    await self.updater.apply_newest([m.value for m in records])
        finally:
            await consumer.stop()

    async def _boot(self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> None:
        """Serve the newest update of this base that verifies among its last ``BOOT_CANDIDATES``, else version 0."""
        ends = await consumer.end_offsets(partitions)
        backlog = BootBacklog(self.updater.builder.base.fingerprint, BOOT_CANDIDATES)
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            batches = await consumer.getmany(timeout_ms=1000)
            for tp in sorted(batches):
                backlog.extend(m.value for m in batches[tp])
        await self.updater.boot(backlog)
        self.booted.set()

    async def _assign(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        partitions = await wait_for_assignment(consumer, {self.topic})
        await consumer.seek_to_beginning(*partitions)
        return partitions

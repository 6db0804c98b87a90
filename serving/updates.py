"""Adapter hot-swap: follow ``recloop.model-updates``, verify every update, build it off to the side, swap.

Every serving worker reads the whole (compacted, single-partition) topic with a group-less
consumer from the beginning. At boot it serves the newest update that verifies; afterwards it
applies every new one. An update is applied only if its sha256, its HMAC signature, its base
fingerprint and its architecture all check out; anything else is logged with its reason and
counted, and the version already serving keeps serving.

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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition

from learner.artifacts import AdapterRejected, verify
from serving.history import LiveBehaviour, wait_for_assignment
from serving.state import CatalogueSnapshot, ServingState, StateBuilder, StateHolder, Swap
from streams.records import AdapterUpdate, InvalidRecord, decode
from streams.settings import KafkaSettings
from streams.topics import MAX_MESSAGE_BYTES, MODEL_UPDATES

log = logging.getLogger(__name__)

#: How many of the newest published updates a booting worker tries before falling back to version 0.
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
        if current is not None and current.version == update.version and current.source.content is not None \
                and current.source.content.manifest == content.manifest:
            log.info("version %s is already serving", update.version)
            return None
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

    async def keep_catalogue_current(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh_catalogue()
            except Exception:
                log.exception("catalogue refresh failed; retrying in %.0fs", interval_s)


class UpdateFollower:
    """Feeds ``recloop.model-updates`` to :class:`StateUpdater`: the newest valid at boot, then each new one."""

    def __init__(self, kafka: KafkaSettings, updater: StateUpdater) -> None:
        self.kafka = kafka
        self.updater = updater
        self.booted = asyncio.Event()
        self.topic = kafka.topic(MODEL_UPDATES.name)

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(self.topic, bootstrap_servers=self.kafka.bootstrap, group_id=None,
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
        """Serve the newest update that verifies among the last ``BOOT_CANDIDATES`` published, else version 0.

        Only those are kept in memory: until compaction runs the topic may hold many multi-MB versions.
        """
        ends = await consumer.end_offsets(partitions)
        backlog: deque[bytes | None] = deque(maxlen=BOOT_CANDIDATES)
        seen = 0
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            batches = await consumer.getmany(timeout_ms=1000)
            for tp in sorted(batches):
                backlog.extend(m.value for m in batches[tp])
                seen += len(batches[tp])
        log.info("read %d published updates; trying the newest %d", seen, len(backlog))
        if await self.updater.apply_newest(list(backlog)) is None:
            await self.updater.serve_base()
        self.booted.set()

    async def _assign(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        partitions = await wait_for_assignment(consumer, {self.topic})
        await consumer.seek_to_beginning(*partitions)
        return partitions

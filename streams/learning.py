"""The Faust side of online learning: route accepted records to one trainer, run it off the event loop.

Thin on purpose: every decision lives in :class:`learner.service.LearnerService`; these agents
only move records in, hand them to the service and send what it returns.

Data path::

    ingest agents (validated, deduplicated) ───┐  interactions, catalogue items, "irrelevant" feedback
    recloop.impressions ─► learner-impressions ─┼─► <app_id>-learner-events (internal, 1 partition)
                                               ┘        └─► learner-train ─► Inbox ─► micro-batch (n, within s)
                                                               └─► run_in_executor → LearnerService (own process)

* The ingest ``Downstream`` hooks forward every accepted interaction and catalogue item (and explanation
  feedback that calls an item irrelevant: a weighted negative for the ranker) to an
  internal topic of **one partition**. However many workers run, exactly one owns that
  partition and trains, so adapters form one chain of versions; the others only ingest, and
  every item reaches the trainer whichever worker ingested its catalogue partition.
* Learning never blocks ingest, for three reasons measured on 2 cores:
  - ``learner-train`` drains its stream into an :class:`Inbox` and takes micro-batches from that
    (``n`` events, waiting at most ``within`` seconds — never a bare take). A ``stream.take``
    buffer stops draining while its batch trains; Faust's single delivery loop then blocks on
    the full queue and *every* agent stalls (30 s stalls seen). When too much is pending the
    agent stops reading instead, and Faust's stream-buffer flow control stops fetching the
    internal partition alone (never ``consumer.pause_partitions``, which loses fetched records:
    the learner stopped at 81,281 events of 229,515 — docs/learner.md, "Back-pressure");
  - each batch goes to the service with ``loop.run_in_executor``; by default
    (``RECLOOP_LEARNER_ISOLATION=process``) the service lives in a child process, because a
    training *thread* holds the GIL through its Python-heavy parts (example building, PEFT
    module calls) and starves the event loop. ``thread`` keeps it in-process for small setups;
  - the learner process runs at a lower CPU priority (``nice``), so training takes the cycles
    ingest leaves.

Offsets and durability (at-least-once; nothing is committed before its outcome is durable):

1. Upstream, an ingest agent's offset is committed only after Faust flushed its producer, which
   includes the forward to the internal topic (see :mod:`streams.agents`).
2. ``learner-train`` iterates with acks off (``stream.noack()``) and acks an event (makes its
   offset committable) only when the service reports its step as *settled*: its examples are
   trained **and** the gate has decided on that training. A publish is settled once the adapter directory is written and
   fsynced (:func:`learner.artifacts.save_adapter`), the ``AdapterUpdate`` is acknowledged by the
   broker (acks=all), and a ``PUBLISHED`` marker is fsynced next to it; a refusal once its
   ``MetricSnapshot`` is acknowledged.
3. A crash re-delivers exactly the events whose training was undecided. The restarted learner
   resumes from the newest *published* adapter on disk; one saved but never acknowledged is
   moved aside, so redelivered events are trained once on top of what serving workers have.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import multiprocessing
import multiprocessing.connection
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faust

from learner.artifacts import AdapterRejected
from learner.drift_hold import DriftHold
from learner.explanation_bandit import is_irrelevant
from learner.settings import LearnerConfigError, LearnerSettings
from streams import topics
from streams.agents import Downstream
from streams.app import RecloopApp
from streams.ingest import SourcePosition, dead_letter, validate
from streams.records import (
    AdapterUpdate,
    DeadLetter,
    DriftAlarm,
    ExplanationFeedback,
    Impression,
    Interaction,
    InvalidRecord,
    Item,
    decode,
    encode,
)
from streams.topics import MAX_MESSAGE_BYTES

if TYPE_CHECKING:
    from learner.service import LearnerService, StepOutcome
    from streams.settings import KafkaSettings

log = logging.getLogger(__name__)

LearnerRecord = Item | Interaction | Impression | ExplanationFeedback

#: Record kind in the key of the internal topic: ``b"interaction:<user_id>"`` etc.; an interaction also says
#: which partition of the interactions topic it was read from: ``b"interaction@<partition>:<user_id>"``.
KINDS: dict[bytes, type] = {b"interaction": Interaction, b"item": Item, b"impression": Impression,
                            b"feedback": ExplanationFeedback}
_KIND_OF = {cls: kind for kind, cls in KINDS.items()}


def learner_topic_name(app_id: str) -> str:
    """The internal topic is owned by one app (consumer group), like Faust's changelog topics."""
    return f"{app_id}-learner-events"


def learner_state_dir(home: Path, app_id: str) -> Path:
    """Where the learner of app ``app_id`` keeps its checkpoint: tied to its input topic, whose offsets it records."""
    return Path(home) / "learner" / learner_topic_name(app_id)


def envelope(record: LearnerRecord, source: int | None = None) -> tuple[bytes, bytes]:
    """Key and value of a record on the internal topic. ``source``: the partition an interaction was read from
    (the learner closes baskets per partition, :mod:`learner.features`); other records carry none.

    >>> envelope(Item("85123A", "WHITE HEART"))[0]
    b'item:85123A'
    >>> envelope(Interaction("e1", "u1", "85123A", "purchase", 1.3e9), source=3)[0]
    b'interaction@3:u1'
    """
    kind = _KIND_OF[type(record)]
    ident = record.item_id if isinstance(record, Item) else record.user_id
    if source is not None and isinstance(record, Interaction):
        kind += b"@%d" % source
    return kind + b":" + ident.encode(), encode(record)


def open_envelope(key: bytes | None, value: bytes | None) -> LearnerRecord:
    """The record back from the internal topic; :class:`InvalidRecord` if it is not one.

    >>> open_envelope(*envelope(Item("85123A", "WHITE HEART"))).title
    'WHITE HEART'
    """
    return open_sourced_envelope(key, value)[0]


def open_sourced_envelope(key: bytes | None, value: bytes | None) -> tuple[LearnerRecord, int | None]:
    """The record back from the internal topic and the partition it was read from (``None``: not recorded, as in
    keys written before partitions were); :class:`InvalidRecord` if it is not one.

    >>> open_sourced_envelope(*envelope(Interaction("e1", "u1", "A", "purchase", 1.3e9), source=2))[1]
    2
    >>> open_sourced_envelope(b"interaction:u1", encode(Interaction("e1", "u1", "A", "purchase", 1.3e9)))[1]
    """
    kind, _, source = (key or b"").partition(b":")[0].partition(b"@")
    cls = KINDS.get(kind)
    if cls is None:
        raise InvalidRecord(f"unknown learner record kind {kind[:20]!r}")
    if source and not source.isdigit():
        raise InvalidRecord(f"bad source partition {source[:20]!r} in a learner record key")
    return decode(cls, value), int(source) if source else None


class AckLedger:
    """Events held back until the learner step that consumed them is settled.

    >>> ledger = AckLedger()
    >>> ledger.hold(1, ["a", "b"]); ledger.hold(2, ["c"])
    >>> ledger.release(settled_through=1), len(ledger)
    (['a', 'b'], 1)
    """

    def __init__(self) -> None:
        self._held: deque[tuple[int, Sequence[Any]]] = deque()

    def hold(self, step: int, events: Sequence[Any]) -> None:
        self._held.append((step, events))

    def release(self, settled_through: int) -> list[Any]:
        released: list[Any] = []
        while self._held and self._held[0][0] <= settled_through:
            released.extend(self._held.popleft()[1])
        return released

    def __len__(self) -> int:
        return sum(len(events) for _, events in self._held)


class Inbox:
    """Events waiting for the learner, taken in micro-batches of up to ``n`` within ``within`` seconds.

    Why not ``stream.take``: Faust delivers every topic from one consumer loop, and when an agent's
    queue is full that loop *waits*, stalling every other agent. A take buffer stops draining its
    queue while the batch trains, so a slow step froze ingest (measured: a 30 s stall on 2 cores).
    The inbox is drained as fast as events arrive, up to ``high_water`` pending events; past that
    :meth:`put` waits until :meth:`take` has brought them down to ``low_water``. While it waits the
    agent reads nothing, and Faust's own stream-buffer flow control stops fetching the partition
    (and fetches it again once the agent has read its buffer down); records Faust had already
    fetched are still delivered, so nothing is lost. (``consumer.pause_partitions`` is not
    lossless: Faust discards the already-fetched records of a paused partition — docs/learner.md.)

    >>> async def demo():
    ...     inbox = Inbox(high_water=3, low_water=1)
    ...     for event in "abc":
    ...         await inbox.put(event)
    ...     late = asyncio.ensure_future(inbox.put("d"))  # full: waits for room
    ...     await asyncio.sleep(0)
    ...     paused = inbox.paused
    ...     first = await inbox.take(2, within=0.01)  # down to low water: room again
    ...     await late
    ...     return paused, first, inbox.paused, await inbox.take(3, within=0.01)
    >>> asyncio.run(demo())
    (True, ['a', 'b'], False, ['c', 'd'])
    """

    def __init__(self, *, high_water: int, low_water: int) -> None:
        if not 0 <= low_water < high_water:
            raise ValueError(f"need 0 <= low_water < high_water, got {low_water} and {high_water}")
        self.high_water, self.low_water = high_water, low_water
        self._events: deque[Any] = deque()
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self.times_paused = 0

    def __len__(self) -> int:
        return len(self._events)

    @property
    def paused(self) -> bool:
        """True while :meth:`put` holds back (from ``high_water`` pending events down to ``low_water``)."""
        return not self._room.is_set()

    async def put(self, event: Any) -> None:
        """Add an event; if ``high_water`` events are pending, first wait until only ``low_water`` are."""
        if len(self._events) >= self.high_water and not self.paused:
            self._room.clear()
            self.times_paused += 1
        await self._room.wait()
        self._events.append(event)
        self._arrived.set()

    async def take(self, n: int, within: float) -> list[Any]:
        """Wait for a first event, then up to ``within`` seconds for ``n``; never returns an empty batch."""
        while not self._events:
            self._arrived.clear()
            await self._arrived.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while len(self._events) < n and (remaining := deadline - loop.time()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
        batch = [self._events.popleft() for _ in range(min(n, len(self._events)))]
        if self.paused and len(self._events) <= self.low_water:
            self._room.set()
        return batch


class TopicTail:
    """Reads a one-partition topic outside the consumer group: from the newest record at start (``since_s``
    None), or from the records of the last ``since_s`` seconds, then each new one.

    The learner follows ``recloop.model-updates`` so: it adopts an adapter it did not publish itself
    (``recloop adapters rollback``), so its next update continues from what serving workers run instead of
    silently undoing a rollback; and ``recloop.ops.drift``, whose critical item-mix alarms hold publishing
    (:mod:`learner.drift_hold`).
    """

    def __init__(self, kafka: KafkaSettings, topic: str, *, since_s: float | None = None) -> None:
        self.kafka, self.topic, self.since_s = kafka, topic, since_s
        self._consumer: Any = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        self._consumer = AIOKafkaConsumer(**self.kafka.aiokafka_options(), group_id=None,
                                          enable_auto_commit=False, max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
                                          fetch_max_bytes=MAX_MESSAGE_BYTES)
        await self._consumer.start()
        partition = TopicPartition(self.topic, 0)
        self._consumer.assign([partition])
        end = (await self._consumer.end_offsets([partition]))[partition]
        start = max(0, end - 1)
        if self.since_s is not None:
            found = await self._consumer.offsets_for_times({partition: int((time.time() - self.since_s) * 1000)})
            start = found[partition].offset if found.get(partition) is not None else end
        self._consumer.seek(partition, start)

    async def poll(self) -> list[bytes]:
        batches = await self._consumer.getmany(timeout_ms=0)
        return [message.value for messages in batches.values() for message in messages if message.value]

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()


# --------------------------------------------------------------------------- the service's executor

_service: LearnerService | None = None


def _start_service(settings: LearnerSettings, home: str, key: bytes, stop: Any, log_level: int,
                   state_dir: str) -> None:
    """Executor initializer: build the one :class:`LearnerService` of this executor (in its process)."""
    global _service
    parent = multiprocessing.parent_process()
    if parent is not None:  # a child process: log like the worker, and never outlive it
        logging.basicConfig(level=log_level, format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
        threading.Thread(target=_exit_with_parent, args=(parent.sentinel,), name="parent-watch", daemon=True).start()
    from learner.service import LearnerService

    _service = LearnerService(settings, Path(home), key=key, stop=stop, state_dir=Path(state_dir))
    if settings.nice:  # loaded at full speed; from now on ingest first, training gets the cycles left over
        try:
            os.setpriority(os.PRIO_PROCESS, 0 if parent is not None else threading.get_native_id(),
                           min(19, os.getpriority(os.PRIO_PROCESS, 0) + settings.nice))
        except OSError as exc:
            logging.getLogger(__name__).warning("could not lower the learner's priority: %s", exc)


def _exit_with_parent(sentinel: int) -> None:
    """If the worker dies without shutting the executor down (SIGKILL), its learner process goes too."""
    multiprocessing.connection.wait([sentinel])
    logging.getLogger(__name__).warning("the worker process is gone: learner process exits")
    os._exit(0)


def call_service(method: str, *args: Any, **kwargs: Any) -> Any:
    """Run one method of the executor's service (pickled across when the executor is a process)."""
    if _service is None:
        raise RuntimeError("the learner service failed to start; see the log above")
    return getattr(_service, method)(*args, **kwargs)


def service_executor(settings: LearnerSettings, home: Path, key: bytes, state_dir: Path) -> tuple[Executor, Any]:
    """A one-worker executor that owns a :class:`LearnerService` (its checkpoints under ``state_dir``), and the
    event that asks it to stop."""
    level = logging.getLogger().getEffectiveLevel()
    if settings.isolation == "process":
        context = multiprocessing.get_context("spawn")  # never fork a process that runs an event loop
        stop = context.Event()
        executor: Executor = ProcessPoolExecutor(max_workers=1, mp_context=context, initializer=_start_service,
                                                 initargs=(settings, str(home), key, stop, level, str(state_dir)))
    else:
        stop = threading.Event()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recloop-learner",
                                      initializer=_start_service,
                                      initargs=(settings, str(home), key, stop, level, str(state_dir)))
    return executor, stop


# --------------------------------------------------------------------------- agents


@dataclass
class LearningHandles:
    """What the worker (and tests) can reach of the learning agents."""

    settings: LearnerSettings
    topic: faust.TopicT
    inbox: Inbox
    ledger: AckLedger = field(default_factory=AckLedger)
    status: dict = field(default_factory=lambda: {"state": "loading"})
    dead_lettered: int = 0

    def page(self) -> dict:
        """The worker's ``/learner/`` page: the service's status and the Faust side's counters."""
        return {**self.status, "topic": self.topic.get_topic_name(), "unacked_events": len(self.ledger),
                "pending_events": len(self.inbox), "paused": self.inbox.paused,
                "times_paused": self.inbox.times_paused, "dead_lettered": self.dead_lettered}


def _raw_topic(r: RecloopApp, name: str, *, partitions: int | None = None, internal: bool = False,
               config: dict[str, str] | None = None) -> faust.TopicT:
    return r.app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                       partitions=partitions, internal=internal, config=config)


class LearnerRouter:
    """Everything the learner sees goes through one internal topic: accepted records and impressions."""

    def __init__(self, r: RecloopApp, handles: LearningHandles) -> None:
        self.r, self.handles = r, handles

    async def forward(self, record: LearnerRecord, position: SourcePosition | None = None) -> None:
        """Send a record to the learner; an interaction carries the partition it was read from."""
        key, value = envelope(record, position.partition if position is not None else None)
        await self.handles.topic.send(key=key, value=value)

    async def forward_feedback(self, feedback: ExplanationFeedback, position: SourcePosition | None = None) -> None:
        """Explanation feedback that says the *item* is irrelevant is a label for the ranker: send it on; feedback
        about the explanation alone only teaches the explanation policy (:mod:`streams.monitoring`)."""
        if is_irrelevant(feedback):
            await self.forward(feedback)

    async def send_dead_letter(self, letter: DeadLetter) -> None:
        self.handles.dead_lettered += 1
        await self.r.dlq.send(key=letter.source_topic.encode(), value=encode(letter))

    async def forward_impressions(self, stream: faust.StreamT) -> None:
        """Validate impressions (served recommendations) and forward them; a bad one is dead-lettered."""
        async for event in stream.events():
            message = event.message
            position = SourcePosition(message.topic, message.partition, message.offset)
            result = validate(Impression, event.value, key=event.key, source=position)
            if isinstance(result, DeadLetter):
                await self.send_dead_letter(result)
            else:
                await self.forward(result)


class TrainingAgent:
    """The ``learner-train`` agent: inbox → micro-batches → the service in its executor → publish → acks.

    The stream is read with acks off and drained into the :class:`Inbox`; a separate task takes
    micro-batches from it, so a training step never stops the stream from being read (until the
    inbox is full). An event is acked only once a checkpoint holds it (:mod:`learner.checkpoint`): after
    every published version, and at least every ``checkpoint_interval_s`` while there is unsaved learning.
    After a restart the records the checkpoint already holds (offsets up to its ``through``) are acked
    without being learned again.
    """

    def __init__(self, r: RecloopApp, handles: LearningHandles, router: LearnerRouter, key: bytes, *,
                 model_updates: faust.TopicT, ops_metrics: faust.TopicT) -> None:
        self.r, self.handles, self.router, self.key = r, handles, router, key
        self.settings = handles.settings
        self.model_updates, self.ops_metrics = model_updates, ops_metrics
        self.inbox = handles.inbox
        self._loaded_through = -1  # input offsets at or below it are in the loaded checkpoint
        self._last_offset: int | None = None  # of the last record learned
        self._saved_offset: int | None = None  # of the last record in a checkpoint
        self._drift_hold = DriftHold(self.settings.drift_hold_s)
        self._alarms: TopicTail | None = None
        self._saved_at = 0.0

    async def consume(self, stream: faust.StreamT) -> None:
        """The agent's body: start the service and the training task, then drain the stream into the inbox."""
        manual = stream.noack()  # acks come from the ledger, once a step is settled
        executor, stop = service_executor(self.settings, self.r.kafka.home, self.key,
                                          learner_state_dir(self.r.kafka.home, self.r.app.conf.id))
        training = asyncio.ensure_future(self.train(manual, executor))
        training.add_done_callback(self._crash_on_failure)
        try:
            async for event in manual.events():
                await self.inbox.put(event)  # waits while the inbox is full: Faust then stops fetching this partition
        finally:
            training.cancel()
            stop.set()  # a running step returns at its next optimizer step; its events stay unacked
            executor.shutdown(wait=False, cancel_futures=True)

    async def train(self, stream: faust.StreamT, executor: Executor) -> None:
        """Micro-batches from the inbox → the service (in its executor) → publish → ack what is settled."""
        loop = asyncio.get_running_loop()
        self.handles.status = await loop.run_in_executor(executor, call_service, "status_dict")  # loads the model
        resumed = self.handles.status.get("checkpointed_through")
        if resumed is not None:
            self._loaded_through = self._saved_offset = resumed
            log.info("learner continues from its checkpoint: input records up to offset %d are already learned",
                     resumed)
        self._saved_at = loop.time()
        own = set(await loop.run_in_executor(executor, call_service, "trained_versions"))  # never adopted
        watcher = TopicTail(self.r.kafka, self.r.kafka.topic(topics.MODEL_UPDATES.name))
        await watcher.start()
        # the alarms of the last drift_hold_s seconds: a restarted learner keeps a hold that is still on
        self._alarms = TopicTail(self.r.kafka, self.r.kafka.topic(topics.OPS_DRIFT.name),
                                 since_s=self.settings.drift_hold_s)
        await self._alarms.start()
        try:
            while True:
                try:
                    events = await asyncio.wait_for(
                        self.inbox.take(self.settings.batch_size, within=self.settings.batch_within_s),
                        timeout=self.settings.checkpoint_interval_s)
                except TimeoutError:  # idle: save what the last events taught, so their offsets can be committed
                    await self._checkpoint(stream, executor)
                    continue
                await self._adopt_foreign_updates(watcher, own, executor)
                if self._jumps(events[0].message.offset):
                    await self._catch_up_with_checkpoint(executor, events[0].message.offset)
                events = await self._skip_checkpointed(stream, events)
                if events:
                    await self._step(stream, executor, events, own, watcher)
        finally:
            await watcher.stop()
            await self._alarms.stop()

    @property
    def _held_through(self) -> int:
        """The last input offset this learner's state holds (learned here, or in the loaded checkpoint)."""
        return self._last_offset if self._last_offset is not None else self._loaded_through

    def _jumps(self, offset: int) -> bool:
        """Whether the input continues past records this learner never saw (its partition was someone else's)."""
        return offset > self._held_through + 1

    async def _catch_up_with_checkpoint(self, executor: Executor, offset: int) -> None:
        """The input skips ahead of what this learner holds: load the checkpoint its previous owner wrote since."""
        loop = asyncio.get_running_loop()
        through = await loop.run_in_executor(executor, call_service, "reload_checkpoint")
        if through is not None:
            self._loaded_through = self._saved_offset = self._last_offset = through
            self.handles.status = await loop.run_in_executor(executor, call_service, "status_dict")
            log.info("learner took its input over at offset %d: loaded the checkpoint through offset %d", offset,
                     through)
        if self._jumps(offset):
            log.warning("learner input continues at offset %d, but its state holds only up to %s: the records "
                        "between were learned by another worker whose checkpoint is not in this state directory",
                        offset, self._held_through)

    async def _skip_checkpointed(self, stream: faust.StreamT, events: list) -> list:
        """Ack, without learning them again, the records a loaded checkpoint already holds (a restart's replay)."""
        done = [e for e in events if e.message.offset <= self._loaded_through]
        for event in done:
            await stream.ack(event)
        return [e for e in events if e.message.offset > self._loaded_through] if done else events

    async def _checkpoint(self, stream: faust.StreamT, executor: Executor) -> None:
        """Write the learner's state if it learned anything since the last checkpoint; ack what it now holds."""
        loop = asyncio.get_running_loop()
        if self._last_offset is None or self._last_offset == self._saved_offset:
            return
        settled = await loop.run_in_executor(executor, call_service, "checkpoint", self._last_offset)
        self._saved_offset, self._saved_at = self._last_offset, loop.time()
        self.handles.status = await loop.run_in_executor(executor, call_service, "status_dict")
        for event in self.handles.ledger.release(settled):
            await stream.ack(event)

    async def _step(self, stream: faust.StreamT, executor: Executor, events: list, own: set[str],
                    watcher: TopicTail) -> None:
        loop = asyncio.get_running_loop()
        batch, sources = await self._decode(events)
        hold = await self._held()
        started = loop.time()
        outcome = await loop.run_in_executor(executor, functools.partial(call_service, "process", batch, sources,
                                                                         hold=hold))
        seconds = loop.time() - started
        if outcome.updates and await self._adopt_foreign_updates(watcher, own, executor):
            # a rollback landed while this step ran: publishing now would undo it; its adapters stay unpublished
            log.warning("not publishing %s: another adapter was published meanwhile",
                        ", ".join(u.version for u in outcome.updates))
            outcome = dataclasses.replace(outcome, updates=())
        await self._publish(outcome)
        for update in outcome.updates:
            own.add(update.version)
            await loop.run_in_executor(executor, call_service, "mark_published", update.version)
        self.handles.status = outcome.status
        self.handles.ledger.hold(outcome.step, events)
        self._last_offset = events[-1].message.offset
        if outcome.updates or loop.time() - self._saved_at >= self.settings.checkpoint_interval_s:
            await self._checkpoint(stream, executor)  # a published version is always in a checkpoint
        log.info("learner step %d: %d events, %d examples, %d trained in %.2fs, published %s",
                 outcome.step, len(events), outcome.n_examples, outcome.n_trained, seconds,
                 ", ".join(u.version for u in outcome.updates) or None)

    async def _held(self) -> str | None:
        """Why publishing is held now: a critical item-mix alarm on the drift topic (:mod:`learner.drift_hold`)."""
        for raw in await self._alarms.poll():
            try:
                alarm = decode(DriftAlarm, raw)
            except InvalidRecord as exc:
                log.warning("ignoring an unreadable record on %s: %s", self._alarms.topic, exc)
                continue
            if self._drift_hold.observe(alarm):
                log.warning("publishing held: %s", self._drift_hold.why)
        return self._drift_hold.reason()

    async def _decode(self, events: Sequence[faust.EventT]) -> tuple[list[LearnerRecord], list[int | None]]:
        """The records of ``events`` and, parallel to them, the partition each interaction was read from."""
        batch: list[LearnerRecord] = []
        sources: list[int | None] = []
        for event in events:
            try:
                record, source = open_sourced_envelope(event.key, event.value)
            except InvalidRecord as exc:
                message = event.message
                await self.router.send_dead_letter(dead_letter(event.value, key=event.key, error=str(exc), source=(
                    SourcePosition(message.topic, message.partition, message.offset))))
                continue
            batch.append(record)
            sources.append(source)
        return batch, sources

    async def _publish(self, outcome: StepOutcome) -> None:
        """Send what a step produced and wait until the broker has it (acks=all)."""
        pending = []
        for update in outcome.updates:  # oldest first: each is the parent of the next
            pending.append(await self.model_updates.send(key=b"adapter", value=encode(update)))
        for snapshot in outcome.metrics:
            pending.append(await self.ops_metrics.send(key=snapshot.name.encode(), value=encode(snapshot)))
        for future in pending:
            await future

    async def _adopt_foreign_updates(self, watcher: TopicTail, own: set[str], executor: Executor) -> bool:
        """Adopt updates someone else published (a rollback); True if the learner's weights changed."""
        loop = asyncio.get_running_loop()
        adopted = False
        for raw in await watcher.poll():
            try:
                update = decode(AdapterUpdate, raw)
            except InvalidRecord as exc:
                log.warning("ignoring an unreadable record on %s: %s", watcher.topic, exc)
                continue
            if update.version in own:
                continue
            try:
                adopted |= await loop.run_in_executor(executor, call_service, "adopt", update)
            except AdapterRejected as exc:
                log.error("not adopting adapter %s from %s: %s", update.version, watcher.topic, exc.reason)
        return adopted

    def _crash_on_failure(self, task: asyncio.Task) -> None:
        """A failed trainer stops the worker: a restart re-reads every unsettled event from its committed offset,
        where a silently restarted agent would leave them unacked forever."""
        if not task.cancelled() and task.exception() is not None:
            log.error("learner failed; stopping the worker", exc_info=task.exception())
            asyncio.ensure_future(self.r.app.crash(task.exception()))


def check_learner_settings(settings: LearnerSettings) -> bytes:
    """The signing key; fails now, at start-up, if there is none, the base model is missing or CUDA is absent."""
    key = settings.signing_key()
    if not settings.tiny:
        from learner.encoder import base_model_dir

        base_model_dir(settings.model_dir)  # a missing base is a start-up error too, not a crash at batch 1
    if settings.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise LearnerConfigError("RECLOOP_LEARNER_DEVICE=cuda, but torch sees no CUDA device (use auto or cpu)")
    return key


def register_learning_agents(r: RecloopApp, downstream: Downstream,
                             settings: LearnerSettings | None = None) -> LearningHandles:
    """Wire the learner into the worker. Fails now, at start-up, if no signing key is configured."""
    settings = settings or LearnerSettings()
    key = check_learner_settings(settings)
    learner_topic = _raw_topic(r, learner_topic_name(r.app.conf.id), partitions=1, internal=True,
                               config={"max.message.bytes": str(MAX_MESSAGE_BYTES)})
    impressions = _raw_topic(r, r.kafka.topic(topics.IMPRESSIONS.name),
                             partitions=topics.partitions_for(topics.IMPRESSIONS, r.kafka),
                             config=topics.IMPRESSIONS.config())
    model_updates = _raw_topic(r, r.kafka.topic(topics.MODEL_UPDATES.name), partitions=1,
                               config=topics.MODEL_UPDATES.config())
    ops_metrics = _raw_topic(r, r.kafka.topic(topics.OPS_METRICS.name), partitions=1,
                             config=topics.OPS_METRICS.config())
    inbox = Inbox(high_water=settings.max_pending_events, low_water=settings.max_pending_events // 2)
    handles = LearningHandles(settings, learner_topic, inbox)
    router = LearnerRouter(r, handles)
    trainer = TrainingAgent(r, handles, router, key, model_updates=model_updates, ops_metrics=ops_metrics)
    downstream.interaction.append(router.forward)
    downstream.item.append(router.forward)
    downstream.feedback.append(router.forward_feedback)

    @r.app.agent(impressions, name="learner-impressions")
    async def forward_impressions(stream: faust.StreamT) -> None:
        await router.forward_impressions(stream)

    @r.app.agent(learner_topic, name="learner-train")
    async def train(stream: faust.StreamT) -> None:
        await trainer.consume(stream)

    @r.app.page("/learner/")
    async def learner_status(web: faust.web.Web, request: faust.web.Request) -> faust.web.Response:
        return web.json(handles.page())

    log.info("learner enabled: trainer on %s, batches of %d events within %.1fs, service in a %s",
             learner_topic_name(r.app.conf.id), settings.batch_size, settings.batch_within_s, settings.isolation)
    return handles

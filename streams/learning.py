"""The Faust side of online learning: route accepted records to one trainer, run it off the event loop.

Thin on purpose: every decision lives in :class:`learner.service.LearnerService`; these agents
only move records in, hand them to the service and send what it returns.

Data path::

    ingest loop (validated, deduplicated) ─────┐  interactions, catalogue items, "irrelevant" feedback
    recloop.impressions ─► learner-impressions ─┼─► <app_id>-learner-events (internal, 1 partition)
                                               ┘        └─► LearnerInput ─► Inbox ─► micro-batch (n, within s)
                                                               └─► run_in_executor → LearnerService (own process)

* The ingest ``Downstream`` hooks forward every accepted interaction and catalogue item (and explanation
  feedback that calls an item irrelevant: a weighted negative for the ranker) to an
  internal topic of **one partition**. However many workers run, exactly one owns that
  partition (the group ``<app id>-learner``, :mod:`streams.learner_input`) and trains, so adapters form one
  chain of versions; the others only ingest, and every item reaches the trainer whichever worker ingested its
  catalogue partition.
* Learning never blocks ingest, for three reasons measured on 2 cores:
  - :class:`streams.learner_input.LearnerInput` reads the internal topic a fetch at a time into an
    :class:`streams.inbox.Inbox`, and the trainer takes micro-batches from that (``n`` events, waiting at
    most ``within`` seconds), so a training step never stops the reading; when too much is pending the
    partition is paused, losslessly (docs/learner.md, "Back-pressure"). It replaced a Faust agent, whose
    per-event stream held the worker that trains to ~2,000 events/s;
  - each batch goes to the service with ``loop.run_in_executor``; by default
    (``RECLOOP_LEARNER_ISOLATION=process``) the service lives in a child process, because a
    training *thread* holds the GIL through its Python-heavy parts (example building, PEFT
    module calls) and starves the event loop. ``thread`` keeps it in-process for small setups;
  - the learner process runs at a lower CPU priority (``nice``), so training takes the cycles
    ingest leaves.

Offsets and durability (at-least-once; nothing is committed before its outcome is durable):

1. Upstream, an ingest batch's offsets are committed only after the broker acknowledged its forwards
   to the internal topic (the ingest ``Outbox``, see :mod:`streams.ingest_consumer`).
2. The learner's input offsets are committed only for records whose step the service reports as
   *settled*: its examples are trained, the gate has decided on that training, and a checkpoint on
   disk holds them. A publish is settled once the adapter directory is written and
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
from streams.app import RecloopApp, static_member_id
from streams.inbox import AckLedger, Inbox
from streams.ingest import SourcePosition, dead_letter, validate
from streams.learner_input import LearnerInput, learner_group_id
from streams.record_batches import Outbox
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
    source: LearnerInput
    ledger: AckLedger = field(default_factory=AckLedger)
    status: dict = field(default_factory=lambda: {"state": "loading"})
    dead_lettered: int = 0

    def page(self) -> dict:
        """The worker's ``/learner/`` page: the service's status and the Faust side's counters."""
        return {**self.status, "topic": self.topic.get_topic_name(), "unacked_events": len(self.ledger),
                "pending_events": len(self.inbox), "paused": self.inbox.paused,
                "times_paused": self.inbox.times_paused, "dead_lettered": self.dead_lettered,
                "owns_input": self.source.owner}


def _raw_topic(r: RecloopApp, name: str, *, partitions: int | None = None, internal: bool = False,
               config: dict[str, str] | None = None) -> faust.TopicT:
    return r.app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                       partitions=partitions, internal=internal, config=config)


class LearnerRouter:
    """Everything the learner sees goes through one internal topic: accepted records and impressions."""

    def __init__(self, r: RecloopApp, handles: LearningHandles, outbox: Outbox) -> None:
        self.r, self.handles, self.outbox = r, handles, outbox
        self.topic_name = handles.topic.get_topic_name()

    async def forward(self, record: LearnerRecord, position: SourcePosition | None = None) -> None:
        """Send an ingested record to the learner, with the ingest batch that accepted it (its outbox); an
        interaction carries the partition it was read from."""
        key, value = envelope(record, position.partition if position is not None else None)
        self.outbox.add(self.topic_name, 0, key, value)

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
                key, value = envelope(result)
                await self.handles.topic.send(key=key, value=value)


class TrainingAgent:
    """The trainer: inbox → micro-batches → the service in its executor → publish → commit.

    :class:`streams.learner_input.LearnerInput` fills the inbox; this task takes micro-batches from it, so a
    training step never stops the input from being read (until the inbox is full). A record's offset is
    committed only once a checkpoint holds it (:mod:`learner.checkpoint`): after every published version, and at
    least every ``checkpoint_interval_s`` while there is unsaved learning. After a restart the records the
    checkpoint already holds (offsets up to its ``through``) are committed without being learned again.
    """

    def __init__(self, r: RecloopApp, handles: LearningHandles, router: LearnerRouter, key: bytes, *,
                 model_updates: faust.TopicT, ops_metrics: faust.TopicT) -> None:
        self.r, self.handles, self.router, self.key = r, handles, router, key
        self.settings = handles.settings
        self.model_updates, self.ops_metrics = model_updates, ops_metrics
        self.inbox, self.source = handles.inbox, handles.source
        self._loaded_through = -1  # input offsets at or below it are in the loaded checkpoint
        self._last_offset: int | None = None  # of the last record learned
        self._saved_offset: int | None = None  # of the last record in a checkpoint
        self._drift_hold = DriftHold(self.settings.drift_hold_s)
        self._alarms: TopicTail | None = None
        self._saved_at = 0.0
        self._stop: Any = None
        self._executor: Executor | None = None
        self._tasks: list[asyncio.Future] = []

    async def run(self) -> None:
        """Start the service (in its executor), the input and the training loop; a failure of either stops the
        worker."""
        await self.handles.topic.maybe_declare()  # before the input subscribes to it
        self._executor, self._stop = service_executor(self.settings, self.r.kafka.home, self.key,
                                                      learner_state_dir(self.r.kafka.home, self.r.app.conf.id))
        self._tasks = [asyncio.ensure_future(self.source.run()), asyncio.ensure_future(self.train(self._executor))]
        for task in self._tasks:
            task.add_done_callback(self._crash_on_failure)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def stop(self) -> None:
        """Stop training and leave the group; a running step returns at its next optimizer step, unsettled, so
        its records are read again after the restart."""
        for task in self._tasks[1:]:
            task.cancel()
        if self._stop is not None:
            self._stop.set()
        await self.source.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def train(self, executor: Executor) -> None:
        """Micro-batches from the inbox → the service (in its executor) → publish → commit what is settled."""
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
                    await self._checkpoint(executor)
                    continue
                await self._adopt_foreign_updates(watcher, own, executor)
                if self._discontinuous(events[0].offset):
                    await self._reload_checkpoint(executor, events[0].offset)
                events = await self._skip_checkpointed(events)
                if events:
                    await self._step(executor, events, own, watcher)
        finally:
            await watcher.stop()
            await self._alarms.stop()

    @property
    def _held_through(self) -> int:
        """The last input offset this learner's state holds (learned here, or in the loaded checkpoint)."""
        return self._last_offset if self._last_offset is not None else self._loaded_through

    def _discontinuous(self, offset: int) -> bool:
        """Whether the input does not continue this learner's state: it skips ahead past records this learner never
        saw (its partition was someone else's), or goes back to records it learned (the partition left and came
        back: what it learned after the committed offset is read again)."""
        return offset > self._held_through + 1 or (self._last_offset is not None and offset <= self._last_offset)

    async def _reload_checkpoint(self, executor: Executor, offset: int) -> None:
        """The input does not continue what this learner holds: load the newest checkpoint (its previous owner's,
        or its own), so each record is learned on top of the state that preceded it."""
        loop = asyncio.get_running_loop()
        rewind = offset <= self._held_through
        through = await loop.run_in_executor(executor, call_service, "reload_checkpoint", rewind)
        if through is not None:
            self._loaded_through = self._saved_offset = self._last_offset = through
            self.handles.ledger.clear()  # learned since the checkpoint, not in it: those records come again
            self.handles.status = await loop.run_in_executor(executor, call_service, "status_dict")
            log.info("learner input continues at offset %d: loaded the checkpoint through offset %d", offset,
                     through)
        if offset > self._held_through + 1:
            log.warning("learner input continues at offset %d, but its state holds only up to %s: the records "
                        "between were learned by another worker whose checkpoint is not in this state directory",
                        offset, self._held_through)

    async def _skip_checkpointed(self, events: list) -> list:
        """Commit, without learning them again, the records a loaded checkpoint already holds (a restart's replay)."""
        done = [e for e in events if e.offset <= self._loaded_through]
        await self.source.commit(done)
        return [e for e in events if e.offset > self._loaded_through] if done else events

    async def _checkpoint(self, executor: Executor) -> None:
        """Write the learner's state if it learned anything since the last checkpoint; ack what it now holds."""
        loop = asyncio.get_running_loop()
        if self._last_offset is None or self._last_offset == self._saved_offset:
            return
        settled = await loop.run_in_executor(executor, call_service, "checkpoint", self._last_offset)
        self._saved_offset, self._saved_at = self._last_offset, loop.time()
        self.handles.status = await loop.run_in_executor(executor, call_service, "status_dict")
        await self.source.commit(self.handles.ledger.release(settled))

    async def _step(self, executor: Executor, events: list, own: set[str], watcher: TopicTail) -> None:
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
        self._last_offset = events[-1].offset
        if outcome.updates or loop.time() - self._saved_at >= self.settings.checkpoint_interval_s:
            await self._checkpoint(executor)  # a published version is always in a checkpoint
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

    async def _decode(self, events: Sequence[Any]) -> tuple[list[LearnerRecord], list[int | None]]:
        """The records of ``events`` (consumer records) and, parallel to them, the partition each interaction was
        read from."""
        batch: list[LearnerRecord] = []
        sources: list[int | None] = []
        for event in events:
            try:
                record, source = open_sourced_envelope(event.key, event.value)
            except InvalidRecord as exc:
                await self.router.send_dead_letter(dead_letter(event.value, key=event.key, error=str(exc), source=(
                    SourcePosition(event.topic, event.partition, event.offset))))
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

    def _crash_on_failure(self, task: asyncio.Future) -> None:
        """A failed trainer or input stops the worker: a restart re-reads every unsettled record from its committed
        offset, where a silently stopped trainer would leave them uncommitted forever."""
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
    source = LearnerInput(r.kafka, learner_topic.get_topic_name(), inbox, group_id=learner_group_id(r.app.conf.id),
                          group_instance_id=static_member_id(r, "learner"))
    handles = LearningHandles(settings, learner_topic, inbox, source)
    router = LearnerRouter(r, handles, downstream.outbox)
    trainer = TrainingAgent(r, handles, router, key, model_updates=model_updates, ops_metrics=ops_metrics)
    downstream.interaction.append(router.forward)
    downstream.item.append(router.forward)
    downstream.feedback.append(router.forward_feedback)

    @r.app.agent(impressions, name="learner-impressions")
    async def forward_impressions(stream: faust.StreamT) -> None:
        await router.forward_impressions(stream)

    @r.app.task
    async def train() -> None:
        await trainer.run()

    @r.app.on_before_shutdown.connect
    async def stop_training(app: faust.App, **_: Any) -> None:
        await trainer.stop()

    @r.app.page("/learner/")
    async def learner_status(web: faust.web.Web, request: faust.web.Request) -> faust.web.Response:
        return web.json(handles.page())

    log.info("learner enabled: trainer on %s, batches of %d events within %.1fs, service in a %s",
             learner_topic_name(r.app.conf.id), settings.batch_size, settings.batch_within_s, settings.isolation)
    return handles

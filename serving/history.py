"""What every serving worker knows about shoppers and the catalogue, kept current from the stream.

Each worker follows ``recloop.interactions``, ``recloop.catalog`` and ``recloop.explanation-feedback`` whole,
with a group-less consumer from the beginning: workers do not share partitions, because any worker may be
asked about any shopper. Interactions are learned with the partition they were read from, so baskets are
assembled per partition exactly as the learner's are, however the partitions' fetches interleave.
The state lives in :class:`LiveBehaviour` (plain, testable without a broker);
:class:`HistoryFollower` only feeds it.

Everything here runs on the event loop; request handlers read it on the same loop, so no lock is needed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition

from learner.rich_features import RichFeatures
from serving.filters import CatalogueFacts, Filters
from serving.state import CatalogueSnapshot, ServingState
from streams.dedup import RECENT_IDS, remember_once
from streams.records import ExplanationFeedback, Interaction, InvalidRecord, Item, decode
from streams.settings import KafkaSettings
from streams.topics import CATALOG, EXPLANATION_FEEDBACK, INTERACTIONS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankingInputs:
    """A shopper's inputs to :meth:`~serving.state.ServingState.top_k`, for every item of one serving state."""

    #: the shopper's history items the state has vectors for, oldest first
    history: list[int]
    #: feature rows ``float32 [n_items, len(FEATURE_NAMES)]`` (:meth:`~learner.rich_features.RichFeatures.matrix`)
    rows: np.ndarray
    #: days since each item's first sale, 0 when never sold: not a model input, the new-item stage's
    #: (:mod:`serving.new_items`)
    ages: np.ndarray


class LiveBehaviour:
    """Behavioural features plus item titles, aligned on one append-only item index.

    >>> live = LiveBehaviour()
    >>> live.learn_item(Item(item_id="85123A", title="WHITE HANGING HEART T-LIGHT HOLDER"))
    >>> live.learn_interaction(Interaction("e1", "u1", "22423", "purchase", 1291191960.0))
    >>> snap = live.snapshot()
    >>> snap.texts, snap.recommendable.tolist()
    (('WHITE HANGING HEART T-LIGHT HOLDER', '22423'), [True, False])
    """

    def __init__(self, features: RichFeatures | None = None) -> None:
        self._init(features if features is not None else RichFeatures())

    def reset(self) -> None:
        """Forget everything learned, in place (whoever holds this object sees the empty state)."""
        self._init(RichFeatures(lateness_s=self.features.lateness_s))
        self.generation += 1  # states built before are stale

    def _init(self, features: RichFeatures) -> None:
        generation = getattr(self, "generation", 0)
        self.features = features
        self._texts: list[str] = []  # what the text tower encodes (Item.text)
        self._titles: list[str] = []  # what a shopper reads
        self._titled: list[bool] = []
        #: listed (recommendable), category, price, availability per item: what filters read
        self.facts = CatalogueFacts()
        self.generation = generation
        self.counts: Counter[str] = Counter()
        self._feedback_seen: OrderedDict[str, None] = OrderedDict()  # the last RECENT_IDS feedback event ids
        self._snapshot: CatalogueSnapshot | None = None
        self._all = np.arange(0)
        self._sync_index()

    # ------------------------------------------------------------------ learning

    def learn_item(self, item: Item) -> None:
        index = self.features.add_item(item.item_id)
        self._sync_index()
        text, title = item.text, item.title.strip() or item.item_id
        if self._texts[index] != text or not self._titled[index]:
            self._texts[index] = text
            self._titled[index] = True
            self.generation += 1
        self._titles[index] = title  # display only: no new state needed
        if self.facts.learn(index, category=item.category, price=item.price, available=item.available):
            self.generation += 1  # listed, or taken off by available=false
        self.counts["items"] += 1

    def forget_item(self, item_id: str) -> None:
        """A catalogue tombstone: the item is no longer recommended (its history stays)."""
        index = self.features.index.index_of(item_id)
        if index >= 0 and self.facts.remove(index):
            self.generation += 1

    def learn_interaction(self, event: Interaction, source: int | None = None) -> None:
        """Learn one interaction; ``source`` is the partition it was read from (baskets are closed per partition,
        as the learner does: :mod:`learner.features`, "Basket assembly"), ``None`` for one ordered stream."""
        self.features.learn_interaction(event.user_id, event.item_id, event.type, event.ts,
                                        basket_id=event.session_id, source=source)
        self._sync_index()
        self.counts["interactions"] += 1

    def learn_feedback(self, feedback: ExplanationFeedback) -> None:
        """Explanation feedback: "not helpful, irrelevant" dismisses the item for that shopper (their ``dismissed``
        column, which the model weighs against it), the learner's rule (:meth:`RichFeatures.learn_feedback`).
        A redelivered event (same ``event_id``: a client's retry, a replay) counts once, as in the worker."""
        if not remember_once(self._feedback_seen, feedback.event_id, RECENT_IDS):
            self.counts["duplicate_feedback"] += 1
            return
        if self.features.learn_feedback(feedback):
            self._sync_index()
            self.counts["dismissals"] += 1
        self.counts["feedback"] += 1

    def _sync_index(self) -> None:
        """Items first seen in interactions get their id as text until the catalogue names them."""
        codes = self.features.index
        if len(codes) == len(self._texts):
            return
        for index in range(len(self._texts), len(codes)):
            self._texts.append(codes.code_of(index))
            self._titles.append(codes.code_of(index))
            self._titled.append(False)
        self.facts.grow(len(self._texts))
        self.generation += 1

    # ------------------------------------------------------------------ reading

    def title(self, index: int) -> str:
        return self._titles[index]

    def item_id(self, index: int) -> str:
        return self.features.index.code_of(index)

    def visit(self, ts: float) -> None:
        """A shopper visits at event time ``ts``: every basket before it is complete and counts for ranking
        (the offline protocol's rule: a basket is ranked with everything of strictly earlier timestamps).
        Never past the wall clock, so a request cannot move event time into the future.

        >>> live = LiveBehaviour()
        >>> live.learn_interaction(Interaction("e1", "u1", "A", "purchase", 1291191960.0))
        >>> live.features.knows("u1"), live.visit(1291191961.0), live.features.knows("u1")
        (False, None, True)
        """
        self.features.advance_to(min(ts, time.time()))

    def ranking_inputs(self, state: ServingState, user_id: str, max_history: int) -> RankingInputs:
        """What a shopper's catalogue is ranked from (:class:`RankingInputs`) — the same inputs for
        ``/recommend`` and ``recloop eval``."""
        if len(self._all) != state.n_items:
            self._all = np.arange(state.n_items)
        return RankingInputs(self.usable_history(state, user_id, max_history),
                             self.features.matrix(user_id, self._all), self.features.item_age_days(self._all))

    def usable_history(self, state: ServingState, user_id: str, max_history: int) -> list[int]:
        """The shopper's history items ``state`` has vectors for, oldest first (what :meth:`ranking_inputs` gives)."""
        return state.usable_history(self.features.history(user_id, max_history))

    def allowed(self, state: ServingState, filters: Filters, user_id: str | None = None) -> np.ndarray:
        """``[state.n_items]``: which items of ``state`` a list may hold now — listed in the live catalogue (a
        removal counts from the next request, before any state refresh) and in the state's, and passing
        ``filters``. Raises :class:`serving.filters.InvalidFilter`."""
        purchased = self.features.repeat.items_of(user_id) if filters.exclude_purchased and user_id else ()
        allowed = self.facts.allowed(state.n_items, filters, purchased)
        allowed &= state.catalogue.recommendable[: state.n_items]  # an item listed since waits for its vector
        return allowed

    def snapshot(self) -> CatalogueSnapshot:
        """An immutable copy for building a state in another thread (cached until something changes)."""
        if self._snapshot is None or self._snapshot.generation != self.generation:
            self._snapshot = CatalogueSnapshot(tuple(self._texts), self.facts.listed.copy(), self.generation)
        return self._snapshot

    # ------------------------------------------------------------------ raw messages

    def apply(self, topic_name: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> None:
        """Learn one raw message of the catalog, interactions or explanation-feedback topic (read from
        ``partition``); invalid ones are counted and skipped.

        The worker's ingest agents send invalid messages to the dead-letter topic; a serving worker
        only needs not to trip over them.
        """
        try:
            if topic_name == CATALOG.name:
                if value is None and key:
                    self.forget_item(key.decode("utf-8", "replace"))
                else:
                    self.learn_item(decode(Item, value))
            elif topic_name == EXPLANATION_FEEDBACK.name:
                self.learn_feedback(decode(ExplanationFeedback, value))
            else:
                self.learn_interaction(decode(Interaction, value), source=partition)
        except InvalidRecord as exc:
            self.counts["invalid"] += 1
            log.debug("skipped invalid %s message: %s", topic_name, exc)


class HistoryFollower:
    """Feeds every catalog, interaction and explanation-feedback message to :class:`LiveBehaviour`, from the
    beginning, forever.

    It starts from the positions of a snapshot when it is given one (:mod:`serving.snapshot`), and a restarted
    run resumes where the last one stopped.

    Partitions are read in turns of at most ``chunk`` records each. aiokafka's ``getmany`` drains one
    partition's fetched records before the next, so a catch-up would otherwise learn runs of thousands of
    records of one partition — days of its event time — while the others are silent, and a partition left
    mid-basket at the end of its run could look quiet to the features (:mod:`learner.features`, "Basket
    assembly"). Small turns keep the partitions interleaved as the learner sees them.
    """

    def __init__(self, kafka: KafkaSettings, live: LiveBehaviour, *, chunk: int = 50,
                 positions: dict[tuple[str, int], int] | None = None) -> None:
        self.kafka = kafka
        self.live = live
        self.chunk = chunk
        self.caught_up = asyncio.Event()
        self._names = {kafka.topic(spec.name): spec.name for spec in (CATALOG, INTERACTIONS, EXPLANATION_FEEDBACK)}
        #: (topic, partition) -> offset of the next message to learn: where ``live`` stands (a snapshot's
        #: positions at boot; a restarted follower resumes there instead of learning anything twice)
        self.positions: dict[tuple[str, int], int] = dict(positions or {})

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(*self._names, **self.kafka.aiokafka_options(), group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest")
        await consumer.start()
        try:
            partitions = await self._assign(consumer)
            ends = await consumer.end_offsets(partitions)
            await self._forget_positions_beyond(consumer, partitions, ends)
            pending = {tp: end for tp, end in ends.items() if end > 0}
            if not pending:
                self._mark_caught_up()
            while True:
                read = 0
                for tp in partitions:  # one turn each
                    read += self._apply(await consumer.getmany(tp, timeout_ms=0, max_records=self.chunk))
                if not read:  # nothing fetched yet: wait for the first partition that has something
                    self._apply(await consumer.getmany(timeout_ms=500, max_records=self.chunk))
                if pending:
                    for tp in list(pending):
                        if await consumer.position(tp) >= pending[tp]:
                            del pending[tp]
                    if not pending:
                        self._mark_caught_up()
                await asyncio.sleep(0)  # let requests in between turns during a long catch-up
        finally:
            await consumer.stop()

    def _apply(self, batches: dict) -> int:
        """Learn fetched messages, each with the partition it was read from; how many there were."""
        n = 0
        for tp, messages in batches.items():
            name = self._names[tp.topic]
            for message in messages:
                self.live.apply(name, message.key, message.value, message.partition)
            if messages:
                self.positions[(tp.topic, tp.partition)] = messages[-1].offset + 1
            n += len(messages)
        return n

    async def _forget_positions_beyond(self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition],
                                       ends: dict[TopicPartition, int]) -> None:
        """A position past a partition's end means the topics were deleted and created again since ``live`` read
        them (a snapshot of other topics under the same names): forget everything and read from the beginning,
        rather than learn the new topics on top of the old ones."""
        beyond = [tp for tp in partitions if self.positions.get((tp.topic, tp.partition), 0) > ends[tp]]
        if not beyond:
            return
        log.error("positions past the end of %s: the topics were created again; forgetting the snapshot's state "
                  "and reading them from the beginning", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in beyond))
        self.live.reset()
        self.positions.clear()
        await consumer.seek_to_beginning(*partitions)

    async def _assign(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        """Wait until every partition of the followed topics is assigned (group-less: all of them), then seek each
        to where :attr:`positions` says ``live`` stands (the beginning where it says nothing)."""
        partitions = await wait_for_assignment(consumer, set(self._names))
        await consumer.seek_to_beginning(*partitions)
        for tp in partitions:
            position = self.positions.get((tp.topic, tp.partition))
            if position is not None:
                consumer.seek(tp, position)
        return partitions

    def _mark_caught_up(self) -> None:
        if not self.caught_up.is_set():
            log.info("caught up with catalogue, interactions and feedback: %s", dict(self.live.counts))
            self.caught_up.set()


async def wait_for_assignment(consumer: AIOKafkaConsumer, topics: set[str], timeout_s: float = 60.0,
                              ) -> list[TopicPartition]:
    """The partitions a group-less, subscribed consumer holds once it holds some of every topic."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while {tp.topic for tp in consumer.assignment()} != topics:
        if loop.time() > deadline:
            missing = topics - {tp.topic for tp in consumer.assignment()}
            raise RuntimeError(f"topics {sorted(missing)} do not exist; run `recloop topics create`")
        await asyncio.sleep(0.1)
    return sorted(consumer.assignment())

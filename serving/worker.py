"""One serving worker: its state, the stream followers that keep it current, and what each request needs.

:class:`ServingWorker` composes the pieces (stream followers, state updater, recommender, impression log,
feedback sink, metrics); :mod:`serving.app` only maps HTTP onto it. Without a Kafka configuration the worker
runs with an in-memory publisher and whatever state a test gives it, so everything above the broker is
testable in-process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

from learner.encoder import Base
from learner.rich_features import RichFeatures
from serving.feedback import FeedbackRejected, parse_feedback
from serving.filters import Filters
from serving.history import HistoryFollower, LiveBehaviour
from serving.metrics import ServingMetrics
from serving.policy import PolicyFollower, PolicyHolder
from serving.publishing import ImpressionLog, KafkaPublisher, MemoryPublisher, Publisher
from serving.recommender import NO_FILTERS, Recommendation, Recommender
from serving.settings import ServingSettings
from serving.similar import explain_neighbour, similar_items
from serving.snapshot import ServingSnapshot, capture, read_snapshot, snapshot_path, write_snapshot
from serving.state import ServingState, StateBuilder, StateHolder
from serving.updates import StateUpdater, UpdateFollower
from streams.records import ExplanationFeedback, encode
from streams.settings import KafkaSettings
from streams.topics import EXPLANATION_FEEDBACK, IMPRESSIONS, INTERACTIONS

log = logging.getLogger(__name__)


class UnknownItem(Exception):
    """The item is not in the catalogue this worker serves (never seen, removed, or not yet arrived)."""


class NotReady(Exception):
    """No model version is serving yet."""


class ServingWorker:
    """One serving worker: its state, the stream followers that keep it current, and what requests need."""

    def __init__(self, settings: ServingSettings, base: Base, kafka: KafkaSettings | None = None, *,
                 publisher: Publisher | None = None, live: LiveBehaviour | None = None) -> None:
        self.settings = settings
        self.kafka = kafka
        self.key = settings.signing_key()
        self.metrics = ServingMetrics()
        restored = self._restore(settings, kafka) if live is None else None
        if live is None:
            live = restored.live if restored is not None else LiveBehaviour(
                RichFeatures(lateness_s=settings.basket_lateness_s))
        self.live = live
        self.booted_from_snapshot = restored is not None
        self.holder = StateHolder()
        self.builder = StateBuilder(base)
        self.updater = StateUpdater(self.builder, self.holder, self.live, self.key, self.metrics)
        self.policies = PolicyHolder(self.key, self.metrics)
        self.recommender = Recommender(self.live, settings, self.policies)
        self.publisher: Publisher = publisher or (KafkaPublisher(kafka) if kafka is not None else MemoryPublisher())
        self.impressions = ImpressionLog(self.publisher, self._topic(IMPRESSIONS.name), self.metrics,
                                         settings.max_pending_impressions)
        self.history = (HistoryFollower(kafka, self.live, positions=restored.positions if restored else None)
                        if kafka is not None else None)
        self.updates = UpdateFollower(kafka, self.updater) if kafka is not None else None
        self.policy_follower = PolicyFollower(kafka, self.policies) if kafka is not None else None
        self._tasks: list[asyncio.Task] = []
        self._snapshot_marker: tuple | None = None
        self.started = time.time()

    @staticmethod
    def _restore(settings: ServingSettings, kafka: KafkaSettings | None) -> ServingSnapshot | None:
        if kafka is None or settings.snapshot_every_s <= 0:
            return None
        return read_snapshot(snapshot_path(kafka.home, kafka.topic_prefix), kafka.topic_prefix)

    async def save_snapshot(self) -> int:
        """Capture the state and its positions (on the loop, so they agree) and write them (in a thread); the
        size in bytes, 0 when nothing changed since the last one."""
        if self.history is None or self.kafka is None:
            return 0
        marker = (sum(self.live.counts.values()), self.live.generation, tuple(sorted(self.history.positions.items())))
        if marker == self._snapshot_marker:
            return 0
        started = time.perf_counter()
        data = capture(ServingSnapshot(self.kafka.topic_prefix, dict(self.history.positions), self.live))
        captured_ms = (time.perf_counter() - started) * 1000
        size = await asyncio.to_thread(write_snapshot, snapshot_path(self.kafka.home, self.kafka.topic_prefix), data)
        self._snapshot_marker = marker
        log.info("serving snapshot bytes=%d capture_ms=%.0f total_ms=%.0f", size, captured_ms,
                 (time.perf_counter() - started) * 1000)
        return size

    def _topic(self, name: str) -> str:
        return self.kafka.topic(name) if self.kafka is not None else f"recloop.{name}"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if isinstance(self.publisher, KafkaPublisher):
            await self.publisher.start()
        if self.history is not None and self.updates is not None:
            self._tasks.append(asyncio.create_task(_forever("history", self.history.run)))
            self._tasks.append(asyncio.create_task(self._boot_then_follow()))
        if self.policy_follower is not None:
            self._tasks.append(asyncio.create_task(_forever("explanation-policy", self.policy_follower.run)))
        self._tasks.append(asyncio.create_task(_every(self.settings.catalogue_refresh_s, "catalogue refresh",
                                                      self.updater.refresh_catalogue)))
        if self.history is not None and self.settings.snapshot_every_s > 0:
            self._tasks.append(asyncio.create_task(_every(self.settings.snapshot_every_s, "serving snapshot",
                                                          self.save_snapshot)))

    async def _boot_then_follow(self) -> None:
        try:
            await asyncio.wait_for(self.history.caught_up.wait(), self.settings.catch_up_timeout_s)
        except TimeoutError:
            log.warning("not caught up with the catalogue after %.0fs; serving with what has arrived",
                        self.settings.catch_up_timeout_s)
        await _forever("model-updates", self.updates.run)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with suppress(asyncio.CancelledError, Exception):
                await task
        if self.settings.snapshot_every_s > 0:
            try:  # a graceful stop leaves the freshest snapshot behind: the next boot reads only the tail
                await self.save_snapshot()
            except Exception:
                log.exception("serving snapshot at stop failed")
        await self.impressions.drain()
        if isinstance(self.publisher, KafkaPublisher):
            await self.publisher.stop()

    @property
    def ready(self) -> bool:
        return self.holder.current is not None and (self.updates is None or self.updates.booted.is_set())

    # ------------------------------------------------------------------ requests

    def _state(self) -> ServingState:
        state = self.holder.current  # a request keeps this state, whatever is swapped in meanwhile
        if state is None:
            raise NotReady()
        return state

    def _served(self, recommendation: Recommendation) -> Recommendation:
        impression = recommendation.impression()
        if impression is not None:
            self.impressions.log(impression)
        return recommendation

    async def recommend(self, user_id: str, k: int, ts: float | None = None,
                        filters: Filters = NO_FILTERS) -> Recommendation:
        """``ts``: the visit's event time, stamped on the impression (wall-clock time when None)."""
        return self._served(await self.recommender.recommend(self._state(), user_id, k, ts=ts, filters=filters))

    async def search(self, query: str, user_id: str | None, k: int, filters: Filters = NO_FILTERS,
                     ts: float | None = None) -> Recommendation:
        """The catalogue searched for ``query`` (:mod:`serving.search`); an impression (source ``search``, at the
        visit's event time ``ts``, default now) when a ``user_id`` is given."""
        return self._served(await self.recommender.search(self._state(), query, user_id, k, filters, ts=ts))

    async def similar(self, item_id: str, user_id: str | None, k: int, filters: Filters = NO_FILTERS
                      ) -> Recommendation:
        """The product page's neighbours of ``item_id`` (:mod:`serving.similar`), ranked for ``user_id`` when the
        model knows the shopper. Raises :class:`NotReady`, or :class:`UnknownItem` for an item not served."""
        state = self._state()
        features = self.live.features
        item = features.index.index_of(item_id)
        if item < 0 or item >= state.n_items or not state.catalogue.recommendable[item]:
            raise UnknownItem(item_id)
        allowed = self.live.allowed(state, filters, user_id)
        personal = None
        if user_id is not None and features.knows(user_id):
            inputs = self.live.ranking_inputs(state, user_id, self.settings.max_history)
            scores, _ = state.score_all(inputs.history, inputs.rows)
            personal = scores.numpy()
        neighbours = similar_items(features, state, item, k, allowed, personal)
        items = [{"item_id": self.live.item_id(n.item), "title": self.live.title(n.item), "score": round(n.score, 6),
                  "explanation": explain_neighbour(n, item, self.live.title)} for n in neighbours]
        policy = self.policies.current
        return self._served(Recommendation(
            self.recommender.new_rec_id(), user_id, time.time(), state.version, items,
            policy.version if policy is not None else None, source="similar", page_item_id=item_id,
            extra={"item_id": item_id, "personalised": personal is not None}))

    async def feedback(self, body: bytes) -> dict[str, Any]:
        record = parse_feedback(body)
        kind = "explanation" if isinstance(record, ExplanationFeedback) else record.type
        topic = self._topic(EXPLANATION_FEEDBACK.name if kind == "explanation" else INTERACTIONS.name)
        try:
            await asyncio.wait_for(self.publisher.send(topic, record.user_id.encode(), encode(record)), 10)
        except Exception as exc:
            self.metrics.feedback.labels(kind, "failed").inc()
            log.warning("feedback %s not delivered: %s", record.event_id, exc)
            raise FeedbackRejected(503, "feedback could not be delivered; retry later") from None
        self.metrics.feedback.labels(kind, "accepted").inc()
        return {"accepted": kind, "event_id": record.event_id, "topic": topic}

    def health(self) -> dict[str, Any]:
        state = self.holder.current
        return {"status": "ok" if self.ready else "starting", "pid": os.getpid(),
                "model_version": state.version if state else None,
                "items": state.n_items if state else 0, "swaps": self.metrics.swap_count,
                "rejected_updates": self.metrics.rejected_count,
                "policy_version": self.policies.version, "policy_swaps": self.metrics.policy_swap_count,
                "rejected_policies": self.metrics.rejected_policy_count,
                "last_swap_apply_ms": self.metrics.last_swap_apply_ms,
                "max_swap_apply_ms": self.metrics.max_swap_apply_ms,
                "scoring_ms": round(self.recommender.scoring_ms, 3), "counts": dict(self.live.counts),
                "booted_from_snapshot": self.booted_from_snapshot, "uptime_s": round(time.time() - self.started, 1)}


async def _every(interval_s: float, name: str, action: Callable[[], Awaitable[object]]) -> None:
    """Run ``action`` every ``interval_s`` seconds; a failure is logged and the next round comes as planned."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await action()
        except Exception:
            log.exception("%s failed; retrying in %.0fs", name, interval_s)


async def _forever(name: str, run: Callable[[], Awaitable[None]], retry_s: float = 2.0) -> None:
    """Keep a stream follower running: log a crash and start it again (it resumes from the beginning)."""
    while True:
        try:
            await run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s follower failed; restarting in %.0fs", name, retry_s)
        await asyncio.sleep(retry_s)


def load_serving_base(settings: ServingSettings) -> Base:
    from learner.encoder import load_base, tiny_bert

    return tiny_bert(seed=0) if settings.tiny else load_base(settings.model_dir)

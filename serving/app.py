"""The serving worker: ``/recommend`` with explanations, ``/feedback``, ``/healthz``, ``/metrics``.

:class:`ServingWorker` composes the pieces (stream followers, state updater, recommender,
impression log, feedback sink, metrics); :func:`create_app` only maps HTTP onto it. Without a
Kafka configuration the worker runs with an in-memory publisher and whatever state a test gives
it, so everything above the broker is testable in-process.

Requests are cheap on CPU: one feature matrix over the whole catalogue (numpy), one
matrix-vector product and the fusion head (torch), and a top-k. Responses are serialised with
orjson directly; the pydantic response models below document them in OpenAPI. The ``/feedback``
request models are derived from the records (:func:`streams.record_schemas.request_model`), and
bodies are read by the records' own rules, so the API accepts exactly what its schema declares.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

import numpy as np
import orjson
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from pydantic import BaseModel, Field

from learner.encoder import Base
from learner.rich_features import FEATURE_NAMES, RichFeatures
from serving.explain import Explainer, Explanation, with_calibrated_confidence
from serving.history import HistoryFollower, LiveBehaviour
from serving.policy import PolicyFollower, PolicyHolder, style_chooser
from serving.settings import MAX_K, ServingSettings
from serving.similar import explain_neighbour, similar_items
from serving.state import ServingState, StateBuilder, StateHolder, Swap
from serving.updates import StateUpdater, UpdateFollower
from streams.record_schemas import request_model
from streams.records import (
    ID_PATTERN,
    MAX_EVENT_BYTES,
    MAX_ID_CHARS,
    MAX_TS,
    MIN_TS,
    Choice,
    ExplanationFeedback,
    ExplanationPolicy,
    Impression,
    Interaction,
    InvalidRecord,
    RecommendedItem,
    encode,
    from_dict,
)
from streams.settings import KafkaSettings
from streams.topics import EXPLANATION_FEEDBACK, IMPRESSIONS, INTERACTIONS

log = logging.getLogger(__name__)

#: Interaction types a client may report through ``/feedback`` (purchases come from the shop's own feed).
FEEDBACK_INTERACTIONS = ("click",)
#: Record fields a ``/feedback`` body may leave out: the worker fills them in.
SERVER_FILLED = ("event_id", "ts")


# --------------------------------------------------------------------------- metrics


class ServingMetrics:
    """The worker's Prometheus metrics, in a registry of its own (several workers can share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_seconds = Histogram(
            "recloop_serving_request_seconds", "Time to answer a request, inside the worker", ["route"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5))
        self.requests = Counter("recloop_serving_requests", "Requests answered", ["route", "status"], registry=r)
        self.swaps = Counter("recloop_serving_swaps", "Serving states swapped in", ["cause"], registry=r)
        self.swap_apply_seconds = Histogram(
            "recloop_serving_swap_apply_seconds", "Time the swap itself took (a reference assignment)", registry=r,
            buckets=(1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.05))
        self.build_seconds = Histogram(
            "recloop_serving_state_build_seconds", "Time to build a new state off to the side", ["cause"], registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0))
        self.rejected_updates = Counter("recloop_serving_rejected_updates", "Adapter updates refused", ["kind"],
                                        registry=r)
        self.model = Info("recloop_serving_model", "The model version being served", registry=r)
        self.items = Gauge("recloop_serving_catalogue_items", "Items the serving state scores", registry=r)
        self.impressions = Counter("recloop_serving_impressions", "Impressions logged", ["outcome"], registry=r)
        self.feedback = Counter("recloop_serving_feedback", "Feedback accepted or refused", ["kind", "outcome"],
                                registry=r)
        self.ready = Gauge("recloop_serving_ready", "1 once a model version is serving", registry=r)
        self.policy_swaps = Counter("recloop_serving_policy_swaps", "Explanation policies swapped in", registry=r)
        self.rejected_policies = Counter("recloop_serving_rejected_policies", "Explanation policies refused",
                                         ["kind"], registry=r)
        self.policy_version = Gauge("recloop_serving_policy_version", "The explanation policy version serving",
                                    registry=r)
        self.policy_swap_count = 0
        self.rejected_policy_count = 0
        self.swap_count = 0
        self.rejected_count = 0
        self.max_swap_apply_ms = 0.0
        self.last_swap_apply_ms = 0.0

    def swapped(self, swap: Swap, cause: str) -> None:
        self.swaps.labels(cause).inc()
        self.swap_apply_seconds.observe(swap.apply_ms / 1000)
        self.build_seconds.labels(cause).observe(swap.current.built_ms / 1000)
        self.model.info({"version": swap.current.version})
        self.items.set(swap.current.n_items)
        self.ready.set(1)
        self.swap_count += 1
        self.last_swap_apply_ms = swap.apply_ms
        self.max_swap_apply_ms = max(self.max_swap_apply_ms, swap.apply_ms)

    def rejected(self, kind: str, reason: str) -> None:
        self.rejected_updates.labels(kind).inc()
        self.rejected_count += 1

    def policy_swapped(self, policy: ExplanationPolicy) -> None:
        self.policy_swaps.inc()
        self.policy_version.set(policy.version)
        self.policy_swap_count += 1

    def policy_rejected(self, kind: str, reason: str) -> None:
        self.rejected_policies.labels(kind).inc()
        self.rejected_policy_count += 1


# --------------------------------------------------------------------------- publishing


class Publisher(Protocol):
    """Delivers one message; raises if it could not."""

    async def send(self, topic: str, key: bytes, value: bytes) -> None: ...


class MemoryPublisher:
    """Keeps messages in a list: the publisher of a worker without Kafka (tests, offline use)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, bytes]] = []
        self.fail: Exception | None = None

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        if self.fail is not None:
            raise self.fail
        self.messages.append((topic, key, value))


class KafkaPublisher:
    """An aiokafka producer that waits for the broker's acknowledgement of each message."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self.producer = None  # aiokafka binds to the running loop, so it is created in start()

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer

        self.producer = AIOKafkaProducer(**self.kafka.aiokafka_options(), linger_ms=5,
                                         max_request_size=4 * 1024 * 1024)
        await self.producer.start()

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        if self.producer is None:
            raise ConnectionError("the Kafka producer is not started")
        delivery = await self.producer.send(topic, value, key=key)
        await delivery


class ImpressionLog:
    """Fire-and-forget impression logging: a response never waits for Kafka; failures are counted."""

    def __init__(self, publisher: Publisher, topic: str, metrics: ServingMetrics, max_pending: int) -> None:
        self.publisher = publisher
        self.topic = topic
        self.metrics = metrics
        self.max_pending = max_pending
        self._pending: set[asyncio.Task] = set()

    def log(self, impression: Impression) -> None:
        if len(self._pending) >= self.max_pending:
            self.metrics.impressions.labels("dropped").inc()
            return
        task = asyncio.get_running_loop().create_task(self._send(impression))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send(self, impression: Impression) -> None:
        try:
            await self.publisher.send(self.topic, impression.user_id.encode(), encode(impression))
        except Exception as exc:
            self.metrics.impressions.labels("failed").inc()
            log.warning("impression %s not logged: %s", impression.rec_id, exc)
        else:
            self.metrics.impressions.labels("sent").inc()

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Wait (bounded) for impressions still in flight, e.g. at shutdown."""
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=timeout_s)


# --------------------------------------------------------------------------- feedback


class FeedbackRejected(Exception):
    """A feedback body the worker will not accept; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_feedback(body: bytes, now: float | None = None) -> ExplanationFeedback | Interaction:
    """Validate a ``/feedback`` body into the record it describes.

    A body with ``explanation_id`` is a verdict on an explanation (:class:`ExplanationFeedbackIn`); one
    with ``type`` is a click (:class:`ClickIn`). Both are read by their record's own rules, the ones
    ingest applies, so the API accepts exactly what its OpenAPI schema says. ``event_id`` and ``ts`` are
    filled in when the client leaves them out (or sends null); a field the body's record does not have
    is refused rather than dropped.

    >>> parse_feedback(b'{"user_id":"u1","item_id":"i1","type":"click"}', now=1.3e9).type
    'click'
    >>> parse_feedback(b'{"user_id":"u1"}')
    Traceback (most recent call last):
    ...
    serving.app.FeedbackRejected: body must be explanation feedback (with explanation_id) or a click (with type)
    >>> parse_feedback(b'{"user_id":"u1","item_id":"i1","type":"click","helpfull":true}')
    Traceback (most recent call last):
    ...
    serving.app.FeedbackRejected: unknown field 'helpfull' for a click
    """
    if len(body) > MAX_EVENT_BYTES:
        raise FeedbackRejected(413, f"body of {len(body)} bytes exceeds the {MAX_EVENT_BYTES}-byte limit")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise FeedbackRejected(400, "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise FeedbackRejected(422, "body must be a JSON object")
    if "explanation_id" in data:
        record_type, model, kind = ExplanationFeedback, ExplanationFeedbackIn, "explanation feedback"
    elif "type" in data:
        record_type, model, kind = Interaction, ClickIn, "a click"
    else:
        raise FeedbackRejected(422, "body must be explanation feedback (with explanation_id) or a click (with type)")
    unknown = [name for name in data if name not in model.model_fields]
    if unknown:
        raise FeedbackRejected(422, f"unknown field {unknown[0][:40]!r} for {kind}")
    data = {name: value for name, value in data.items() if value is not None}
    try:
        if record_type is Interaction and "type" in data:
            CLICK_TYPE.check(data["type"], "type")
        return from_dict(record_type, {"event_id": uuid.uuid4().hex, "ts": time.time() if now is None else now,
                                       **data})
    except InvalidRecord as exc:
        raise FeedbackRejected(422, str(exc)) from None


# --------------------------------------------------------------------------- recommending

POPULARITY_COLUMN = FEATURE_NAMES.index("pop_30d")


@dataclass(frozen=True)
class Recommendation:
    rec_id: str
    user_id: str
    ts: float
    model_version: str
    items: list[dict[str, Any]]
    #: The explanation policy the styles were drawn from (None: no policy yet, the largest term decided).
    policy_version: int | None = None

    def body(self) -> bytes:
        return orjson.dumps({"rec_id": self.rec_id, "model_version": self.model_version,
                             "policy_version": self.policy_version, "items": self.items})

    def impression(self) -> Impression:
        return Impression(self.rec_id, self.user_id, self.ts, self.model_version, tuple(
            RecommendedItem(i["item_id"], i["score"], i["explanation"]) for i in self.items),
            policy_version=self.policy_version)


class Recommender:
    """Ranks the whole catalogue of one serving state for one shopper and explains the top ``k``.

    Feature rows are computed on the event loop (the stream followers mutate the features on the
    same loop); the torch part only reads the immutable state, so it moves to a thread when its
    moving-average cost exceeds ``inline_scoring_ms``.
    """

    def __init__(self, live: LiveBehaviour, settings: ServingSettings, policies: PolicyHolder | None = None) -> None:
        self.live = live
        self.settings = settings
        self.policies = policies
        self.explainer = Explainer(live.item_id, live.title)
        self.scoring_ms = 0.0  # exponential moving average
        self._rec_ids = itertools.count()
        self._rec_prefix = uuid.uuid4().hex[:16]  # unique per worker; a counter is cheaper than uuid4 per request

    async def recommend(self, state: ServingState, user_id: str, k: int, ts: float | None = None) -> Recommendation:
        features = self.live.features
        rec_id, now = f"{self._rec_prefix}{next(self._rec_ids):016x}", time.time() if ts is None else ts
        if ts is not None:
            self.live.visit(ts)
        if not features.knows(user_id):
            return self._popular(state, user_id, k, rec_id, now)
        history, rows = self.live.ranking_inputs(state, user_id, self.settings.max_history)
        recommendable = state.catalogue.recommendable
        if self.scoring_ms > self.settings.inline_scoring_ms:
            top, scores, cosine = await asyncio.to_thread(self._timed_top, state, history, rows, recommendable, k)
        else:
            top, scores, cosine = self._timed_top(state, history, rows, recommendable, k)
        policy = self.policies.current if self.policies is not None else None  # one policy for the whole list
        choose = style_chooser(policy, user_id, len(features.long_history.recent(user_id)))
        explanations = self.explainer.explain(state, features, user_id, history, top, rows[top], cosine, choose)
        explanations = [with_calibrated_confidence(e, policy, score) for e, score in zip(explanations, scores.tolist(),
                                                                                           strict=True)]
        items = [self._item(item, score, explanation)
                 for item, score, explanation in zip(top.tolist(), scores.tolist(), explanations, strict=True)]
        return Recommendation(rec_id, user_id, now, state.version, items, _version(policy))

    def _popular(self, state: ServingState, user_id: str, k: int, rec_id: str, now: float) -> Recommendation:
        features = self.live.features
        ranked = features.popular(len(features.index))
        usable = ranked[ranked < state.n_items]
        top = usable[state.catalogue.recommendable[usable]][:k]
        scores = features.matrix(user_id, top)[:, POPULARITY_COLUMN] if len(top) else np.zeros(0)
        explanations = self.explainer.popular(state, features, user_id, top)
        policy = self.policies.current if self.policies is not None else None
        items = [self._item(int(item), float(score), explanation)
                 for item, score, explanation in zip(top.tolist(), scores.tolist(), explanations, strict=True)]
        return Recommendation(rec_id, user_id, now, state.version, items, _version(policy))

    def _item(self, item: int, score: float, explanation: Explanation) -> dict[str, Any]:
        return {"item_id": self.live.item_id(item), "title": self.live.title(item), "score": round(score, 6),
                "explanation": explanation.to_dict(), "faithful_styles": list(explanation.faithful_styles)}

    def _timed_top(self, state: ServingState, history: list[int], rows: np.ndarray, recommendable: np.ndarray,
                   k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        start = time.perf_counter()
        result = state.top_k(history, rows, recommendable, k)
        self.scoring_ms = 0.9 * self.scoring_ms + 0.1 * (time.perf_counter() - start) * 1000
        return result


def _version(policy: ExplanationPolicy | None) -> int | None:
    return policy.version if policy is not None else None


# --------------------------------------------------------------------------- the worker


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
        self.live = live if live is not None else LiveBehaviour(RichFeatures(lateness_s=settings.basket_lateness_s))
        self.holder = StateHolder()
        self.builder = StateBuilder(base)
        self.updater = StateUpdater(self.builder, self.holder, self.live, self.key, self.metrics)
        self.policies = PolicyHolder(self.key, self.metrics)
        self.recommender = Recommender(self.live, settings, self.policies)
        self.publisher: Publisher = publisher or (KafkaPublisher(kafka) if kafka is not None else MemoryPublisher())
        self.impressions = ImpressionLog(self.publisher, self._topic(IMPRESSIONS.name), self.metrics,
                                         settings.max_pending_impressions)
        self.history = HistoryFollower(kafka, self.live) if kafka is not None else None
        self.updates = UpdateFollower(kafka, self.updater) if kafka is not None else None
        self.policy_follower = PolicyFollower(kafka, self.policies) if kafka is not None else None
        self._tasks: list[asyncio.Task] = []
        self.started = time.time()

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
        self._tasks.append(asyncio.create_task(self.updater.keep_catalogue_current(self.settings.catalogue_refresh_s)))

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
        await self.impressions.drain()
        if isinstance(self.publisher, KafkaPublisher):
            await self.publisher.stop()

    @property
    def ready(self) -> bool:
        return self.holder.current is not None and (self.updates is None or self.updates.booted.is_set())

    # ------------------------------------------------------------------ requests

    async def recommend(self, user_id: str, k: int, ts: float | None = None) -> Recommendation:
        """``ts``: the visit's event time, stamped on the impression (wall-clock time when None)."""
        state = self.holder.current  # this request keeps this state, whatever is swapped in meanwhile
        if state is None:
            raise NotReady()
        recommendation = await self.recommender.recommend(state, user_id, k, ts=ts)
        self.impressions.log(recommendation.impression())
        return recommendation

    async def similar(self, item_id: str, user_id: str | None, k: int) -> dict[str, Any]:
        """The product page's neighbours of ``item_id`` (:mod:`serving.similar`), ranked for ``user_id`` when the
        model knows the shopper. Raises :class:`NotReady`, or :class:`UnknownItem` for an item not served."""
        state = self.holder.current
        if state is None:
            raise NotReady()
        features = self.live.features
        item = features.index.index_of(item_id)
        if item < 0 or item >= state.n_items or not state.catalogue.recommendable[item]:
            raise UnknownItem(item_id)
        personal = None
        if user_id is not None and features.knows(user_id):
            history, rows = self.live.ranking_inputs(state, user_id, self.settings.max_history)
            scores, _ = state.score_all(history, rows)
            personal = scores.numpy()
        neighbours = similar_items(features, state, item, k, personal)
        return {"item_id": item_id, "model_version": state.version, "personalised": personal is not None,
                "items": [{"item_id": self.live.item_id(n.item), "title": self.live.title(n.item),
                           "score": round(n.score, 6), "explanation": explain_neighbour(n, item, self.live.title)}
                          for n in neighbours]}

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
        return {"status": "ok" if self.ready else "starting", "model_version": state.version if state else None,
                "items": state.n_items if state else 0, "swaps": self.metrics.swap_count,
                "rejected_updates": self.metrics.rejected_count,
                "policy_version": self.policies.version, "policy_swaps": self.metrics.policy_swap_count,
                "rejected_policies": self.metrics.rejected_policy_count,
                "last_swap_apply_ms": self.metrics.last_swap_apply_ms,
                "max_swap_apply_ms": self.metrics.max_swap_apply_ms,
                "scoring_ms": round(self.recommender.scoring_ms, 3), "counts": dict(self.live.counts),
                "uptime_s": round(time.time() - self.started, 1)}


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


# --------------------------------------------------------------------------- HTTP


class CitedItem(BaseModel):
    item_id: str
    title: str
    weight: float


class ExplanationOut(BaseModel):
    explanation_id: str
    style: str
    cited: list[CitedItem]
    matching_words: list[str]
    confidence: float = Field(description=(
        "The calibrated probability that the shopper clicks, adds or buys the item (the worker's online Platt "
        "scaling of served scores, published with the explanation policy); before the first calibration is "
        "published, the share of the score's positive contributions the named reason makes up"))
    text: str
    contributions: dict[str, float] = Field(default_factory=dict, description=(
        "What each scoring term adds to the score (repeat, knn, popularity, shopper, feedback, text): exact "
        "Shapley values over removing the terms' feature columns (`feedback`: the shopper called the item "
        "irrelevant; only ever negative), so `baseline` + their sum is the item's score. Empty for a "
        "shopper we know nothing about (the ranking is popularity alone)"))
    baseline: float | None = Field(default=None, description="The score with every term removed")


class RecommendedOut(BaseModel):
    item_id: str
    title: str
    score: float
    explanation: ExplanationOut
    faithful_styles: list[str] = Field(default_factory=list, description=(
        "The styles this item's explanation could honestly take; the explanation policy chose its `style` "
        "among them"))


class RecommendResponse(BaseModel):
    rec_id: str
    model_version: str
    policy_version: int | None = Field(default=None, description=(
        "The explanation policy the styles were drawn from; null until the worker has published one"))
    items: list[RecommendedOut]


class SimilarExplanationOut(BaseModel):
    reason: str = Field(description="`bought_together` (shoppers bought the two in one basket) or `similar` (text)")
    text: str
    matching_words: list[str]
    co_purchase: float = Field(description="Co-purchase cosine of the two items (0: never bought together)")
    text_similarity: float = Field(description="Cosine of the two items' vectors under the serving text tower")


class SimilarItemOut(BaseModel):
    item_id: str
    title: str
    score: float = Field(description="The shopper's model score when `personalised`, else the relatedness "
                                     "(co-purchase + text cosine)")
    explanation: SimilarExplanationOut


class SimilarResponse(BaseModel):
    item_id: str
    model_version: str
    personalised: bool = Field(description="Ranked by the current model for `user_id` (a shopper it knows)")
    items: list[SimilarItemOut]


class FeedbackResponse(BaseModel):
    accepted: str
    event_id: str
    topic: str


class FieldError(BaseModel):
    """One invalid request parameter, as pydantic reports it."""

    type: str
    loc: list[str | int]
    msg: str
    input: Any = None
    ctx: dict[str, Any] | None = None


class ErrorResponse(BaseModel):
    """Every error the worker answers with: a readable reason, and per-parameter details for a 422."""

    detail: str = Field(description="What was wrong, in one line")
    errors: list[FieldError] | None = Field(default=None, description=(
        "Request validation only: each invalid query parameter (pydantic's error list)"))


#: ``/feedback`` bodies: the records' own fields and rules (``streams/records.py``), closed to other
#: properties, with what the worker fills in left optional. They cannot drift from what ingest accepts.
ExplanationFeedbackIn = request_model(
    ExplanationFeedback, "ExplanationFeedbackIn", server_filled=SERVER_FILLED,
    doc="Was the explanation shown with a recommendation helpful? (an ExplanationFeedback record)")
CLICK_TYPE = Choice(FEEDBACK_INTERACTIONS, "Only clicks: purchases come from the shop's own feed")
ClickIn = request_model(
    Interaction, "ClickIn", server_filled=SERVER_FILLED, rules={"type": CLICK_TYPE},
    doc="The shopper clicked a recommended item (an Interaction record of type click)")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) once it passes ``limit`` bytes instead of reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise FeedbackRejected(413, f"body of {declared} bytes exceeds the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise FeedbackRejected(413, f"body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(worker: ServingWorker) -> FastAPI:
    """The HTTP face of ``worker``; starting the app starts the worker's stream followers."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await worker.start()
        try:
            yield
        finally:
            await worker.stop()

    app = FastAPI(title="recloop serving worker", version="1", lifespan=lifespan,
                  description="Recommendations with faithful explanations, from a model that learns while it serves.")
    app.state.worker = worker
    metrics = worker.metrics
    not_ready = {"model": ErrorResponse, "description": "No model version is serving yet"}
    invalid = {"model": ErrorResponse, "description": "Invalid parameters: `detail` says which and why"}

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        message = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'request'}: {e['msg']}" for e in errors)
        return JSONResponse({"detail": message, "errors": jsonable_errors(errors)}, status_code=422)

    async def answered(route: str, body: Awaitable[bytes]) -> Response:
        """A GET route's JSON answer, timed and counted; a worker not ready is a 503, an item it does not serve
        a 404."""
        start = time.perf_counter()
        try:
            content = await body
        except NotReady:
            metrics.requests.labels(route, "503").inc()
            return _error(503, "no model version is serving yet")
        except UnknownItem as exc:
            metrics.requests.labels(route, "404").inc()
            return _error(404, f"item {exc.args[0]!r} is not in the catalogue this worker serves")
        metrics.request_seconds.labels(route).observe(time.perf_counter() - start)
        metrics.requests.labels(route, "200").inc()
        return Response(content, media_type="application/json")

    @app.get("/recommend", response_model=None,
             responses={200: {"model": RecommendResponse}, 422: invalid, 503: not_ready})
    async def recommend(
        user_id: Annotated[str, Query(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN,
                                      description="The shopper (an id: no control characters)")],
        k: Annotated[int, Query(ge=1, le=MAX_K, description="How many items (1..1000)")] = worker.settings.default_k,
        ts: Annotated[float | None, Query(ge=MIN_TS, le=MAX_TS, allow_inf_nan=False, description=(
            "Event time of the visit (epoch seconds), stamped on the impression so that it joins with what "
            "the shopper does next in replays too; default: now"))] = None,
    ) -> Response:
        """Rank the whole catalogue for ``user_id`` with the current model and explain the top ``k``."""
        async def body() -> bytes:
            return (await worker.recommend(user_id, k, ts)).body()
        return await answered("recommend", body())

    @app.get("/similar", response_model=None,
             responses={200: {"model": SimilarResponse}, 404: {"model": ErrorResponse, "description": (
                 "The item is not in the catalogue this worker serves")}, 422: invalid, 503: not_ready})
    async def similar(
        item_id: Annotated[str, Query(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN,
                                      description="The product page's item")],
        user_id: Annotated[str | None, Query(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN,
                                             description="The shopper, to rank the neighbours for them")] = None,
        k: Annotated[int, Query(ge=1, le=MAX_K, description="How many items (1..1000)")] = worker.settings.default_k,
    ) -> Response:
        """Items bought together with ``item_id`` or alike in text, ranked for ``user_id`` when given, explained."""
        async def body() -> bytes:
            return orjson.dumps(await worker.similar(item_id, user_id, k))
        return await answered("similar", body())

    @app.post("/feedback", status_code=202, response_model=FeedbackResponse,
              responses={400: {"model": ErrorResponse, "description": "The body is not JSON"},
                         413: {"model": ErrorResponse, "description": f"The body exceeds {MAX_EVENT_BYTES} bytes"},
                         422: {"model": ErrorResponse, "description": "The body is not a valid verdict or click"},
                         503: {"model": ErrorResponse, "description": "The feedback could not be delivered"}},
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                  "oneOf": [ExplanationFeedbackIn.model_json_schema(), ClickIn.model_json_schema()]}}}}})
    async def feedback(request: Request) -> Any:
        """A verdict on an explanation (with ``explanation_id``) or a click (``type: click``)."""
        start = time.perf_counter()
        try:
            accepted = await worker.feedback(await _read_body(request, MAX_EVENT_BYTES))
        except FeedbackRejected as exc:
            metrics.requests.labels("feedback", str(exc.status)).inc()
            return _error(exc.status, exc.message)
        metrics.request_seconds.labels("feedback").observe(time.perf_counter() - start)
        metrics.requests.labels("feedback", "202").inc()
        return accepted

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """200 once a model version serves, 503 while starting."""
        return JSONResponse(worker.health(), status_code=200 if worker.ready else 503)

    @app.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def jsonable_errors(errors: Any) -> Any:
    """Validation errors without the exception objects pydantic may put in ``ctx``."""
    return orjson.loads(orjson.dumps(errors, default=str))


# --------------------------------------------------------------------------- running


def load_serving_base(settings: ServingSettings) -> Base:
    from learner.encoder import load_base, tiny_bert

    return tiny_bert(seed=0) if settings.tiny else load_base(settings.model_dir)


def run_server(settings: ServingSettings, kafka: KafkaSettings) -> None:
    """Load the base, build the worker and serve HTTP until SIGINT/SIGTERM."""
    import torch
    import uvicorn

    torch.set_num_threads(1)  # requests are small; the cores are shared with the stream worker
    settings.signing_key()  # fail before loading anything when the key is missing
    worker = ServingWorker(settings, load_serving_base(settings), kafka)
    log.info("serving on http://%s:%d (topics %s.*, base %s)", settings.host, settings.port, kafka.topic_prefix,
             worker.builder.base.name)
    uvicorn.run(create_app(worker), host=settings.host, port=settings.port, log_level=settings.log_level,
                access_log=False, lifespan="on")


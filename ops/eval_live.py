"""``recloop eval --live``: the evaluation protocol through the real loop — broker, worker, serving workers.

The offline evaluation (:mod:`ops.eval_cli`) runs the deployed learner and serving's ranking code
in one process. This runs the processes a deployment runs, on a fresh set of topics:

* a ``recloop worker`` (ingest, monitoring and the learner) and ``servers`` ``recloop serve``
  workers, started as child processes with a random adapter key;
* the history before the evaluated period is replayed as fast as the producer goes, then the
  driver waits until the learner and every serving worker have consumed it;
* then, timestamp group by timestamp group in event-time order, the driver asks a serving worker
  ``GET /recommend?user_id=U&k=10&ts=<basket ts>`` for every evaluated basket of the group
  **before** the group's events are produced, then produces the group's interactions and, after
  them, the catalogue items first sold in it (as the offline protocol makes an item a candidate
  only once it was sold; :class:`ops.served_recommender.ServedRecommender` does the same).

The top 10 a shopper was served is scored against what they bought (NDCG@10, HR@10, Recall@10 of
:mod:`learner.ranking_metrics`). The same stream then goes through the offline harness
(:func:`ops.evaluate.prequential`) with ``ServedRecommender`` and the repeat baseline, so the
three figures are on the very same baskets.

**Pace.** ``pace=None`` ("keep up"): before each group with an evaluated basket the driver waits,
up to ``keep_up_timeout_s``, until the learner's ``/learner/`` status has consumed every event
produced so far (and every impression the requests logged), every serving worker has read every
produced interaction and item, and serves the learner's newest published version. Live and offline
then differ only in staleness: a version trained on the window that just closed, the basket of the
group just produced (closed by the next event), the micro-batching. ``pace=N``: the evaluated period
is produced at N events/s and nobody waits; the lag the learner builds up is what is reported.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import secrets
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from learner.baskets import Basket, ItemIndex, baskets_from_interactions, item_texts, timestamp_groups
from learner.ranking_metrics import K
from ops.evaluate import QUICK_EVERY_NTH, ModelTally, Protocol, is_evaluated, prequential, utc_iso, week_of
from ops.processes import ChildProcess, free_port, recloop_env, wait_json
from ops.replay import OutgoingMessage, Pacer, _message, produce
from ops.shop_files import ShopDataError, read_records
from ops.topic_admin import admin_client, create_topics
from streams.records import AdapterUpdate, InvalidRecord, Item, decode
from streams.settings import KafkaSettings
from streams.topics import MAX_MESSAGE_BYTES, MODEL_UPDATES

log = logging.getLogger(__name__)

DAY = 86_400.0
WATERMARK = "trained_through_ts"
#: The Faust app id prefix of the run's worker (its consumer group and internal topics).
WORKER_APP_ID = "recloop-eval-live"
LIVE_METRICS = ("ndcg@10", "hr@10", "recall@10")
OFFLINE_METRICS = ("ndcg@10", "hr@10", "recall@10", "mrr")
#: The targets the live figure is held to (docs/evaluation.md, "Live").
TARGET_GAP = 0.01


# --------------------------------------------------------------------------- what one run replays and asks


@dataclass
class LivePlan:
    """The stream of one live run and the baskets it evaluates, derived from the data like the offline protocol.

    ``baskets`` is the stream as the offline harness replays it (the history slice, then the evaluated
    period up to and including the last evaluated basket); ``selected`` the evaluated baskets in order.
    ``history`` are the messages before ``protocol.eval_start``; ``groups`` the evaluated period's
    timestamp groups: ``(ts, baskets asked before it, its messages)``; the last group is only asked.
    """

    protocol: Protocol
    baskets: list[Basket]
    selected: list[Basket]
    history: list[OutgoingMessage]
    groups: list[tuple[float, list[Basket], list[OutgoingMessage]]]
    index: ItemIndex
    items: list[tuple[str, str]]  #: per harness item int: (item id, text), as ServedRecommender learns them
    history_start: float
    source: str = "records"

    @property
    def eval_messages(self) -> int:
        return sum(len(messages) for _, _, messages in self.groups)


def select_baskets(baskets: Sequence[Basket], protocol: Protocol, limit: int | None = None) -> list[Basket]:
    """The baskets :func:`ops.evaluate.prequential` scores for ``protocol`` (the first ``limit`` of them).

    >>> bs = [Basket("a", 1.0, (0,), "x"), Basket("a", 2.0, (1,), "y"), Basket("b", 2.0, (0,), "z"),
    ...       Basket("b", 3.0, (1,), "w"), Basket("a", 4.0, (0,), "v")]
    >>> [b.basket_id for b in select_baskets(bs, Protocol(eval_start=2.0))]
    ['y', 'w', 'v']
    >>> [b.basket_id for b in select_baskets(bs, Protocol(eval_start=2.0, every_nth=2), limit=1)]
    ['y']
    """
    known: set[str] = set()
    eligible = 0
    out: list[Basket] = []
    for group in timestamp_groups(baskets):
        for basket in group:
            if is_evaluated(basket, known, protocol):
                if eligible % protocol.every_nth == 0:
                    out.append(basket)
                    if limit is not None and len(out) >= limit:
                        return out
                eligible += 1
        known.update(basket.user_id for basket in group)
    return out


def plan_live(path: Path, settings: KafkaSettings, *, quick: bool = False, since: float | None = None,
              limit_baskets: int | None = None, history_days: float | None = None) -> LivePlan:
    """Read ``path`` and lay out the run: which events are history, which groups are asked, in what order.

    ``since``: evaluate from this time on (default: the protocol's test period, the data's last 91 days);
    ``limit_baskets``: evaluate only the first N baskets (the stream ends with the N-th);
    ``history_days``: replay only this many days of history before the evaluated period (default: all).
    """
    found = read_records(path)
    index = ItemIndex()
    all_baskets = baskets_from_interactions(found.interactions, index)
    if not all_baskets:
        raise ShopDataError(f"{path} holds no purchases (skipped rows: {dict(found.skipped)})")
    standard = Protocol.for_baskets(all_baskets, every_nth=QUICK_EVERY_NTH if quick else 1)
    eval_start = standard.eval_start if since is None else since
    history_start = eval_start - history_days * DAY if history_days is not None else -math.inf
    protocol = Protocol(eval_start=eval_start, every_nth=standard.every_nth,
                        tiebreak_window_days=standard.tiebreak_window_days, cold_item_days=standard.cold_item_days)
    stream = [b for b in all_baskets if b.ts >= history_start]
    selected = select_baskets(stream, protocol, limit_baskets)
    if not selected:
        raise ShopDataError(f"no basket to evaluate from {utc_iso(eval_start)} on in {path}")
    last = selected[-1]
    end = next(i for i, b in enumerate(stream) if b is last) + 1
    stream = stream[:end]  # the offline harness stops with the last evaluated basket too

    catalog = {item.item_id: item for item in found.items}
    texts = item_texts(catalog, index)
    first_sold: dict[float, list[int]] = {}
    seen: set[int] = set()
    for basket in stream:
        for item in basket.items:
            if item not in seen:
                seen.add(item)
                first_sold.setdefault(basket.ts, []).append(item)

    def new_items(ts: float) -> list[OutgoingMessage]:
        return [_message(settings, catalog.get(index.code_of(i)) or Item(index.code_of(i), texts[i]))
                for i in first_sold.get(ts, ())]

    asked: dict[float, list[Basket]] = {}
    for basket in selected:
        asked.setdefault(basket.ts, []).append(basket)
    events: dict[float, list[OutgoingMessage]] = {}
    ids: set[str] = set()
    for event in found.interactions:
        if history_start <= event.ts < last.ts and event.event_id not in ids:  # a repeated id would never be counted
            ids.add(event.event_id)
            events.setdefault(event.ts, []).append(_message(settings, event))
    history: list[OutgoingMessage] = []
    groups: list[tuple[float, list[Basket], list[OutgoingMessage]]] = []
    for ts in sorted(set(events) | set(first_sold) | set(asked)):
        messages = [*events.get(ts, ()), *new_items(ts)] if ts < last.ts else []
        if ts < eval_start:
            history.extend(messages)
        else:
            groups.append((ts, asked.get(ts, []), messages))
    items = [(index.code_of(i), texts[i]) for i in range(len(index))]
    return LivePlan(protocol, stream, selected, history, groups, index, items, history_start, found.source)


# --------------------------------------------------------------------------- the driver


@dataclass
class Asked:
    """One evaluated basket: what was served for it and how far behind the loop was when it was asked."""

    basket: Basket
    served: list[str]
    version: str
    waited_s: float = 0.0
    timed_out: bool = False
    learner_behind_before: int | None = None  #: events produced but not yet consumed by the learner, before waiting
    learner_behind: int | None = None  #: ... when asked
    serving_behind: int = 0  #: interactions and items produced but not yet read by the serving worker, when asked


@dataclass
class LoopState:
    """What the driver produced and saw."""

    produced_events: int = 0  #: interactions and items on the topics
    produced_interactions: int = 0
    produced_items: int = 0
    asked: list[Asked] = field(default_factory=list)
    watermark: dict[str, float] = field(default_factory=dict)  #: version -> trained_through_ts
    learner: dict = field(default_factory=dict)  #: the last /learner/ status read
    request_errors: int = 0

    def count(self, messages: Sequence[OutgoingMessage]) -> None:
        items = sum(1 for m in messages if m.kind == "item")
        self.produced_items += items
        self.produced_interactions += len(messages) - items
        self.produced_events += len(messages)

    @property
    def learner_expected(self) -> int:
        """Records the learner should have consumed: every produced event, plus one impression per request."""
        return self.produced_events + len(self.asked)


@dataclass
class Lag:
    learner_behind: int | None
    serving_behind: int
    version_pending: bool

    @property
    def caught_up(self) -> bool:
        return not self.learner_behind and not self.serving_behind and not self.version_pending


class LiveLoop:
    """Drives the run: produce, wait for the loop to keep up, ask, follow the published versions."""

    def __init__(self, settings: KafkaSettings, plan: LivePlan, worker: ChildProcess, worker_url: str | None,
                 servers: list[tuple[ChildProcess, str]], *, pace: float | None, keep_up_timeout_s: float,
                 history_timeout_s: float, say: Callable[[str], None]) -> None:
        self.settings, self.plan, self.worker, self.worker_url = settings, plan, worker, worker_url
        self.servers = servers
        self.pace, self.keep_up_timeout_s, self.history_timeout_s = pace, keep_up_timeout_s, history_timeout_s
        self.say = say
        self.state = LoopState()
        self._next_server = itertools.cycle(range(len(servers)))
        self._stop = asyncio.Event()

    async def run(self) -> LoopState:
        async with httpx.AsyncClient(timeout=30) as client:
            self.client = client
            follower = asyncio.ensure_future(self._follow_updates())
            try:
                await self._replay_history()
                await self._evaluate()
            finally:
                self._stop.set()
                await follower
        return self.state

    # ------------------------------------------------------------------ phases

    async def _replay_history(self) -> None:
        started = time.monotonic()
        history = self.plan.history
        self.say(f"history: producing {len(history):,} messages")
        await produce(history, self.settings)
        self.state.count(history)
        self.say(f"history produced in {time.monotonic() - started:.0f}s; waiting for the learner and serving")
        waited, ok = await self._wait_caught_up(self.history_timeout_s, report_every_s=30.0)
        if not ok:
            raise TimeoutError(f"the loop did not consume the history within {self.history_timeout_s:.0f}s: "
                               f"{await self._lag()}")
        self.say(f"history consumed {time.monotonic() - started:.0f}s after the first message "
                 f"(learner status: {self._learner_summary()})")

    async def _evaluate(self) -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(**self.settings.aiokafka_options(), acks="all", enable_idempotence=True,
                                    linger_ms=5, max_request_size=MAX_MESSAGE_BYTES)
        await producer.start()
        pacer = Pacer(rate=self.pace) if self.pace else None
        pending: list[asyncio.Future] = []
        total = len(self.plan.selected)
        last_report = time.monotonic()
        try:
            for ts, baskets, messages in self.plan.groups:
                if baskets:
                    if pending:
                        await asyncio.gather(*pending)
                        pending = []
                    before = await self._lag() if self.pace is None else None
                    waited, ok = (await self._wait_caught_up(self.keep_up_timeout_s) if self.pace is None
                                  else (0.0, True))
                    lag = await self._lag()
                    for basket in baskets:
                        self.state.asked.append(await self._ask(basket, waited, ok, before, lag))
                    if time.monotonic() - last_report > 30:
                        last_report = time.monotonic()
                        self.say(f"asked {len(self.state.asked):,}/{total:,} baskets (event time {utc_iso(ts)}); "
                                 f"learner: {self._learner_summary()}")
                for message in messages:
                    if pacer is not None:
                        delay = pacer.delay(message.ts)
                        if delay > 0:
                            await asyncio.sleep(delay)
                    pending.append(await producer.send(message.topic, message.value, key=message.key))
                self.state.count(messages)
            if pending:
                await asyncio.gather(*pending)
        finally:
            await producer.stop()

    # ------------------------------------------------------------------ pieces

    async def _ask(self, basket: Basket, waited: float, ok: bool, before: Lag | None, lag: Lag) -> Asked:
        child, url = self.servers[next(self._next_server)]
        params = {"user_id": basket.user_id, "k": K, "ts": basket.ts}
        for attempt in range(5):
            try:
                response = await self.client.get(f"{url}/recommend", params=params)
                if response.status_code == 200:
                    body = response.json()
                    return Asked(basket, [item["item_id"] for item in body["items"]], body["model_version"],
                                 waited, not ok, before.learner_behind if before else lag.learner_behind,
                                 lag.learner_behind, lag.serving_behind)
                log.warning("GET /recommend answered %d: %s", response.status_code, response.text[:300])
            except httpx.HTTPError as exc:
                log.warning("GET /recommend failed: %s", exc)
            self.state.request_errors += 1
            if not child.alive:
                raise RuntimeError(f"`recloop {' '.join(child.args)}` exited:\n{child.log_tail()}")
            await asyncio.sleep(0.5 * (attempt + 1))
        raise RuntimeError(f"{url}/recommend failed 5 times for {basket.user_id}; see {child.log_path}")

    async def _get(self, url: str) -> dict | None:
        try:
            response = await self.client.get(url, timeout=5)
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    async def _lag(self) -> Lag:
        learner_behind = None
        current = None
        if self.worker_url is not None:
            self.state.learner = await self._get(f"{self.worker_url}/learner/") or self.state.learner
            learner_behind = max(0, self.state.learner_expected - int(self.state.learner.get("events", 0)))
            current = self.state.learner.get("current_version")
        serving_behind, version_pending = 0, False
        for _, url in self.servers:
            health = await self._get(f"{url}/healthz") or {}
            counts = health.get("counts", {})
            serving_behind = max(serving_behind,
                                 max(0, self.state.produced_interactions - counts.get("interactions", 0))
                                 + max(0, self.state.produced_items - counts.get("items", 0)))
            version_pending |= current is not None and health.get("model_version") != current
        return Lag(learner_behind, serving_behind, version_pending)

    async def _wait_caught_up(self, timeout_s: float, report_every_s: float | None = None) -> tuple[float, bool]:
        """Wait until the learner and serving have consumed everything produced; (seconds waited, caught up)."""
        started = time.monotonic()
        reported = started
        while True:
            lag = await self._lag()
            elapsed = time.monotonic() - started
            if lag.caught_up:
                return elapsed, True
            if elapsed > timeout_s:
                log.warning("not caught up after %.0fs: %s", elapsed, lag)
                return elapsed, False
            for child in (self.worker, *(c for c, _ in self.servers)):
                if not child.alive:
                    raise RuntimeError(f"`recloop {' '.join(child.args)}` exited:\n{child.log_tail()}")
            if report_every_s is not None and time.monotonic() - reported > report_every_s:
                reported = time.monotonic()
                self.say(f"  … {elapsed:.0f}s: learner {lag.learner_behind} events behind, serving "
                         f"{lag.serving_behind} behind, new version pending: {lag.version_pending}")
            await asyncio.sleep(0.05 if elapsed < 5 else 0.25)

    def _learner_summary(self) -> str:
        status = self.state.learner
        if not status:
            return "off" if self.worker_url is None else "not started"
        return (f"{status.get('events', 0):,} events, {status.get('n_published', 0)} published, "
                f"{status.get('refused', 0)} refused, serving {status.get('current_version') or 'v0'}")

    async def _follow_updates(self) -> None:
        """version -> trained_through_ts of every adapter published on the run's updates topic."""
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(self.settings.topic(MODEL_UPDATES.name), **self.settings.aiokafka_options(),
                                    group_id=None, auto_offset_reset="earliest", enable_auto_commit=False,
                                    fetch_max_bytes=MAX_MESSAGE_BYTES, max_partition_fetch_bytes=MAX_MESSAGE_BYTES)
        await consumer.start()
        try:
            while not self._stop.is_set():
                for messages in (await consumer.getmany(timeout_ms=200)).values():
                    for message in messages:
                        try:
                            update = decode(AdapterUpdate, message.value)
                        except InvalidRecord:
                            continue
                        if WATERMARK in update.metrics:
                            self.state.watermark[update.version] = update.metrics[WATERMARK]
        finally:
            await consumer.stop()


# --------------------------------------------------------------------------- figures


def live_tally(asked: Sequence[Asked], index: ItemIndex) -> ModelTally:
    """The served top-10s scored like the harness scores a ranking (ranks past 10 do not count at k=10).

    >>> index = ItemIndex(["a", "b", "c"])
    >>> basket = Basket("u", 0.0, (0, 2), "x")
    >>> t = live_tally([Asked(basket, ["c", "b"], "v1")], index)
    >>> round(t.sums["ndcg@10"], 4), t.sums["hr@10"], t.sums["recall@10"], t.baskets
    (0.6131, 1.0, 0.5, 1)
    """
    tally = ModelTally()
    for a in asked:
        position = {item_id: rank for rank, item_id in enumerate(a.served[:K])}
        codes = [index.code_of(i) for i in a.basket.items]
        ranks = np.array([position[c] for c in codes if c in position], dtype=np.int64)
        top = np.array([index.index_of(item_id) for item_id in a.served[:K]], dtype=np.int64)
        tally.add(ranks, len(codes), top[top >= 0], week_of(a.basket.ts))
    return tally


def spread(values: Sequence[float], digits: int = 2) -> dict | None:
    """p50, p90, max and mean of ``values`` (None when there are none).

    >>> spread([1.0, 2.0, 3.0, 10.0])
    {'p50': 2.5, 'p90': 7.9, 'max': 10.0, 'mean': 4.0}
    """
    if not len(values):
        return None
    array = np.asarray(values, dtype=float)
    p50, p90 = np.percentile(array, [50, 90])
    return {"p50": round(float(p50), digits), "p90": round(float(p90), digits),
            "max": round(float(array.max()), digits), "mean": round(float(array.mean()), digits)}


def learner_lag(state: LoopState, pace: float | None) -> dict:
    asked = state.asked
    staleness = [(a.basket.ts - state.watermark[a.version]) / 3600 for a in asked if a.version in state.watermark]
    status = state.learner
    return {
        "pace": "keep-up" if pace is None else f"{pace:g} events/s",
        "events_produced": state.produced_events,
        "impressions": len(asked),
        "learner_events": status.get("events"),
        "learner_behind_before_wait": spread([a.learner_behind_before for a in asked
                                              if a.learner_behind_before is not None], 1),
        "learner_behind_at_ask": spread([a.learner_behind for a in asked if a.learner_behind is not None], 1),
        "serving_behind_at_ask": spread([a.serving_behind for a in asked], 1),
        "wait_s": spread([a.waited_s for a in asked]),
        "wait_s_total": round(sum(a.waited_s for a in asked), 1),
        "keep_up_timeouts": sum(a.timed_out for a in asked),
        "served_version_staleness_hours": spread(staleness),
        # v0, or a first version published before any training was judged (it carries no watermark)
        "asked_untrained_version": sum(a.version not in state.watermark for a in asked),
        "published": status.get("n_published"),
        "refused": status.get("refused"),
        "held_out_baskets": status.get("examples"),
        "request_errors": state.request_errors,
    }


def _metrics(summary: dict, names: Sequence[str]) -> dict:
    return {**{name: summary[name] for name in names}, "baskets": summary["baskets"]}


# --------------------------------------------------------------------------- entry point


def _delete_run_topics(settings: KafkaSettings, app_id: str) -> None:
    """The run's contract topics and its worker's internal ones (changelogs, learner events), best effort."""
    try:
        admin = admin_client(settings)
        try:
            names = [t for t in admin.list_topics()
                     if t.startswith(settings.topic_prefix + ".") or t.startswith(app_id + "-")]
            if names:
                admin.delete_topics(names)
        finally:
            admin.close()
    except Exception as exc:  # the figures matter more than the clean-up
        log.warning("could not delete the topics of %s: %s", settings.topic_prefix, exc)


def _create_learner_topic(settings: KafkaSettings, app_id: str) -> None:
    """Create the worker's internal learner topic before the worker starts.

    Work-around: a learner that subscribes before Faust has created it sees "Topic … not found in cluster
    metadata" and no events for minutes (startup race in streams/learning.py).
    """
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    from streams.learning import learner_topic_name

    admin = admin_client(settings)
    try:
        admin.create_topics([NewTopic(learner_topic_name(app_id), num_partitions=1,
                                      replication_factor=settings.replication_factor,
                                      topic_configs={"max.message.bytes": str(MAX_MESSAGE_BYTES)})])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


def run_live_eval(base_settings: KafkaSettings, *, data_path: Path, quick: bool = False, tiny: bool = False,
                  model_dir: Path | None = None, since: float | None = None, limit_baskets: int | None = None,
                  history_days: float | None = None, pace: float | None = None, servers: int = 1,
                  learner: bool = True, window_baskets: int | None = None, keep_up_timeout_s: float = 120.0,
                  history_timeout_s: float = 7200.0, offline: bool = True, threads: int | None = 1,
                  say: Callable[[str], None] = log.info) -> dict:
    """Run the protocol through the real loop and, on the same baskets, offline; return the JSON-able result."""
    from learner.ranker_config import DEFAULTS

    started = time.monotonic()
    window = window_baskets or DEFAULTS.window_baskets
    run_id = uuid.uuid4().hex[:8]
    home = Path(tempfile.mkdtemp(prefix=f"recloop-eval-live-{run_id}-"))
    settings = base_settings.model_copy(update={"kafka_bootstrap": base_settings.bootstrap,  # same broker, security
                                                "topic_prefix": f"live{run_id}", "home": home})
    plan = plan_live(data_path, settings, quick=quick, since=since, limit_baskets=limit_baskets,
                     history_days=history_days)
    say(f"plan: {len(plan.selected):,} baskets to evaluate from {utc_iso(plan.protocol.eval_start)} to "
        f"{utc_iso(plan.selected[-1].ts)}; {len(plan.history):,} history messages, {plan.eval_messages:,} after; "
        f"logs in {home}")
    app_id = f"{WORKER_APP_ID}-{settings.topic_prefix}"  # Faust's app id for a non-default prefix (streams/app.py)
    env = recloop_env(settings, RECLOOP_ADAPTER_KEY=secrets.token_hex(32), RECLOOP_WORKER_APP_ID=WORKER_APP_ID,
                      RECLOOP_LEARNER="on" if learner else "off", RECLOOP_LEARNER_TINY="1" if tiny else "0",
                      RECLOOP_LEARNER_DEVICE="cpu", RECLOOP_LEARNER_WINDOW_BASKETS=str(window),
                      # the trainer's micro-batch wait: with the default 2 s every keep-up wait would take >= 2 s
                      RECLOOP_LEARNER_BATCH_WITHIN_S=os.environ.get("RECLOOP_LEARNER_BATCH_WITHIN_S", "0.25"),
                      RECLOOP_LOG_LEVEL=os.environ.get("RECLOOP_LOG_LEVEL", "INFO"),
                      # the history is replayed as fast as the broker takes it: partitions then reach the worker
                      # hours of event time apart, and a basket must wait that long for its late lines
                      RECLOOP_BASKET_LATENESS_S=os.environ.get("RECLOOP_BASKET_LATENESS_S", "86400"),
                      **({"RECLOOP_BASE_MODEL_DIR": str(model_dir)} if model_dir else {}))
    env.pop("RECLOOP_DEMO", None)
    worker_port = free_port()
    worker = ChildProcess(["worker"], {**env, "RECLOOP_WORKER_WEB_PORT": str(worker_port)}, home / "worker.log")
    ports = [free_port() for _ in range(servers)]
    serving = [ChildProcess(["serve", "--port", str(port), *(["--tiny"] if tiny else [])], env,
                            home / f"serve-{i}.log") for i, port in enumerate(ports)]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    worker_url = f"http://127.0.0.1:{worker_port}"
    phases: dict[str, float] = {}
    try:
        create_topics(settings)
        if learner:
            _create_learner_topic(settings, app_id)
        worker.start()
        for child in serving:
            child.start()
        wait_json(f"{worker_url}/counts/", worker, timeout_s=300)
        for url, child in zip(urls, serving, strict=True):
            wait_json(f"{url}/healthz", child, timeout_s=300)
        phases["setup"] = time.monotonic() - started
        loop = LiveLoop(settings, plan, worker, worker_url if learner else None, list(zip(serving, urls, strict=True)),
                        pace=pace, keep_up_timeout_s=keep_up_timeout_s, history_timeout_s=history_timeout_s, say=say)
        state = asyncio.run(loop.run())
        phases["live"] = time.monotonic() - started - phases["setup"]
    finally:
        for child in reversed([worker, *serving]):
            child.stop()
        _delete_run_topics(settings, app_id)
        shutil.rmtree(home / "adapters", ignore_errors=True)  # MiniLM versions weigh megabytes each; logs stay

    tally = live_tally(state.asked, plan.index)
    result: dict = {"live": _metrics(tally.summary(len(plan.index)), LIVE_METRICS)}
    if offline:
        offline_started = time.monotonic()
        say(f"offline: the same {len(plan.baskets):,} baskets through the harness (ServedRecommender, repeat)")
        result.update(run_offline(plan, tiny=tiny, model_dir=model_dir, window=window, threads=threads))
        phases["offline"] = time.monotonic() - offline_started
        if result["offline"]["baskets"] != result["live"]["baskets"]:
            raise RuntimeError(f"live and offline scored different baskets: {result['live']['baskets']} vs "
                               f"{result['offline']['baskets']}")
    versions = sorted({a.version for a in state.asked})
    result["versions_served"] = len(versions)
    result["learner_lag"] = learner_lag(state, pace)
    if offline:
        gap = round(result["live"]["ndcg@10"] - result["offline"]["ndcg@10"], 4)
        result["targets"] = {"live_minus_offline_ndcg@10": gap,
                             f"within_{TARGET_GAP}_of_offline": abs(gap) <= TARGET_GAP,
                             "live_above_repeat": result["live"]["ndcg@10"] > result["repeat"]["ndcg@10"]}
    result["setup"] = {
        "learner": "on" if learner else "off", "base": "tiny-bert" if tiny else str(model_dir or "all-MiniLM-L6-v2"),
        "window_baskets": window, "servers": servers, "quick": quick, "data": str(data_path), "source": plan.source,
        "eval_start_utc": utc_iso(plan.protocol.eval_start), "last_basket_utc": utc_iso(plan.selected[-1].ts),
        "history_start_utc": utc_iso(plan.history_start) if math.isfinite(plan.history_start) else None,
        "history_messages": len(plan.history), "evaluated_period_messages": state.produced_events - len(plan.history),
        "versions": versions, "topic_prefix": settings.topic_prefix, "logs": str(home),
    }
    result["phase_seconds"] = {name: round(seconds, 1) for name, seconds in phases.items()}
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def run_offline(plan: LivePlan, *, tiny: bool, model_dir: Path | None, window: int, threads: int | None = 1) -> dict:
    """``ServedRecommender`` (no retention probe: the live learner trains on every basket) and ``repeat`` through
    :func:`ops.evaluate.prequential` on the plan's stream."""
    import torch

    from learner.baselines import RepeatRecommender
    from learner.encoder import load_base, tiny_bert
    from learner.ranker_config import RankerConfig
    from ops.served_recommender import ServedRecommender

    if threads:
        torch.set_num_threads(threads)
    base = tiny_bert(seed=0) if tiny else load_base(model_dir)
    served = ServedRecommender(base, plan.items, config=RankerConfig(window_baskets=window))
    try:
        tallies, n_items = prequential([served, RepeatRecommender()], plan.baskets, plan.protocol)
        report = served.report()
    finally:
        served.close()
    return {"offline": {**_metrics(tallies["recloop"].summary(n_items), OFFLINE_METRICS),
                        "versions_served": report["versions_served"], "refused": report["refused"],
                        "held_out_baskets": served.learner.status.examples},
            "repeat": _metrics(tallies["repeat"].summary(n_items), OFFLINE_METRICS)}

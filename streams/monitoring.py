"""The worker's monitoring, wired in: ingest handlers, an impressions agent, a publishing timer, gauges.

All logic lives in :class:`learner.online_metrics.OnlineMonitor` (and the served-quality join it
holds, :class:`learner.served_quality.ServedQuality`); this module only moves records in and out of it:

* accepted interactions, explanation feedback and catalogue items (the ingest agents'
  :class:`~streams.agents.Downstream` hooks) and impressions (a new agent on ``recloop.impressions``)
  go to the monitor;
* drift alarms are sent to ``recloop.ops.drift`` as soon as they are raised;
* every ``publish_interval_s`` a timer sends the current metric snapshots to ``recloop.ops.metrics``;
* Prometheus gauges (``recloop_online_<metric>``, e.g. ``recloop_online_served_ndcg_at_10{model_version}``)
  and a drift-alarm counter are registered on the worker's registry, so ``/metrics/`` shows them next
  to the ingest counters.

Metrics carry the label ``worker=<id>``, the worker's stable id (``RECLOOP_WORKER_ID``, by default the host
name: :mod:`streams.worker_identity`), so a restarted worker continues its own rows. The monitor's state
survives a restart: it is checkpointed to the worker's state directory after every publication and at a
graceful stop, with the offsets it covers, and restored at start (:mod:`streams.monitor_state` says what
a ``kill -9`` can still lose).

The handlers are put *first* in the ``Downstream`` lists: the monitor scores an event before any
learner sees it (test, then train), whichever order the agents were registered in.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import faust
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from learner.baselines import DAY
from learner.online_metrics import OnlineMonitor, PrequentialEvaluator, Scorer
from learner.served_quality import ServedQuality
from streams import topics
from streams.agents import Downstream
from streams.app import RecloopApp, _raw_topic
from streams.ingest import SourcePosition, validate
from streams.monitor_state import FILE_NAME as CHECKPOINT_FILE
from streams.monitor_state import CheckpointedMonitor, MonitorCheckpoint
from streams.policy_publisher import publish_explanation_policy
from streams.records import (
    DeadLetter,
    DriftAlarm,
    ExplanationFeedback,
    Impression,
    Interaction,
    Item,
    MetricSnapshot,
    encode,
)
from streams.settings import JoinSettings
from streams.worker_identity import claim_worker_identity

log = logging.getLogger(__name__)


class MonitoringSettings(BaseSettings):
    """Settings of the worker's monitoring (env ``RECLOOP_MONITOR_<NAME>``)."""

    model_config = SettingsConfigDict(env_prefix="RECLOOP_MONITOR_", frozen=True, extra="ignore")

    #: How often metric snapshots go to ``recloop.ops.metrics``.
    publish_interval_s: float = Field(default=10.0, gt=0)
    #: Rank 1 basket in this many against the catalogue with the model-free baseline scorer (measured on 200,000
    #: events: 76 µs of monitoring per event at 4, 41 µs at 16, 28 µs without ranking; docs/operations.md, "Cost").
    rank_every: int = Field(default=16, ge=1)
    #: Rolling window of the metrics (evaluated purchases, labelled examples, closed impressions).
    window: int = Field(default=1000, ge=10)
    #: How long after an impression the shopper's next basket still follows it (event time; served quality).
    served_window_s: float = Field(default=7 * DAY, gt=0)
    #: How far event time may run ahead of an impression or response that still joins (topics and
    #: partitions are read at their own pace). The response window itself is ``RECLOOP_LABEL_WINDOW_S``
    #: (:class:`streams.settings.JoinSettings`), shared with the learner's labels.
    join_grace_s: float = Field(default=600.0, ge=0)
    #: Baskets before the new-user and new-item drift signals start (the monitor starts knowing nobody).
    warmup_baskets: int = Field(default=1000, ge=0)


def register_monitoring(r: RecloopApp, downstream: Downstream, *, registry: CollectorRegistry | None = None,
                        settings: MonitoringSettings | None = None, join: JoinSettings | None = None,
                        scorer: Scorer | None = None, dead_letter_impressions: bool = True) -> OnlineMonitor:
    """Plug the online monitor into the worker ``r``; returns it (tests and other agents may read it).

    ``registry``: the worker's Prometheus registry (``WorkerMetrics.registry``); without one the
    gauges get their own registry, served at ``/metrics/monitoring/``. ``scorer``: what ranks
    purchases for the baseline figures (default: a private :class:`~learner.online_metrics.FeatureScorer`).
    ``dead_letter_impressions``: send invalid impressions to the DLQ; pass False when another agent
    of the same worker (the learner's) already dead-letters them, so each bad message lands once.
    """
    settings = settings or MonitoringSettings()
    join = join or JoinSettings()
    identity = r.identity or claim_worker_identity(Path(r.app.conf.datadir), r.worker.id)
    worker_id = identity.id
    state, checkpoint = restore_or_build_monitor(identity.state_dir, settings, join, scorer)
    monitor = state.monitor
    metrics_topic = _raw_topic(r.app, r.kafka, topics.OPS_METRICS)
    drift_topic = _raw_topic(r.app, r.kafka, topics.OPS_DRIFT)
    impressions = _raw_topic(r.app, r.kafka, topics.IMPRESSIONS)
    own_registry = registry is None
    registry = registry if registry is not None else CollectorRegistry()
    gauges = SnapshotCollector()
    registry.register(gauges)
    alarm_counter = Counter("recloop_drift_alarms_total", "Drift alarms raised by this worker",
                            ["signal", "severity"], registry=registry)

    async def publish(alarms: Iterable[DriftAlarm]) -> None:
        for alarm in alarms:
            key, value = alarm_message(alarm)
            await drift_topic.send(key=key, value=value)
            alarm_counter.labels(alarm.signal, alarm.severity).inc()

    async def on_interaction(interaction: Interaction, position: SourcePosition) -> None:
        await publish(state.interaction(interaction, position))

    async def on_feedback(feedback: ExplanationFeedback, position: SourcePosition) -> None:
        await publish(state.feedback(feedback, position))

    async def on_item(item: Item, position: SourcePosition) -> None:
        state.item(item, position)

    async def save_checkpoint(why: str) -> bool:
        return checkpoint is None or await checkpoint.save_async(state, why)

    downstream.interaction.insert(0, on_interaction)
    downstream.feedback.insert(0, on_feedback)
    downstream.item.insert(0, on_item)

    @r.app.agent(impressions, name="monitor-impressions")
    async def monitor_impressions(stream: faust.StreamT) -> None:
        async for event in stream.events():
            message = event.message
            position = SourcePosition(message.topic, message.partition, message.offset)
            result = validate(Impression, event.value, key=event.key, source=position)
            if isinstance(result, DeadLetter):
                if dead_letter_impressions:
                    await r.dlq.send(key=message.topic.encode(), value=encode(result))
                log.debug("invalid impression %s[%d]@%d: %s", message.topic, message.partition, message.offset,
                          result.error)
                continue
            await publish(state.impression(result, position))

    @r.app.timer(interval=settings.publish_interval_s, name="publish-metrics")
    async def publish_metrics() -> None:
        snapshots = with_label(monitor.snapshot(), worker=worker_id)
        for snapshot in snapshots:
            key, value = metric_message(snapshot)
            await metrics_topic.send(key=key, value=value)
        gauges.update(snapshots)
        await save_checkpoint("interval")

    async def checkpoint_at_shutdown() -> None:
        if checkpoint is not None and await save_checkpoint("shutdown"):
            log.info("monitor checkpoint up to date at shutdown (worker %s, %d redelivered records skipped)",
                     worker_id, state.skipped)

    r.app.sensors.add(StopHook(checkpoint_at_shutdown))
    publish_explanation_policy(r, monitor)  # the bandit → recloop.explanation-policy (streams/policy_publisher.py)

    if own_registry:
        @r.app.page("/metrics/monitoring/")
        async def prometheus(web: faust.web.Web, request: faust.web.Request) -> faust.web.Response:
            return web.bytes(generate_latest(registry), content_type="text/plain; version=0.0.4")

    return monitor


class StopHook(faust.Sensor):
    """Runs ``on_stop`` when the worker stops, *last*: Faust stops its sensors after the agents and after the
    consumer's final offset commit. A checkpoint written here covers every record whose offset was committed
    (``app.on_before_shutdown`` comes before both, and agents still apply buffered records after it)."""

    def __init__(self, on_stop: Callable[[], Awaitable[None]]) -> None:
        super().__init__()
        self._on_stop = on_stop

    async def on_stop(self) -> None:
        await self._on_stop()


def restore_or_build_monitor(state_dir: Path, settings: MonitoringSettings, join: JoinSettings,
                             scorer: Scorer | None = None) -> tuple[CheckpointedMonitor, MonitorCheckpoint | None]:
    """The worker's monitor: restored from its checkpoint in ``state_dir`` when there is one to continue, else
    cold; and the checkpoint to save it to (None with a ``scorer`` of another owner: that state is not ours)."""
    if scorer is not None:
        log.info("monitor starts cold: it shares another component's scorer, so it keeps no checkpoint")
        return CheckpointedMonitor(build_monitor(settings, join, scorer)), None
    checkpoint = MonitorCheckpoint(state_dir / CHECKPOINT_FILE, monitoring_fingerprint(settings, join))
    state = checkpoint.load()
    if state is None:
        log.info("monitor starts cold: no checkpoint to continue in %s", state_dir)
        state = CheckpointedMonitor(build_monitor(settings, join))
    return state, checkpoint


def build_monitor(settings: MonitoringSettings, join: JoinSettings, scorer: Scorer | None = None) -> OnlineMonitor:
    """A cold monitor configured by ``settings`` and ``join``."""
    evaluator = PrequentialEvaluator(scorer, window=settings.window, rank_every=settings.rank_every,
                                     label_window_s=join.label_window_s, grace_s=settings.join_grace_s)
    served = ServedQuality(window_s=settings.served_window_s, grace_s=settings.join_grace_s, window=settings.window)
    return OnlineMonitor(evaluator, served=served, warmup_baskets=settings.warmup_baskets)


def monitoring_fingerprint(settings: MonitoringSettings, join: JoinSettings) -> str:
    """The settings a monitor's state depends on (not how often it is published), as one string.

    >>> monitoring_fingerprint(MonitoringSettings(window=500), JoinSettings(label_window_s=60))
    'join_grace_s=600.0,label_window_s=60.0,rank_every=16,served_window_s=604800.0,warmup_baskets=1000,window=500'
    """
    values = {**settings.model_dump(exclude={"publish_interval_s"}), "label_window_s": join.label_window_s}
    return ",".join(f"{k}={v}" for k, v in sorted(values.items()))


def metric_message(snapshot: MetricSnapshot) -> tuple[bytes, bytes]:
    """Key and value of a snapshot on ``recloop.ops.metrics`` (keyed by metric name)."""
    return snapshot.name.encode(), encode(snapshot)


def alarm_message(alarm: DriftAlarm) -> tuple[bytes, bytes]:
    """Key and value of an alarm on ``recloop.ops.drift`` (keyed by detector name)."""
    return alarm.detector.encode(), encode(alarm)


def with_label(snapshots: Iterable[MetricSnapshot], **labels: str) -> list[MetricSnapshot]:
    """The snapshots with ``labels`` added (which worker saw them: workers split the shoppers)."""
    return [MetricSnapshot(name=s.name, value=s.value, window=s.window, ts=s.ts, labels={**s.labels, **labels})
            for s in snapshots]


class SnapshotCollector:
    """Prometheus gauges from the latest snapshots: ``recloop_online_<name>{labels}``.

    >>> c = SnapshotCollector()
    >>> c.update([MetricSnapshot("served.ndcg_at_10", 0.25, 100, 1.7e9, {"model_version": "v1", "worker": "w"})])
    >>> [(m.name, m.samples[0].labels, m.samples[0].value) for m in c.collect()]
    [('recloop_online_served_ndcg_at_10', {'model_version': 'v1', 'worker': 'w'}, 0.25)]
    """

    def __init__(self) -> None:
        self._latest: list[MetricSnapshot] = []

    def update(self, snapshots: list[MetricSnapshot]) -> None:
        self._latest = list(snapshots)

    def collect(self):
        families: dict[tuple[str, tuple[str, ...]], GaugeMetricFamily] = {}
        for s in self._latest:
            name = "recloop_online_" + re.sub(r"[^a-zA-Z0-9_]", "_", s.name)
            keys = tuple(sorted(s.labels))
            family = families.get((name, keys))
            if family is None:
                if any(existing == name for existing, _ in families):
                    continue  # one label set per metric name, as Prometheus requires
                family = families[(name, keys)] = GaugeMetricFamily(name, f"online metric {s.name}", labels=keys)
            family.add_metric([s.labels[k] for k in keys], s.value)
        yield from families.values()

"""``recloop monitor``: a live terminal view of what the worker measures, straight from the topics.

It reads ``recloop.ops.metrics``, ``recloop.ops.drift`` and ``recloop.model-updates`` from their
beginning and follows them, asks the worker for its ``/counts/`` and the broker for the worker
group's committed offsets, and redraws: the headline served quality per model version (what serving
showed, scored against the shopper's next basket, beside the repeat baseline on the same
impressions), throughput, consumer lag, the other online metrics with a sparkline of their history
(``baseline.*``: the model-free feature scorer, a reference only), recent drift alarms, adapter
versions and gate decisions.
``--once`` draws one frame from everything published so far and exits (scripts and tests).

Workers label their snapshots with a stable id (:mod:`streams.worker_identity`), so a restarted worker
continues its own rows. A worker whose latest snapshot is more than ``stale_after_s`` older than the
newest snapshot of any worker has stopped: its rows are hidden, and one line says how many were
(:class:`DashboardSettings`; ``RECLOOP_DASHBOARD_ALL_WORKERS=1`` shows them). The reference is the newest
snapshot, not the wall clock, so a report made after a run still shows the workers of its end.

The reading side (:class:`OpsFeed`, :class:`OpsState`) is shared with ``recloop report``.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
from kafka import KafkaConsumer, TopicPartition
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from streams import topics
from streams.app import faust_app_id
from streams.ingest_consumer import ingest_group_id
from streams.learner_input import learner_group_id
from streams.records import AdapterUpdate, DriftAlarm, InvalidRecord, MetricSnapshot, decode, from_dict
from streams.settings import KafkaSettings, WorkerSettings
from streams.topics import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

#: Event topics the worker consumes, whose lag the monitor shows.
CONSUMED = (topics.INTERACTIONS, topics.EXPLANATION_FEEDBACK, topics.CATALOG, topics.IMPRESSIONS)
SEVERITY_STYLE = {"info": "cyan", "warning": "yellow", "critical": "bold red"}
SPARKS = "▁▂▃▄▅▆▇█"

MetricKey = tuple[str, tuple[tuple[str, str], ...]]

#: Labels that tell one series of a metric from another; other labels (a gate's reason, a training
#: step's duration) annotate a single value and would otherwise make every snapshot its own series.
SERIES_LABELS = frozenset({"worker", "source", "style", "segment", "metric", "model_version", "scorer", "reason",
                           "bin"})
#: Per-bin points of the reliability diagram: drawn by ``recloop report``, not listed one by one here.
DIAGRAM_METRICS = frozenset({"calibration_predicted", "calibration_observed"})
#: The learner's publish-gate decisions (``learner.service``): value 1 publish, 0 refuse.
GATE_METRIC = "learner.gate"
#: The headline: served quality per model version (:mod:`learner.served_quality`), as (metric, column title).
SERVED_COLUMNS = (("served.ndcg_at_10", "NDCG@10"), ("served.repeat_ndcg_at_10", "repeat NDCG@10"),
                  ("served.lift_over_repeat", "lift"), ("served.hr_at_10", "HR@10"),
                  ("served.recall_at_10", "Recall@10"), ("served.followed_share", "followed"))
SERVED_HEADLINE = "served.ndcg_at_10"


class DashboardSettings(BaseSettings):
    """Which workers ``recloop monitor`` and ``recloop report`` show (env ``RECLOOP_DASHBOARD_<NAME>``)."""

    model_config = SettingsConfigDict(env_prefix="RECLOOP_DASHBOARD_", frozen=True, extra="ignore")

    #: Show the rows of stopped workers too.
    all_workers: bool = False
    #: A worker whose latest snapshot is this much older than the newest one of any worker has stopped.
    stale_after_s: float = Field(default=300.0, gt=0)


def metric_key(snapshot: MetricSnapshot) -> MetricKey:
    """The series a snapshot belongs to.

    >>> metric_key(MetricSnapshot("learner.train_loss", 0.3, 64, 1.7e9, {"seconds": "2.1", "worker": "w"}))
    ('learner.train_loss', (('worker', 'w'),))
    """
    return snapshot.name, tuple(sorted((k, v) for k, v in snapshot.labels.items() if k in SERIES_LABELS))


def is_gate(name: str) -> bool:
    return name == GATE_METRIC or name.startswith("gate")


@dataclass(frozen=True)
class AdapterInfo:
    """An adapter publication without its payload: what operators look at."""

    version: str
    parent: str | None
    created_at: float
    metrics: dict[str, float]


def adapter_info(raw: bytes) -> AdapterInfo:
    """Validate a ``recloop.model-updates`` value without decoding its (large) payload.

    >>> info = adapter_info(b'{"version":"v2","parent":"v1","base_fingerprint":"f","created_at":1.7e9,'
    ...                     b'"metrics":{"ndcg_at_10":0.3},"sha256":"s","signature":"g","payload":"QUJD"}')
    >>> info.version, info.parent, info.metrics
    ('v2', 'v1', {'ndcg_at_10': 0.3})
    """
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRecord(f"not valid UTF-8 JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRecord("expected a JSON object")
    update = from_dict(AdapterUpdate, {**data, "payload": ""})
    return AdapterInfo(update.version, update.parent, update.created_at, update.metrics)


@dataclass
class OpsState:
    """Everything read from the ops topics so far, bounded per series."""

    history: int = 500
    series: dict[MetricKey, deque[MetricSnapshot]] = field(default_factory=dict)
    gates: deque[MetricSnapshot] = field(default_factory=deque)
    alarms: deque[DriftAlarm] = field(default_factory=deque)
    adapters: dict[str, AdapterInfo] = field(default_factory=dict)
    invalid: int = 0

    def __post_init__(self) -> None:
        self.gates = deque(self.gates, maxlen=self.history)
        self.alarms = deque(self.alarms, maxlen=self.history)

    def add_metric(self, snapshot: MetricSnapshot) -> None:
        if is_gate(snapshot.name):
            self.gates.append(snapshot)
            return
        key = metric_key(snapshot)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = deque(maxlen=self.history)
        series.append(snapshot)

    def apply(self, kind: str, raw: bytes | None) -> None:
        """Add one message of ``kind`` ("metrics", "drift" or "adapters"); invalid ones are counted."""
        try:
            if kind == "metrics":
                self.add_metric(decode(MetricSnapshot, raw))
            elif kind == "drift":
                self.alarms.append(decode(DriftAlarm, raw))
            elif raw is not None:  # a compacted topic's tombstone carries no adapter
                info = adapter_info(raw)
                self.adapters[info.version] = info
        except InvalidRecord as exc:
            self.invalid += 1
            log.warning("skipping an invalid %s message: %s", kind, exc)

    @property
    def workers(self) -> set[str]:
        return {dict(labels).get("worker", "") for _, labels in self.series}

    def latest(self) -> list[MetricSnapshot]:
        return [series[-1] for _, series in sorted(self.series.items())]

    def worker_last_seen(self) -> dict[str, float]:
        """When each worker (``worker`` label) published its latest snapshot."""
        seen: dict[str, float] = {}
        for (_, labels), series in self.series.items():
            worker = dict(labels).get("worker")
            if worker:
                seen[worker] = max(seen.get(worker, -math.inf), max(s.ts for s in series))
        return seen

    def stopped_workers(self, stale_after_s: float) -> list[str]:
        """Workers whose latest snapshot is more than ``stale_after_s`` older than the newest of any worker.

        >>> state = OpsState()
        >>> for worker, ts in (("a", 1000.0), ("b", 1290.0), ("c", 1400.0)):
        ...     state.add_metric(MetricSnapshot("ctr", 0.1, 10, ts, {"worker": worker}))
        >>> state.stopped_workers(300.0), state.stopped_workers(50.0)
        (['a'], ['a', 'b'])
        """
        seen = self.worker_last_seen()
        newest = max(seen.values(), default=0.0)
        return sorted(worker for worker, ts in seen.items() if ts < newest - stale_after_s)

    def without_workers(self, workers: Iterable[str]) -> OpsState:
        """A copy without the metric series of ``workers``; alarms, adapters and gate decisions are kept."""
        hidden = set(workers)
        view = OpsState(history=self.history, gates=self.gates, alarms=self.alarms, adapters=self.adapters,
                        invalid=self.invalid)
        view.series = {key: series for key, series in self.series.items() if dict(key[1]).get("worker") not in hidden}
        return view

    def adapter_list(self) -> list[AdapterInfo]:
        return sorted(self.adapters.values(), key=lambda a: a.created_at)

    def served(self) -> list[ServedRow]:
        """The served-quality series grouped per model version (and worker): ``all`` first, then the
        newest version first."""
        rows: dict[tuple[tuple[str, str], ...], ServedRow] = {}
        for (name, labels), series in self.series.items():
            if name.startswith("served.") and "model_version" in dict(labels):
                row = rows.setdefault(labels, ServedRow(labels))
                row.series[name] = series
        return sorted(rows.values(), key=lambda r: (r.version != "all", -r.first_seen, r.labels))


@dataclass
class ServedRow:
    """The served-quality series of one model version (``all``: every version) on one worker."""

    labels: tuple[tuple[str, str], ...]
    series: dict[str, deque[MetricSnapshot]] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return dict(self.labels)["model_version"]

    @property
    def first_seen(self) -> float:
        return min(series[0].ts for series in self.series.values())

    def last(self, name: str) -> MetricSnapshot | None:
        series = self.series.get(name)
        return series[-1] if series else None

    def value(self, name: str) -> float:
        last = self.last(name)
        return last.value if last is not None else math.nan


def visible_workers(state: OpsState, dashboard: DashboardSettings) -> tuple[OpsState, list[str]]:
    """What to draw (stopped workers' series left out unless ``dashboard.all_workers``) and who was left out."""
    hidden = [] if dashboard.all_workers else state.stopped_workers(dashboard.stale_after_s)
    return (state.without_workers(hidden) if hidden else state), hidden


def hidden_workers_note(hidden: Sequence[str], dashboard: DashboardSettings) -> str:
    """The line that says how many stopped workers' rows are not shown.

    >>> hidden_workers_note(["host-2"], DashboardSettings())
    '1 stopped worker hidden (no snapshot within 5m of the newest): host-2; --all-workers shows it'
    """
    n = len(hidden)
    return (f"{n} stopped worker{'s' if n != 1 else ''} hidden (no snapshot within {age(dashboard.stale_after_s)} "
            f"of the newest): {', '.join(hidden)}; --all-workers shows "
            f"{'them' if n != 1 else 'it'}")


class OpsFeed:
    """A group-less consumer of the three ops topics, from their beginning; polling adds to an :class:`OpsState`."""

    def __init__(self, kafka: KafkaSettings, *, timeout_s: float = 15.0) -> None:
        self.kind_of = {kafka.topic(topics.OPS_METRICS.name): "metrics", kafka.topic(topics.OPS_DRIFT.name): "drift",
                        kafka.topic(topics.MODEL_UPDATES.name): "adapters"}
        self.consumer = KafkaConsumer(**kafka.kafka_python_options(), group_id=None,
                                      enable_auto_commit=False, auto_offset_reset="earliest",
                                      max_partition_fetch_bytes=MAX_MESSAGE_BYTES, fetch_max_bytes=MAX_MESSAGE_BYTES,
                                      request_timeout_ms=int(max(timeout_s, 31) * 1000))
        partitions = []
        deadline = time.monotonic() + timeout_s
        for name in self.kind_of:
            found = self.consumer.partitions_for_topic(name)
            while found is None and time.monotonic() < deadline:
                time.sleep(0.2)
                found = self.consumer.partitions_for_topic(name)
            if found is None:
                log.warning("topic %s does not exist (run `recloop topics create`)", name)
                continue
            partitions += [TopicPartition(name, p) for p in sorted(found)]
        self.partitions = partitions
        self.consumer.assign(partitions)
        if partitions:
            self.consumer.seek_to_beginning(*partitions)

    def poll(self, state: OpsState, timeout_s: float = 0.5) -> int:
        """Add whatever arrived (waiting up to ``timeout_s`` for the first batch); return how many."""
        n = 0
        batches = self.consumer.poll(timeout_ms=int(timeout_s * 1000))
        while batches:
            for tp, messages in batches.items():
                for message in messages:
                    state.apply(self.kind_of[tp.topic], message.value)
                    n += 1
            batches = self.consumer.poll(timeout_ms=0)
        return n

    def read_to_end(self, state: OpsState, timeout_s: float = 30.0) -> int:
        """Read every message published before this call; return how many."""
        if not self.partitions:
            return 0
        ends = self.consumer.end_offsets(self.partitions)
        deadline = time.monotonic() + timeout_s
        n = 0
        while any(self.consumer.position(tp) < end for tp, end in ends.items()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read the ops topics to their end within {timeout_s:.0f}s")
            n += self.poll(state, timeout_s=0.5)
        return n

    def close(self) -> None:
        self.consumer.close()


def worker_group_ids(kafka: KafkaSettings, worker: WorkerSettings) -> tuple[str, ...]:
    """The worker's consumer groups: its ingest loop's (the source topics), its learner's input and the Faust
    app's (impressions).

    >>> worker_group_ids(KafkaSettings(topic_prefix="t1.recloop"), WorkerSettings(app_id="w"))
    ('w-t1.recloop-ingest', 'w-t1.recloop-learner', 'w-t1.recloop')
    """
    app_id = faust_app_id(kafka, worker)
    return ingest_group_id(app_id), learner_group_id(app_id), app_id


class LagReader:
    """The worker groups' committed offsets against the end offsets of the topics they consume."""

    def __init__(self, kafka: KafkaSettings, group_ids: tuple[str, ...]) -> None:
        self.kafka = kafka
        self.group_ids = group_ids
        self.names = [kafka.topic(spec.name) for spec in CONSUMED]
        self._admin = None
        self._consumer: KafkaConsumer | None = None

    def read(self) -> dict[str, dict[str, int]] | None:
        """Per topic: committed, end and lag (summed over partitions); None when the broker cannot tell."""
        from ops.topic_admin import admin_client

        try:
            if self._admin is None:
                self._admin = admin_client(self.kafka)
                self._consumer = KafkaConsumer(**self.kafka.kafka_python_options(), group_id=None,
                                               enable_auto_commit=False)
            committed = {}
            for offsets in self._admin.list_group_offsets({group: None for group in self.group_ids}).values():
                committed.update(offsets)  # each topic is consumed by one of the groups
            partitions = [TopicPartition(name, p) for name in self.names
                          for p in sorted(self._consumer.partitions_for_topic(name) or ())]
            ends = self._consumer.end_offsets(partitions) if partitions else {}
        except Exception as exc:  # a monitor must keep drawing when the broker hiccups
            log.warning("could not read consumer lag of groups %s: %s", self.group_ids, exc)
            self.close()
            return None
        out: dict[str, dict[str, int]] = {}
        for tp, end in ends.items():
            row = out.setdefault(tp.topic, {"committed": 0, "end": 0, "lag": 0})
            meta = committed.get(tp)
            position = meta.offset if meta is not None and meta.offset >= 0 else 0
            row["committed"] += position
            row["end"] += end
            row["lag"] += max(0, end - position)
        return out

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()
        if self._consumer is not None:
            self._consumer.close()
        self._admin = self._consumer = None


# --------------------------------------------------------------------------- drawing


def sparkline(values: list[float], width: int = 24) -> str:
    """The last ``width`` values as block characters, scaled to their own range.

    >>> sparkline([0.0, 0.5, 1.0]), sparkline([2.0, 2.0])
    ('▁▅█', '▄▄')
    """
    values = [v for v in values if math.isfinite(v)][-width:]
    if not values:
        return ""
    low, high = min(values), max(values)
    if high == low:
        return SPARKS[3] * len(values)
    return "".join(SPARKS[round((v - low) / (high - low) * (len(SPARKS) - 1))] for v in values)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def age(seconds: float) -> str:
    """A short human age.

    >>> age(42), age(600), age(7200), age(3 * 86400)
    ('42s', '10m', '2.0h', '3.0d')
    """
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h" if seconds < 2 * 86400 else f"{seconds / 86400:.1f}d"


def _labels(labels: tuple[tuple[str, str], ...], hide_worker: bool) -> str:
    return ", ".join(f"{k}={v}" for k, v in labels if not (hide_worker and k == "worker"))


def render(state: OpsState, *, counts: dict | None, lag: dict | None, title: str,
           now: float | None = None, dashboard: DashboardSettings | None = None) -> Group:
    """One frame of the dashboard."""
    now = time.time() if now is None else now
    dashboard = dashboard or DashboardSettings()
    state, hidden = visible_workers(state, dashboard)
    hide_worker = len(state.workers) <= 1
    parts: list = [Text(title, style="bold")]
    if hidden:
        parts.append(Text(hidden_workers_note(hidden, dashboard), style="yellow"))
    parts.append(served_table(state, hide_worker, now))

    throughput = Table(title="throughput (worker /counts/)", title_justify="left")
    for column in ("topic", "accepted", "duplicates", "dead-lettered", "events/s"):
        throughput.add_column(column, justify="left" if column == "topic" else "right")
    if counts:
        for topic, c in sorted(counts.items()):
            rate = c.get("accepted", 0) / c["busy_s"] if c.get("busy_s") else 0.0
            throughput.add_row(topic, f"{c.get('accepted', 0):,}", f"{c.get('duplicates', 0):,}",
                               f"{c.get('dead_lettered', 0):,}", f"{rate:,.0f}")
    else:
        throughput.add_row("worker not reachable", "", "", "", "")
    parts.append(throughput)

    lag_table = Table(title="consumer lag (worker group)", title_justify="left")
    for column in ("topic", "committed", "end", "lag"):
        lag_table.add_column(column, justify="left" if column == "topic" else "right")
    if lag is None:
        lag_table.add_row("unknown", "", "", "")
    for topic, row in sorted((lag or {}).items()):
        lag_table.add_row(topic, f"{row['committed']:,}", f"{row['end']:,}", f"{row['lag']:,}")
    parts.append(lag_table)

    metrics = Table(title="other online metrics (recloop.ops.metrics; baseline.*: the model-free feature scorer, "
                          "a reference, not what is served)", title_justify="left")
    for column in ("metric", "labels", "value", "window", "history", "age"):
        metrics.add_column(column, justify="right" if column in ("value", "window", "age") else "left")
    for (name, labels), series in sorted(state.series.items()):
        if name.startswith("served.") and "model_version" in dict(labels):
            continue  # in the headline table
        if name in DIAGRAM_METRICS:
            continue  # the report's reliability diagram; calibration_ece sums it up here
        last = series[-1]
        metrics.add_row(name, _labels(labels, hide_worker), f"{last.value:.4g}", f"{last.window:,}",
                        sparkline([s.value for s in series]), age(now - last.ts))
    if not state.series:
        metrics.add_row("no snapshots yet", "", "", "", "", "")
    parts.append(metrics)

    alarms = Table(title=f"drift alarms (recloop.ops.drift): {len(state.alarms)} in total", title_justify="left")
    for column in ("time (UTC)", "signal", "detector", "severity", "value", "window"):
        alarms.add_column(column, justify="right" if column in ("value", "window") else "left")
    for alarm in list(state.alarms)[-10:]:
        alarms.add_row(_when(alarm.ts), alarm.signal, alarm.detector,
                       Text(alarm.severity, style=SEVERITY_STYLE.get(alarm.severity, "")), f"{alarm.value:.4g}",
                       f"{alarm.window:,}")
    parts.append(alarms)

    adapters = Table(title="adapters (recloop.model-updates) and gate decisions", title_justify="left")
    for column in ("created (UTC)", "version", "parent / vs", "gate", "candidate", "serving", "auc", "reason"):
        adapters.add_column(column, justify="right" if column in ("candidate", "serving", "auc") else "left")

    def number(info: AdapterInfo, key: str) -> str:
        value = info.metrics.get(key)
        return f"{value:.4f}" if value is not None else "–"

    for info in state.adapter_list()[-8:]:
        adapters.add_row(_when(info.created_at), info.version, info.parent or "–", Text("published", style="green"),
                         number(info, "ndcg_at_10"), number(info, "serving_ndcg_at_10"), number(info, "auc"), "")
    for gate in list(state.gates)[-8:]:  # the learner's gate decisions, refusals included
        tags = gate.labels
        published = gate.value >= 0.5
        adapters.add_row(_when(gate.ts), tags.get("version", "–"), tags.get("serving_version", "–"),
                         Text("published" if published else "refused", style="green" if published else "red"),
                         tags.get("candidate", ""), tags.get("serving", ""), "", tags.get("reason", ""))
    if not adapters.row_count:
        adapters.add_row("no adapter published yet", "", "", "", "", "", "", "")
    parts.append(adapters)
    if state.invalid:
        parts.append(Text(f"{state.invalid} invalid ops messages skipped", style="yellow"))
    return Group(*parts)


def _figure(value: float, signed: bool = False) -> str:
    """A served-quality figure: four decimals, signed for a difference.

    >>> _figure(0.25), _figure(-0.0312, signed=True), _figure(math.nan)
    ('0.2500', '-0.0312', '–')
    """
    if not math.isfinite(value):
        return "–"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def served_table(state: OpsState, hide_worker: bool, now: float) -> Table:
    """The headline: per model version, what serving showed scored against the shopper's next basket,
    beside the repeat baseline on the same impressions (lift = served − repeat NDCG@10)."""
    table = Table(title="served quality (headline): impressions × the shopper's next basket, vs the repeat "
                        "baseline on the same impressions", title_justify="left")
    table.add_column("model version")
    for _, title in SERVED_COLUMNS:
        table.add_column(title, justify="right")
    for column in ("impressions followed / closed", "NDCG@10 history", "age"):
        table.add_column(column, justify="right" if column != "NDCG@10 history" else "left")
    for row in state.served():
        tags = _labels(tuple((k, v) for k, v in row.labels if k != "model_version"), hide_worker)
        lift = row.value("served.lift_over_repeat")
        cells = [_figure(row.value(name), signed=name == "served.lift_over_repeat") for name, _ in SERVED_COLUMNS]
        cells[2] = Text(cells[2], style="green" if lift > 0 else "red" if lift < 0 else "")
        followed, closed = row.value("served.followed"), row.value("served.impressions")
        counts = f"{followed:,.0f} / {closed:,.0f}" if math.isfinite(closed) else "–"
        latest = max(series[-1].ts for series in row.series.values())
        history = row.series.get(SERVED_HEADLINE, ())
        table.add_row(row.version + (f" ({tags})" if tags else ""), *cells, counts,
                      sparkline([s.value for s in history]), age(now - latest))
    if not table.row_count:
        table.add_row("no impression joined with a basket yet", *[""] * (len(SERVED_COLUMNS) + 3))
    return table


def run_monitor(kafka: KafkaSettings, *, worker_url: str, group_ids: tuple[str, ...], once: bool, interval_s: float,
                console: Console, get_json: Callable[[str], dict | None] | None = None,
                max_frames: int | None = None, dashboard: DashboardSettings | None = None) -> int:
    """Draw the dashboard until interrupted (or one frame with ``once``); return an exit code.

    ``dashboard``: which workers to show (default from ``RECLOOP_DASHBOARD_*``)."""
    dashboard = dashboard or DashboardSettings()
    from ops.processes import get_json as http_json

    get_json = get_json or http_json
    state = OpsState()
    feed = OpsFeed(kafka)
    lag = LagReader(kafka, group_ids)
    title = f"recloop monitor — broker {kafka.bootstrap}, topics {kafka.topic_prefix}.*, worker {worker_url}"

    def frame() -> Group:
        return render(state, counts=get_json(worker_url.rstrip("/") + "/counts/"), lag=lag.read(),
                      title=f"{title} — {_when(time.time())} UTC", dashboard=dashboard)

    try:
        if once:
            feed.read_to_end(state)
            console.print(frame())
            return 0
        from rich.live import Live

        feed.read_to_end(state)
        frames = 0
        with Live(frame(), console=console, refresh_per_second=1, screen=False) as live:
            while max_frames is None or frames < max_frames:
                feed.poll(state, timeout_s=interval_s)
                live.update(frame())
                frames += 1
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        feed.close()
        lag.close()

"""The Faust application: one app and its topics, declared in one place.

Topics are raw bytes: the ingest loop (:mod:`streams.ingest_consumer`) and the agents validate messages
themselves, so a message that is not even JSON still reaches the dead-letter topic with its partition and
offset instead of failing inside Faust's deserializer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer

from streams import topics
from streams.faust_recovery import SeekFirstTableManager
from streams.settings import KafkaSettings, WorkerSettings
from streams.topics import MAX_MESSAGE_BYTES
from streams.worker_identity import WorkerIdentity, safe_name

#: Events an agent's stream buffers before Faust stops fetching its partition (at 80 %, 1 / 1.25).
STREAM_BUFFER_MAXSIZE = 4096
#: Records one fetch hands to the delivery loop: fits in the 20 % of a stream buffer left when fetching stops.
MAX_POLL_RECORDS = 500
assert MAX_POLL_RECORDS < STREAM_BUFFER_MAXSIZE - int(STREAM_BUFFER_MAXSIZE / 1.25)


@dataclass
class RecloopApp:
    """The Faust app plus the handles the agents need."""

    app: faust.App
    kafka: KafkaSettings
    worker: WorkerSettings
    interactions: faust.TopicT
    feedback: faust.TopicT
    catalog: faust.TopicT
    dlq: faust.TopicT
    #: The worker's stable identity (:mod:`streams.worker_identity`), when it claimed one before the app was built.
    identity: WorkerIdentity | None = None


def _raw_topic(app: faust.App, kafka: KafkaSettings, spec: topics.TopicSpec) -> faust.TopicT:
    return app.topic(kafka.topic(spec.name), key_type=bytes, value_type=bytes, key_serializer="raw",
                     value_serializer="raw", partitions=topics.partitions_for(spec, kafka),
                     config=spec.config())


def faust_app_id(kafka: KafkaSettings, worker: WorkerSettings) -> str:
    """Faust's app id: the consumer group and the prefix of its internal topics, one per topic prefix.

    >>> faust_app_id(KafkaSettings(topic_prefix="t1.recloop"), WorkerSettings(app_id="w"))
    'w-t1.recloop'
    """
    return f"{worker.app_id}-{kafka.topic_prefix}" if kafka.topic_prefix != "recloop" else worker.app_id


def worker_data_dir(kafka: KafkaSettings) -> Path:
    """Where a worker of this deployment (topic prefix) keeps its local state."""
    return _ensure_dir(kafka.home / "worker" / kafka.topic_prefix)


def group_instance_id(identity: WorkerIdentity, worker: WorkerSettings) -> str:
    """The worker's static membership id: its worker id *and* its web address. The broker hands a returning
    static member the assignment of its previous life, which Faust stamps with the worker's web URL (and
    refuses when the URL differs), so a worker that comes back on another address joins as a new member.

    >>> from pathlib import Path
    >>> group_instance_id(WorkerIdentity("shop 7", Path(".")), WorkerSettings(web_host="localhost", web_port=6066))
    'shop_7-localhost-6066'
    """
    return safe_name(f"{identity.id}-{worker.web_host}-{worker.web_port}")


def static_member_id(r: RecloopApp, consumer: str) -> str | None:
    """The static membership id of one of the worker's own consumers (``consumer``: ``ingest``, ``learner``), or
    None when the worker is not a static member (no identity, or ``RECLOOP_WORKER_STATIC_MEMBERSHIP`` off)."""
    if r.identity is None or not r.worker.static_membership:
        return None
    return f"{group_instance_id(r.identity, r.worker)}-{consumer}"


def group_consumer(kafka: KafkaSettings, group_id: str, group_instance_id: str | None,
                   **options: Any) -> AIOKafkaConsumer:
    """A consumer of one of the worker's own groups (its client id is the group's): offsets committed by hand, a
    new group starts from the earliest record, messages up to the largest the topics accept, a dead member noticed
    within 30 s. ``options``: more aiokafka settings."""
    return AIOKafkaConsumer(**kafka.aiokafka_options(), group_id=group_id, group_instance_id=group_instance_id,
                            client_id=group_id, enable_auto_commit=False, auto_offset_reset="earliest",
                            max_partition_fetch_bytes=MAX_MESSAGE_BYTES, session_timeout_ms=30_000,
                            heartbeat_interval_ms=3_000, **options)


def create_app(kafka: KafkaSettings | None = None, worker: WorkerSettings | None = None,
               identity: WorkerIdentity | None = None) -> RecloopApp:
    """The Faust app. With the worker's ``identity`` and ``RECLOOP_WORKER_STATIC_MEMBERSHIP=1`` the consumer is a
    **static member** of its group (:func:`group_instance_id`): a worker restarted after a crash (``kill -9``)
    rejoins with its old partitions at once instead of waiting for the broker to expire the dead member's
    session (30 s; docs/operations.md, "Faults"). The price: a worker that stops for good keeps its partitions for that
    session timeout before they move."""
    kafka = kafka or KafkaSettings()
    worker = worker or WorkerSettings()
    app = faust.App(
        faust_app_id(kafka, worker),
        broker=kafka.faust_broker_url,
        broker_credentials=kafka.faust_credentials(),  # SASL/TLS (RECLOOP_KAFKA_SECURITY_PROTOCOL …) or None
        store="memory://",
        autodiscover=False,
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication_factor,
        processing_guarantee="at_least_once",
        producer_max_request_size=MAX_MESSAGE_BYTES,
        # Changelog and dead-letter writes are many and small: batch them instead of one request each.
        producer_linger=0.02,
        producer_max_batch_size=512 * 1024,
        consumer_max_fetch_size=MAX_MESSAGE_BYTES,
        # Flow control without stalls: an agent that stops reading (the learner, its inbox full) leaves its
        # stream buffer to fill; at 80 % of STREAM_BUFFER_MAXSIZE Faust stops fetching that partition, but the
        # rest of the batch in hand is still delivered. If that rest does not fit in the last 20 %, Faust's
        # single delivery loop waits on the full buffer and *every* agent stops (measured: ingest of 3,000
        # events took 26 s instead of 6 while the learner caught up). Without this limit one batch is
        # everything fetched, up to consumer_max_fetch_size per partition (tens of thousands of events).
        stream_buffer_maxsize=STREAM_BUFFER_MAXSIZE,
        broker_max_poll_records=MAX_POLL_RECORDS,
        web_enabled=True,
        web_host=worker.web_host,
        web_port=worker.web_port,
        datadir=str(worker_data_dir(kafka)),
        # A rebalance should not wait for long: partitions move to the workers that are alive.
        broker_session_timeout=30,
        broker_heartbeat_interval=3,
        stream_wait_empty=False,
        consumer_group_instance_id=(group_instance_id(identity, worker)
                                    if identity is not None and worker.static_membership else None),
        # Faust's recovery resumes stream partitions before seeking them, which loses messages (faust#596).
        TableManager=SeekFirstTableManager,
    )
    # Deduplication state lives outside Faust's tables, with the ingest loop (streams.seen_table).
    return RecloopApp(
        app=app,
        kafka=kafka,
        worker=worker,
        interactions=_raw_topic(app, kafka, topics.INTERACTIONS),
        feedback=_raw_topic(app, kafka, topics.EXPLANATION_FEEDBACK),
        catalog=_raw_topic(app, kafka, topics.CATALOG),
        dlq=_raw_topic(app, kafka, topics.DLQ),
        identity=identity,
    )


def _ensure_dir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()

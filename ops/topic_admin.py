"""Create the contract's topics, idempotently, with their partitions and configuration."""

from __future__ import annotations

import logging
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from streams.settings import KafkaSettings, WorkerSettings
from streams.topics import ALL_TOPICS, TopicSpec, partitions_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicResult:
    name: str
    partitions: int
    created: bool


def admin_client(settings: KafkaSettings) -> KafkaAdminClient:
    return KafkaAdminClient(**settings.kafka_python_options(), client_id="recloop-admin",
                            request_timeout_ms=30_000)


def create_topics(settings: KafkaSettings, specs: tuple[TopicSpec, ...] = ALL_TOPICS) -> list[TopicResult]:
    """Create every topic that does not exist yet; existing ones are left as they are."""
    admin = admin_client(settings)
    try:
        existing = set(admin.list_topics())
        results = []
        for spec in specs:
            name = settings.topic(spec.name)
            partitions = partitions_for(spec, settings)
            if name in existing:
                results.append(TopicResult(name, partitions, created=False))
                continue
            topic = NewTopic(name=name, num_partitions=partitions,
                             replication_factor=settings.replication_factor, topic_configs=spec.config())
            try:
                admin.create_topics([topic])
                log.info("created topic %s partitions=%d config=%s", name, partitions, spec.config())
                results.append(TopicResult(name, partitions, created=True))
            except TopicAlreadyExistsError:
                results.append(TopicResult(name, partitions, created=False))
        return results
    finally:
        admin.close()


def create_learner_topic(kafka: KafkaSettings, worker: WorkerSettings) -> str:
    """Create the worker's internal learner topic before the worker starts (idempotent); returns its name.

    Faust would create it too, but at start-up, racing its own subscription: the consumer may fetch
    metadata before the new topic is in it, log "Ignoring missing topic" and never be assigned the
    learner's partition, so that worker never trains (seen once in a test run of 2026-12-02).
    """
    from streams.app import faust_app_id
    from streams.learning import learner_topic_name
    from streams.topics import MAX_MESSAGE_BYTES

    name = learner_topic_name(faust_app_id(kafka, worker))
    admin = admin_client(kafka)
    try:
        if name not in set(admin.list_topics()):
            try:
                admin.create_topics([NewTopic(name=name, num_partitions=1, replication_factor=kafka.replication_factor,
                                              topic_configs={"max.message.bytes": str(MAX_MESSAGE_BYTES)})])
                log.info("created topic %s (the learner's input, 1 partition)", name)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()
    return name


def fresh_run_topics(base: KafkaSettings, stem: str) -> KafkaSettings:
    """Settings for one benchmark run on ``base``'s broker: topics of their own (prefix ``<stem><random>``, created
    now) and a temporary ``RECLOOP_HOME``, so a run never sees another's messages or state."""
    settings = base.model_copy(update={"kafka_bootstrap": base.bootstrap,  # same broker, same security
                                       "topic_prefix": f"{stem}{uuid.uuid4().hex[:8]}",
                                       "home": Path(tempfile.mkdtemp(prefix=f"recloop-{stem}-"))})
    create_topics(settings)
    return settings


def delete_topics(settings: KafkaSettings, *, app_id: str | None = None) -> None:
    """Delete every topic under ``settings.topic_prefix`` and, given a worker's Faust ``app_id``, its internal
    topics (table changelogs, repartition topics), best effort: benchmarks and demo runs clean up after
    themselves (a MiniLM run leaves megabytes of adapters per version on the broker otherwise). The serving
    snapshot of those topics goes with them (:mod:`serving.snapshot`: a hundred megabytes on the full history)."""
    from serving.snapshot import snapshot_path

    snapshot_path(settings.home, settings.topic_prefix).unlink(missing_ok=True)
    try:
        admin = admin_client(settings)
        try:
            names = [t for t in admin.list_topics() if t.startswith(settings.topic_prefix + ".")
                     or (app_id is not None and t.startswith(app_id + "-"))]
            if names:
                admin.delete_topics(names)
        finally:
            admin.close()
    except Exception as exc:  # the benchmark's numbers matter more than the clean-up
        log.warning("could not delete the topics under %s: %s", settings.topic_prefix, exc)

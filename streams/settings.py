"""Where recloop finds its broker and names its topics: one settings object, from env vars.

Every setting is tied to an environment variable ``RECLOOP_<NAME>``; nothing else in the code
hard-codes a broker address or a topic name.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_LOCAL_BOOTSTRAP = "localhost:9092"


class KafkaSettings(BaseSettings):
    """Broker, topic names and the local state directory."""

    model_config = SettingsConfigDict(env_prefix="RECLOOP_", frozen=True, extra="ignore")

    #: ``host:port[,host:port]`` of an existing cluster. Empty means "the local broker that
    #: ``recloop kafka start`` runs" on :data:`DEFAULT_LOCAL_BOOTSTRAP`.
    kafka_bootstrap: str = ""
    #: Prefix of every topic name (``recloop.interactions`` …). Tests use a unique one each.
    topic_prefix: str = "recloop"
    #: Partitions of the event topics; more partitions allow more workers in parallel.
    partitions: int = Field(default=4, ge=1, le=256)
    replication_factor: int = Field(default=1, ge=1)
    #: Where the local broker, worker state and adapters live.
    home: Path = Path(".recloop")

    @property
    def bootstrap(self) -> str:
        return self.kafka_bootstrap or DEFAULT_LOCAL_BOOTSTRAP

    @property
    def uses_external_cluster(self) -> bool:
        return bool(self.kafka_bootstrap)

    def topic(self, name: str) -> str:
        """Full name of a contract topic: ``topic("interactions") == "recloop.interactions"``."""
        return f"{self.topic_prefix}.{name}"

    @cached_property
    def faust_broker_url(self) -> str:
        return ";".join(f"kafka://{host}" for host in self.bootstrap.split(","))


#: Default of :attr:`JoinSettings.label_window_s` (30 minutes).
DEFAULT_LABEL_WINDOW_S = 1800.0


class JoinSettings(BaseSettings):
    """How an impression is joined with the shopper's responses to it (env ``RECLOOP_<NAME>``).

    One setting for every join on ``rec_id``: the learner's labels (a shown item not chosen within the
    window is a negative) and the monitor's CTR read the same window, so they cannot disagree.
    """

    model_config = SettingsConfigDict(env_prefix="RECLOOP_", frozen=True, extra="ignore")

    #: A click, add-to-cart or purchase answers an impression when it comes within this many seconds of
    #: it, in event time (``RECLOOP_LABEL_WINDOW_S``).
    label_window_s: float = Field(default=DEFAULT_LABEL_WINDOW_S, gt=0)


class WorkerSettings(BaseSettings):
    """Settings of ``recloop worker``."""

    model_config = SettingsConfigDict(env_prefix="RECLOOP_WORKER_", frozen=True, extra="ignore")

    #: Faust application id: the consumer group. Workers with the same id share partitions.
    app_id: str = "recloop-worker"
    #: This worker's stable id (``RECLOOP_WORKER_ID``): the ``worker`` label of its metrics and the name of its
    #: state directory. Empty: the host name, ``<host>-2`` … for further workers running at the same time on
    #: the same data directory, kept across restarts (:mod:`streams.worker_identity`).
    id: str = ""
    #: Port of the worker's web endpoint (``/counts``, ``/metrics``).
    web_port: int = Field(default=6066, ge=0, le=65535)
    web_host: str = "127.0.0.1"
    #: Join the consumer group as a static member (``RECLOOP_WORKER_STATIC_MEMBERSHIP=1``): a worker restarted
    #: after a crash gets its partitions back at once instead of after the dead member's 30 s session timeout
    #: (``recloop bench faults``: ready 6–9 s instead of 35 s). Off by default because of its price: a worker
    #: that stops for good (scaling down) keeps its partitions for the 30 s session timeout before they move.
    static_membership: bool = False
    #: How long the deduplication table remembers an ``event_id`` (seconds since the worker first accepted it;
    #: 0: forever). Within it, a replay, a producer's retry or a redelivery is a duplicate; after it, the same id
    #: is accepted again (:mod:`streams.dedup`). A week by default.
    dedup_window_s: float = Field(default=7 * 24 * 3600.0, ge=0)
    #: How often each partition's expired entries are deleted (while the partition receives messages).
    dedup_purge_every_s: float = Field(default=60.0, gt=0)
    #: How many messages an ingest agent takes at once, and how long it waits for them.
    batch_size: int = Field(default=500, ge=1)
    batch_within_s: float = Field(default=0.2, gt=0)
    log_level: str = "info"

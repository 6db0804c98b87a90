"""Where recloop finds its broker and names its topics: one settings object, from env vars.

Every setting is tied to an environment variable ``RECLOOP_<NAME>``; nothing else in the code
hard-codes a broker address or a topic name.
"""

from __future__ import annotations

import ssl
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

DEFAULT_LOCAL_BOOTSTRAP = "localhost:9092"

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


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
    #: How every client (worker, serving, replay, tools) talks to the brokers: ``PLAINTEXT`` (the local
    #: broker), ``SSL`` (TLS), ``SASL_SSL`` (TLS plus a user name and password: a managed cluster) or
    #: ``SASL_PLAINTEXT``.
    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    #: SASL mechanism with ``SASL_*``: ``SCRAM-SHA-512`` (default), ``SCRAM-SHA-256`` or ``PLAIN``.
    kafka_sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    kafka_sasl_username: str = ""
    #: Never logged nor printed (``SecretStr``); also read from the file ``RECLOOP_KAFKA_SASL_PASSWORD_FILE``.
    kafka_sasl_password: SecretStr = SecretStr("")
    kafka_sasl_password_file: Path | None = None
    #: PEM file of the CA that signed the brokers' certificates (TLS); empty: the system's trusted CAs.
    kafka_ssl_cafile: Path | None = None

    @model_validator(mode="after")
    def _security_is_complete(self) -> KafkaSettings:
        if self.kafka_security_protocol.startswith("SASL_") and not (
                self.kafka_sasl_username and self.sasl_password):
            raise ValueError(f"RECLOOP_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                             "RECLOOP_KAFKA_SASL_USERNAME and RECLOOP_KAFKA_SASL_PASSWORD (or _PASSWORD_FILE)")
        if self.kafka_ssl_cafile is not None and not self.kafka_ssl_cafile.is_file():
            raise ValueError(f"RECLOOP_KAFKA_SSL_CAFILE={self.kafka_ssl_cafile} is not a file")
        return self

    @property
    def sasl_password(self) -> str:
        if self.kafka_sasl_password_file is not None:
            return self.kafka_sasl_password_file.read_text().strip()
        return self.kafka_sasl_password.get_secret_value()

    @property
    def uses_tls(self) -> bool:
        return self.kafka_security_protocol in ("SSL", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client TLS context that verifies the brokers (``kafka_ssl_cafile`` or the system CAs); None without TLS."""
        if not self.uses_tls:
            return None
        cafile = str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile is not None else None
        return ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH, cafile=cafile)

    def security_options(self) -> dict[str, Any]:
        """The security keyword arguments every Kafka client library here takes alike (aiokafka, kafka-python)."""
        options: dict[str, Any] = {"security_protocol": self.kafka_security_protocol}
        if self.uses_tls:
            options["ssl_context"] = self.ssl_context()
        if self.kafka_security_protocol.startswith("SASL_"):
            options.update(sasl_mechanism=self.kafka_sasl_mechanism, sasl_plain_username=self.kafka_sasl_username,
                           sasl_plain_password=self.sasl_password)
        return options

    def aiokafka_options(self) -> dict[str, Any]:
        """Where and how an aiokafka client connects: ``AIOKafkaProducer(**kafka.aiokafka_options(), acks="all")``."""
        return {"bootstrap_servers": self.bootstrap, **self.security_options()}

    def kafka_python_options(self) -> dict[str, Any]:
        """The same for a kafka-python client (``KafkaAdminClient``, ``KafkaConsumer``)."""
        return {"bootstrap_servers": self.bootstrap.split(","), **self.security_options()}

    def faust_credentials(self) -> CredentialsT | None:
        """Faust's ``broker_credentials`` for these settings (None: plaintext)."""
        from faust import SASLCredentials, SSLCredentials

        if self.kafka_security_protocol.startswith("SASL_"):
            return SASLCredentials(username=self.kafka_sasl_username, password=self.sasl_password,
                                   ssl_context=self.ssl_context(), mechanism=self.kafka_sasl_mechanism)
        if self.kafka_security_protocol == "SSL":
            return SSLCredentials(self.ssl_context())
        return None

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

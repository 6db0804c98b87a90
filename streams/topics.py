"""The contract's topics, declared once: name, key, record type and Kafka configuration."""

from __future__ import annotations

from dataclasses import dataclass, field

from streams import records
from streams.settings import KafkaSettings

#: Broker-wide and per-topic ceiling for one message: adapters travel whole on
#: ``recloop.model-updates`` and a dead letter keeps the raw bytes it was given.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class TopicSpec:
    name: str  #: contract name without the prefix, e.g. ``"interactions"``
    key: str  #: what the message key is, for the docs
    record: type | None  #: record type of the value (None: free-form)
    compacted: bool = False
    partitioned: bool = True  #: False: a single partition (total order matters more than scale)
    extra_config: dict[str, str] = field(default_factory=dict)

    def config(self) -> dict[str, str]:
        config = {"max.message.bytes": str(MAX_MESSAGE_BYTES)}
        if self.compacted:
            config.update({"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1", "segment.ms": "600000"})
        config.update(self.extra_config)
        return config


CATALOG = TopicSpec("catalog", "item_id", records.Item, compacted=True)
INTERACTIONS = TopicSpec("interactions", "user_id", records.Interaction)
IMPRESSIONS = TopicSpec("impressions", "user_id", records.Impression)
EXPLANATION_FEEDBACK = TopicSpec("explanation-feedback", "user_id", records.ExplanationFeedback)
MODEL_UPDATES = TopicSpec("model-updates", '"adapter"', records.AdapterUpdate, compacted=True, partitioned=False)
OPS_METRICS = TopicSpec("ops.metrics", "metric name", records.MetricSnapshot, partitioned=False)
OPS_DRIFT = TopicSpec("ops.drift", "detector name", records.DriftAlarm, partitioned=False)
DLQ = TopicSpec("dlq", "source topic", records.DeadLetter)
#: The explanation bandit's posteriors, signed like adapters; serving workers follow it (latest valid wins).
EXPLANATION_POLICY = TopicSpec("explanation-policy", '"policy"', records.ExplanationPolicy, compacted=True,
                               partitioned=False)

ALL_TOPICS: tuple[TopicSpec, ...] = (
    CATALOG,
    INTERACTIONS,
    IMPRESSIONS,
    EXPLANATION_FEEDBACK,
    MODEL_UPDATES,
    OPS_METRICS,
    OPS_DRIFT,
    DLQ,
    EXPLANATION_POLICY,
)


def partitions_for(spec: TopicSpec, settings: KafkaSettings) -> int:
    return settings.partitions if spec.partitioned else 1

"""Settings of the online learner inside ``recloop worker``: one object, every field an env var.

Fields read ``RECLOOP_LEARNER_<NAME>``; three read deployment-wide names instead:
``RECLOOP_LEARNER`` (``off`` disables learning in the worker), ``RECLOOP_ADAPTER_KEY`` (the
HMAC key that signs every published adapter) and ``RECLOOP_DEMO`` (``1``: a fixed, public
demo key is allowed when no key is set — never in a real deployment).

>>> s = LearnerSettings(enabled="off", adapter_key="k")
>>> s.enabled, s.signing_key()
(False, b'k')
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:  # torch-heavy: imported when used, so `RECLOOP_LEARNER=off` workers never load torch
    from learner.examples import ExampleConfig
    from learner.gate import PublishGate
    from learner.trainer import TrainerConfig

log = logging.getLogger(__name__)

#: The key ``RECLOOP_DEMO=1`` signs with. Public by construction: it only keeps a demo self-consistent.
DEMO_KEY = b"recloop-demo-key-not-secret"


class LearnerConfigError(RuntimeError):
    """The learner cannot start with this configuration; the message says what to set."""


class LearnerSettings(BaseSettings):
    """Hyperparameters and wiring of the streaming learner."""

    model_config = SettingsConfigDict(env_prefix="RECLOOP_LEARNER_", frozen=True, extra="ignore",
                                      populate_by_name=True)

    #: ``RECLOOP_LEARNER=off`` (or ``RECLOOP_LEARNER_ENABLED=false``) runs the worker without learning.
    enabled: bool = Field(True, validation_alias=AliasChoices("RECLOOP_LEARNER", "RECLOOP_LEARNER_ENABLED",
                                                              "enabled"))
    #: A local HF encoder directory; ``None``: ``$RECLOOP_BASE_MODEL_DIR`` or the bundled all-MiniLM-L6-v2.
    model_dir: Path | None = None
    #: A tiny random BERT instead of the pretrained base: for tests only (fast, meaningless text vectors).
    tiny: bool = False
    device: Literal["cpu", "cuda", "auto"] = "auto"
    #: torch intra-op threads on CPU. 1 leaves the other core to the ingest agents; 0 = torch's default.
    torch_threads: int = Field(default=1, ge=0)
    #: Where the service runs: its own process (training never holds the worker's GIL; the default) or a
    #: thread of the worker (less memory; a busy learner then slows ingest down).
    isolation: Literal["process", "thread"] = "process"
    #: How much lower the learner's CPU priority is than the worker's (``nice``): ingest never waits for training,
    #: training uses whatever CPU ingest leaves. 0 = same priority.
    nice: int = Field(default=10, ge=0, le=19)
    seed: int = 0

    # -- micro-batches (Faust side)
    #: Events the trainer agent takes at once, and how long it waits to fill a batch.
    batch_size: int = Field(default=512, ge=1)
    batch_within_s: float = Field(default=2.0, gt=0)
    #: Events waiting for the learner before the worker stops fetching its topic (resumed at half).
    max_pending_events: int = Field(default=20_000, ge=2)
    #: Recent event ids the learner remembers, to learn an event redelivered to it only once.
    dedup_window: int = Field(default=100_000, ge=0)

    # -- examples
    negatives: int = Field(default=15, ge=1, le=1000)
    popular_pool: int = Field(default=200, ge=1)
    popular_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    label_window_s: float = Field(default=1800.0, gt=0)
    max_open_impressions: int = Field(default=10_000, ge=1)
    history_items: int = Field(default=50, ge=1)

    # -- training
    train_batch_size: int = Field(default=64, ge=1)
    lora_lr: float = Field(default=5e-4, gt=0)
    head_lr: float = Field(default=5e-3, gt=0)
    anchor_l2: float = Field(default=1e-2, ge=0)
    replay_fraction: float = Field(default=0.25, ge=0)
    max_encoded_items: int = Field(default=64, ge=1)
    #: Train the text tower (LoRA) every Nth optimizer step, the head alone in between: a version whose
    #: LoRA did not change spares every serving worker a catalogue re-encode (see docs/learner.md).
    text_every: int = Field(default=16, ge=1)
    #: ... and at most once per this many seconds (0: no limit).
    text_min_interval_s: float = Field(default=30.0, ge=0)
    #: Items encoded per forward, sorted by length, so each pads only to its bucket's longest (0: no bucketing).
    encode_bucket_size: int = Field(default=16, ge=0)

    # -- publish gate
    gate_metric: Literal["ndcg@10", "auc"] = "ndcg@10"
    gate_tolerance: float = Field(default=0.005, ge=0)
    #: Held-out examples needed before a candidate is judged (and so before anything is published).
    min_examples_per_publish: int = Field(default=64, ge=1)
    #: The gate scores at most this many of the newest held-out examples (bounds the re-encoding it costs).
    max_gate_window: int = Field(default=256, ge=1)

    # -- trust
    adapter_key: SecretStr | None = Field(None, validation_alias=AliasChoices("RECLOOP_ADAPTER_KEY", "adapter_key"))
    demo: bool = Field(False, validation_alias=AliasChoices("RECLOOP_DEMO", "demo"))

    def signing_key(self) -> bytes:
        """The HMAC key for adapters; a missing key is an error unless this is a demo."""
        if self.adapter_key is not None and self.adapter_key.get_secret_value():
            return self.adapter_key.get_secret_value().encode()
        if self.demo:
            log.warning("RECLOOP_ADAPTER_KEY is not set: signing adapters with the public DEMO key "
                        "(RECLOOP_DEMO=1). Anyone can forge these adapters; never do this in production.")
            return DEMO_KEY
        raise LearnerConfigError(
            "RECLOOP_ADAPTER_KEY is not set: the learner signs every adapter it publishes and serving "
            "workers refuse unsigned ones. Set RECLOOP_ADAPTER_KEY to a shared secret (or RECLOOP_DEMO=1 "
            "for a local demo, or RECLOOP_LEARNER=off to run the worker without learning).")

    def example_config(self) -> ExampleConfig:
        from learner.examples import ExampleConfig

        return ExampleConfig(negatives=self.negatives, popular_pool=self.popular_pool,
                             popular_fraction=self.popular_fraction, label_window_s=self.label_window_s,
                             max_open_impressions=self.max_open_impressions, max_history=self.history_items,
                             seed=self.seed)

    def trainer_config(self) -> TrainerConfig:
        from learner.trainer import TrainerConfig

        return TrainerConfig(lora_lr=self.lora_lr, head_lr=self.head_lr, anchor_l2=self.anchor_l2,
                             replay_fraction=self.replay_fraction, max_encoded_items=self.max_encoded_items,
                             text_every=self.text_every, text_min_interval_s=self.text_min_interval_s,
                             seed=self.seed)

    def gate(self) -> PublishGate:
        from learner.gate import PublishGate

        return PublishGate(metric=self.gate_metric, tolerance=self.gate_tolerance,
                           min_examples=self.min_examples_per_publish)

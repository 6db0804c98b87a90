"""Settings of the online learner inside ``recloop worker``: one object, every field an env var.

Fields read ``RECLOOP_LEARNER_<NAME>``; three read deployment-wide names instead:
``RECLOOP_LEARNER`` (``off`` disables learning in the worker), ``RECLOOP_ADAPTER_KEY`` (the
HMAC key that signs every published adapter; or ``RECLOOP_ADAPTER_KEY_FILE``, a file holding it,
e.g. a Docker secret) and ``RECLOOP_DEMO`` (``1``: a fixed, public demo key is allowed when no key
is set — never in a real deployment).

>>> s = LearnerSettings(enabled="off", adapter_key="k")
>>> s.enabled, s.signing_key()
(False, b'k')
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from learner.features import BASKET_LATENESS_S
from learner.ranker_config import DEFAULTS as _RANKER
from learner.ranker_config import RankerConfig
from streams.dedup import RECENT_IDS

log = logging.getLogger(__name__)

#: The key ``RECLOOP_DEMO=1`` signs with. Public by construction: it only keeps a demo self-consistent.
DEMO_KEY = b"recloop-demo-key-not-secret"


class LearnerConfigError(RuntimeError):
    """The learner cannot start with this configuration; the message says what to set."""


def configured_key(key: SecretStr | None, key_file: Path | None, error: type[Exception]) -> bytes | None:
    """The adapter key from ``RECLOOP_ADAPTER_KEY`` or from the file ``RECLOOP_ADAPTER_KEY_FILE`` names.

    The file's content is the key, less a trailing line break (``echo KEY > file`` works). Setting both, or
    a file that cannot be read or is empty, raises ``error``; neither set returns ``None``.

    >>> configured_key(SecretStr("k"), None, ValueError), configured_key(None, None, ValueError)
    (b'k', None)
    """
    value = key.get_secret_value() if key is not None else ""
    if key_file is None:
        return value.encode() if value else None
    if value:
        raise error("both RECLOOP_ADAPTER_KEY and RECLOOP_ADAPTER_KEY_FILE are set: set only one")
    try:
        value = key_file.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise error(f"RECLOOP_ADAPTER_KEY_FILE={key_file} cannot be read: {exc.strerror or exc}") from None
    if not value:
        raise error(f"RECLOOP_ADAPTER_KEY_FILE={key_file} is empty")
    return value.encode()


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
    dedup_window: int = Field(default=RECENT_IDS, ge=0)
    #: The learner writes its whole state to disk (``learner.checkpoint``) after every published version and at
    #: least this often while it learns; offsets are committed only up to the last checkpoint, so a restart
    #: replays at most this much of its input.
    checkpoint_interval_s: float = Field(default=30.0, gt=0)
    #: Seconds a critical drift alarm on the item mix (a bot, random labels) holds publishing: every window
    #: decided meanwhile is refused and rolled back (``learner.drift_hold``; 0: never hold).
    drift_hold_s: float = Field(default=600.0, ge=0)

    #: Event-time seconds a basket waits for its late lines (``learner.features.BASKET_LATENESS_S``); one
    #: deployment-wide name, read by serving workers too.
    basket_lateness_s: float = Field(default=BASKET_LATENESS_S, ge=0,
                                     validation_alias=AliasChoices("RECLOOP_BASKET_LATENESS_S", "basket_lateness_s"))

    # -- learning (defaults: learner/ranker_config.py, the one place they are stated)
    #: Baskets held out per publish decision (a new version at most every this many baskets).
    window_baskets: int = Field(default=_RANKER.window_baskets, ge=1)
    head_lr: float = Field(default=_RANKER.head_lr, gt=0)
    lora_lr: float = Field(default=_RANKER.lora_lr, gt=0)
    anchor_l2: float = Field(default=_RANKER.anchor_l2, ge=0)
    #: Train the text tower (LoRA) every this many windows (a head-only version spares serving workers a
    #: catalogue re-encode).
    text_every_windows: int = Field(default=_RANKER.text_every_windows, ge=1)
    gate_tolerance: float = Field(default=_RANKER.gate_tolerance, ge=0)
    #: Items encoded per forward, sorted by length, so each pads only to its bucket's longest (0: no bucketing).
    encode_bucket_size: int = Field(default=16, ge=0)

    # -- trust
    adapter_key: SecretStr | None = Field(None, validation_alias=AliasChoices("RECLOOP_ADAPTER_KEY", "adapter_key"))
    #: A file holding the key instead (a Docker or Kubernetes secret), read when the key is needed.
    adapter_key_file: Path | None = Field(None, validation_alias=AliasChoices("RECLOOP_ADAPTER_KEY_FILE",
                                                                              "adapter_key_file"))
    demo: bool = Field(False, validation_alias=AliasChoices("RECLOOP_DEMO", "demo"))

    def signing_key(self) -> bytes:
        """The HMAC key for adapters; a missing key is an error unless this is a demo."""
        key = configured_key(self.adapter_key, self.adapter_key_file, LearnerConfigError)
        if key is not None:
            return key
        if self.demo:
            log.warning("RECLOOP_ADAPTER_KEY is not set: signing adapters with the public DEMO key "
                        "(RECLOOP_DEMO=1). Anyone can forge these adapters; never do this in production.")
            return DEMO_KEY
        raise LearnerConfigError(
            "RECLOOP_ADAPTER_KEY is not set: the learner signs every adapter it publishes and serving "
            "workers refuse unsigned ones. Set RECLOOP_ADAPTER_KEY to a shared secret, or "
            "RECLOOP_ADAPTER_KEY_FILE to a file holding it (or RECLOOP_DEMO=1 for a local demo, or "
            "RECLOOP_LEARNER=off to run the worker without learning).")

    def ranker_config(self) -> RankerConfig:
        return dataclasses.replace(_RANKER, window_baskets=self.window_baskets, head_lr=self.head_lr,
                                   lora_lr=self.lora_lr, anchor_l2=self.anchor_l2,
                                   text_every_windows=self.text_every_windows, gate_tolerance=self.gate_tolerance,
                                   seed=self.seed)

"""Settings of ``recloop serve``: one frozen object, every field tied to an environment variable.

The adapter signing key is the one secret a serving worker holds: without it a worker could not
tell a published adapter from a forged one, so outside demo mode a missing key stops start-up.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from learner.features import BASKET_LATENESS_S
from learner.settings import DEMO_KEY, configured_key  # DEMO_KEY: RECLOOP_DEMO=1's public key, demo mode only

log = logging.getLogger(__name__)

#: Largest ``k`` a client may ask for; an impression carries at most this many items.
MAX_K = 1000


class ServingConfigError(RuntimeError):
    """The worker cannot start with this configuration; the message says what to set."""


class ServingSettings(BaseSettings):
    """HTTP, model and limits of one serving worker (``RECLOOP_SERVE_<NAME>``, key ``RECLOOP_ADAPTER_KEY[_FILE]``)."""

    model_config = SettingsConfigDict(env_prefix="RECLOOP_SERVE_", frozen=True, extra="ignore", populate_by_name=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    #: HF model directory of the frozen base; empty: ``$RECLOOP_BASE_MODEL_DIR`` or the bundled MiniLM.
    model_dir: Path | None = Field(default=None, validation_alias=AliasChoices("RECLOOP_SERVE_MODEL_DIR",
                                                                              "RECLOOP_BASE_MODEL_DIR"))
    #: Serve the seeded tiny BERT instead of MiniLM (tests, quick benchmarks); adapters must match it.
    tiny: bool = False
    #: HMAC key adapters are signed with (shared with the publishing worker).
    adapter_key: SecretStr | None = Field(default=None, validation_alias="RECLOOP_ADAPTER_KEY")
    #: A file holding that key instead (a Docker or Kubernetes secret).
    adapter_key_file: Path | None = Field(default=None, validation_alias="RECLOOP_ADAPTER_KEY_FILE")
    #: Demo mode (``RECLOOP_DEMO=1``): fall back to the public demo key when no key is set.
    demo: bool = Field(default=False, validation_alias=AliasChoices("RECLOOP_SERVE_DEMO", "RECLOOP_DEMO"))
    default_k: int = Field(default=10, ge=1, le=MAX_K)
    #: History items (most recent) that shape the shopper's text vector.
    max_history: int = Field(default=50, ge=1)
    #: Event-time seconds a basket waits for its late lines (the learner reads the same variable).
    basket_lateness_s: float = Field(default=BASKET_LATENESS_S, ge=0,
                                     validation_alias=AliasChoices("RECLOOP_BASKET_LATENESS_S", "basket_lateness_s"))
    #: Scoring above this many ms (moving average) moves off the event loop into a thread.
    inline_scoring_ms: float = Field(default=5.0, ge=0)
    #: Impressions waiting to be produced before new ones are dropped (and counted).
    max_pending_impressions: int = Field(default=2000, ge=1)
    #: How often new or retitled catalogue items are folded into the serving state.
    catalogue_refresh_s: float = Field(default=1.0, gt=0)
    #: How long start-up may spend catching up with the catalogue and interactions before serving.
    catch_up_timeout_s: float = Field(default=300.0, gt=0)
    log_level: str = "info"
    #: How often the worker snapshots its behaviour state for a fast restart (serving.snapshot); 0: never, and
    #: boot reads the topics from the beginning.
    snapshot_every_s: float = Field(default=120.0, ge=0)
    #: Serving processes sharing the port (one per core is the most a machine uses); each follows the topics.
    processes: int = Field(default=1, ge=1, le=64)

    def environment(self) -> dict[str, str]:
        """The ``RECLOOP_SERVE_*`` variables that give a child process these settings (the key stays in the
        environment it came from, never copied here)."""
        out = {f"RECLOOP_SERVE_{name.upper()}": str(getattr(self, name)) for name in (
            "host", "port", "tiny", "default_k", "max_history", "inline_scoring_ms", "max_pending_impressions",
            "catalogue_refresh_s", "catch_up_timeout_s", "log_level", "snapshot_every_s")}
        if self.model_dir is not None:
            out["RECLOOP_SERVE_MODEL_DIR"] = str(self.model_dir)
        out["RECLOOP_SERVE_DEMO"] = str(self.demo)
        out["RECLOOP_BASKET_LATENESS_S"] = str(self.basket_lateness_s)
        return out

    def signing_key(self) -> bytes:
        """The adapter key, the demo key in demo mode, or a :class:`ServingConfigError` that says what to set."""
        key = configured_key(self.adapter_key, self.adapter_key_file, ServingConfigError)
        if key is not None:
            return key
        if self.demo:
            log.warning("RECLOOP_ADAPTER_KEY is not set: verifying adapters with the public demo key (demo mode)")
            return DEMO_KEY
        raise ServingConfigError(
            "RECLOOP_ADAPTER_KEY is not set: a serving worker needs the key adapters are signed with to "
            "verify them. Set it (or RECLOOP_ADAPTER_KEY_FILE, a file holding it) to the same value as the "
            "publishing worker (or RECLOOP_DEMO=1 for a local demo)."
        )

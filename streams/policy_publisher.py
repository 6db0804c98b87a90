"""The worker publishes its explanation bandit as a signed policy on ``recloop.explanation-policy``.

Every ``interval_s`` a Faust timer looks at the monitor's bandit; when its posteriors changed since
the last publication (and at least ``min_feedback`` feedback events were learned since), it signs
them with the adapter key (:func:`learner.explanation_policy.make_policy`) and sends the record,
key ``"policy"``. Serving workers verify it and hot-swap it (:mod:`serving.policy`).

Versions are the wall clock in milliseconds, forced above the last one this process sent: they
stay strictly increasing across restarts of the worker (whose bandit survives in the monitor's
checkpoint) without any state of their own. With several workers, each learns from the feedback
of its own partitions (shoppers split at random, so each sees every segment) and the newest
publication wins.

Without a signing key (no ``RECLOOP_ADAPTER_KEY`` and not ``RECLOOP_DEMO=1``) nothing is
published: one warning says so, and serving keeps explaining by the largest scoring term.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from learner.explanation_bandit import ExplanationBandit
from learner.explanation_policy import calibration_moved, make_policy, posterior_changed
from learner.online_metrics import OnlineMonitor
from streams import topics
from streams.app import RecloopApp, _raw_topic
from streams.records import ExplanationPolicy, encode

log = logging.getLogger(__name__)

#: The message key of every policy (the topic is compacted: the latest policy is what a new worker reads).
POLICY_KEY = b"policy"


class PolicySettings(BaseSettings):
    """When the worker publishes its explanation policy (env ``RECLOOP_POLICY_<NAME>``)."""

    model_config = SettingsConfigDict(env_prefix="RECLOOP_POLICY_", frozen=True, extra="ignore")

    #: Publish at all (off: serving explains by the largest scoring term; the benchmark's baseline).
    enabled: bool = True
    #: How often the bandit is looked at; a policy is sent only when it changed.
    interval_s: float = Field(default=5.0, gt=0)
    #: Feedback events learned since the last publication before a new one is sent.
    min_feedback: int = Field(default=1, ge=1)


class PolicyPublisher:
    """Decides when the bandit is worth publishing and builds the signed record (no Kafka: testable)."""

    def __init__(self, bandit: Callable[[], ExplanationBandit], key: bytes, settings: PolicySettings,
                 feedback_count: Callable[[], int], clock: Callable[[], float] = time.time,
                 calibration: Callable[[], tuple[float, float, float, float] | None] = lambda: None) -> None:
        self.bandit = bandit
        self.calibration = calibration
        self.key = key
        self.settings = settings
        self.feedback_count = feedback_count
        self.clock = clock
        self.last: ExplanationPolicy | None = None
        self._feedback_at_last = 0

    def next_policy(self) -> ExplanationPolicy | None:
        """The policy to publish now, or None when neither the bandit nor the scores' calibration moved enough."""
        bandit, feedback, calibration = self.bandit(), self.feedback_count(), self.calibration()
        learned = (feedback - self._feedback_at_last >= self.settings.min_feedback
                   and posterior_changed(self.last, bandit))
        if not learned and not calibration_moved(self.last, calibration):
            return None
        now = self.clock()
        version = max(int(now * 1000), (self.last.version + 1) if self.last else 1)
        return make_policy(bandit, version=version, key=self.key, created_at=now, feedback_events=feedback,
                           calibration=calibration)

    def published(self, policy: ExplanationPolicy) -> None:
        self.last = policy
        self._feedback_at_last = policy.feedback_events


def policy_message(policy: ExplanationPolicy) -> tuple[bytes, bytes]:
    """Key and value of a policy on ``recloop.explanation-policy``."""
    return POLICY_KEY, encode(policy)


def policy_signing_key() -> bytes | None:
    """The adapter key (or the demo key in demo mode), None when there is none to sign with."""
    from learner.settings import LearnerConfigError, LearnerSettings

    try:
        return LearnerSettings().signing_key()
    except LearnerConfigError:
        return None


def publish_explanation_policy(r: RecloopApp, monitor: OnlineMonitor,
                               settings: PolicySettings | None = None) -> PolicyPublisher | None:
    """Publish ``monitor``'s explanation bandit from the worker ``r`` (the hook :mod:`streams.monitoring` calls)."""
    return register_policy_publisher(r, lambda: monitor.bandit,
                                     lambda: sum(monitor.evaluator.feedback_total.values()), settings,
                                     calibration=lambda: monitor.evaluator.calibration("impressions"))


def register_policy_publisher(r: RecloopApp, bandit: Callable[[], ExplanationBandit],
                              feedback_count: Callable[[], int], settings: PolicySettings | None = None,
                              calibration: Callable[[], tuple[float, float, float, float] | None] = lambda: None,
                              ) -> PolicyPublisher | None:
    """Add the publishing timer to the worker ``r``; None (and a warning) when there is no key to sign with."""
    settings = settings or PolicySettings()
    if not settings.enabled:
        log.info("explanation policy not published (RECLOOP_POLICY_ENABLED=off)")
        return None
    key = policy_signing_key()
    if key is None:
        log.warning("explanation policy not published: RECLOOP_ADAPTER_KEY is not set (RECLOOP_DEMO=1 signs with "
                    "the demo key); serving explains by the largest scoring term")
        return None
    publisher = PolicyPublisher(bandit, key, settings, feedback_count, calibration=calibration)
    policy_topic = _raw_topic(r.app, r.kafka, topics.EXPLANATION_POLICY)

    @r.app.timer(interval=settings.interval_s, name="publish-explanation-policy")
    async def publish_policy() -> None:
        policy = publisher.next_policy()
        if policy is None:
            return
        key_bytes, value = policy_message(policy)
        await policy_topic.send(key=key_bytes, value=value)
        publisher.published(policy)
        log.info("published explanation policy version=%d feedback_events=%d segments=%s", policy.version,
                 policy.feedback_events, ",".join(policy.posteriors))

    return publisher

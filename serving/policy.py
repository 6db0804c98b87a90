"""Explanation-policy hot-swap: follow ``recloop.explanation-policy``, verify every policy, swap it in.

The same trust rules as adapters (:mod:`serving.updates`): a policy is adopted only if it decodes,
its HMAC signature (adapter key) verifies and its version is newer than the one serving; anything
else is logged with its reason and counted (``recloop_serving_rejected_policies{kind}``), and the
current policy keeps serving. The swap is one reference assignment: a request reads
:attr:`PolicyHolder.current` once and explains its whole list under that policy.

Every serving worker reads the whole (compacted, single-partition) topic from the beginning with a
group-less consumer, so a new worker starts from the newest valid policy. Until one arrives,
explanations name the largest scoring term, as before policies existed.
"""

from __future__ import annotations

import logging
from typing import Protocol

from aiokafka import AIOKafkaConsumer

from learner.explanation_bandit import segment_of
from learner.explanation_policy import PolicyRejected, thompson_style, verify_policy
from serving.explain import StyleChooser
from serving.history import wait_for_assignment
from streams.records import ExplanationPolicy, InvalidRecord, decode
from streams.settings import KafkaSettings
from streams.topics import EXPLANATION_POLICY

log = logging.getLogger(__name__)


class PolicyListener(Protocol):
    """Where policy swaps and rejections are reported (the worker's Prometheus metrics)."""

    def policy_swapped(self, policy: ExplanationPolicy) -> None: ...

    def policy_rejected(self, kind: str, reason: str) -> None: ...


class PolicyHolder:
    """The explanation policy this worker serves, and the only way to change it."""

    def __init__(self, key: bytes, listener: PolicyListener) -> None:
        self.key = key
        self.listener = listener
        self.current: ExplanationPolicy | None = None

    @property
    def version(self) -> int | None:
        return self.current.version if self.current is not None else None

    def apply(self, raw: bytes | None) -> bool:
        """Verify one encoded policy and swap it in; False (logged, counted) when it is refused."""
        if raw is None:  # a compaction tombstone
            return False
        try:
            policy = decode(ExplanationPolicy, raw)
            verify_policy(policy, self.key, self.version)
        except InvalidRecord as exc:
            return self._refuse("invalid_record", str(exc))
        except PolicyRejected as exc:
            return self._refuse(exc.kind, exc.reason)
        previous, self.current = self.version, policy
        log.info("serving explanation policy version=%d (was %s) feedback_events=%d", policy.version, previous,
                 policy.feedback_events)
        self.listener.policy_swapped(policy)
        return True

    def _refuse(self, kind: str, reason: str) -> bool:
        log.warning("rejected explanation policy kind=%s reason=%r; still serving policy version=%s", kind, reason,
                    self.version)
        self.listener.policy_rejected(kind, reason)
        return False


def style_chooser(policy: ExplanationPolicy | None, user_id: str, baskets_before: int) -> StyleChooser | None:
    """Thompson sampling under ``policy`` for this shopper's segment; None without a policy (default style)."""
    if policy is None:
        return None
    segment = segment_of(baskets_before)

    def choose(item_id: str, faithful: tuple[str, ...], default: str) -> str:
        return thompson_style(policy, segment, faithful, user_id=user_id, item_id=item_id) if faithful else default

    return choose


class PolicyFollower:
    """Feeds ``recloop.explanation-policy`` to a :class:`PolicyHolder`, from the beginning, forever."""

    def __init__(self, kafka: KafkaSettings, holder: PolicyHolder) -> None:
        self.kafka = kafka
        self.holder = holder
        self.topic = kafka.topic(EXPLANATION_POLICY.name)

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(self.topic, **self.kafka.aiokafka_options(), group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest")
        await consumer.start()
        try:
            partitions = await wait_for_assignment(consumer, {self.topic})
            await consumer.seek_to_beginning(*partitions)
            while True:
                batches = await consumer.getmany(timeout_ms=1000)
                for tp in sorted(batches):
                    for message in batches[tp]:
                        self.holder.apply(message.value)
        finally:
            await consumer.stop()

"""The explanation policy: the bandit's posteriors as a signed, versioned record, and the choice serving makes.

The worker's :class:`~learner.explanation_bandit.ExplanationBandit` learns, per shopper segment and
explanation style, a Beta posterior over the helpful rate. :func:`make_policy` turns those posteriors
into an :class:`~streams.records.ExplanationPolicy` signed with the adapter key (HMAC-SHA256, the
same trust rule as adapters); serving workers :func:`verify_policy` it and adopt only versions newer
than the one they serve.

Serving explains with :func:`thompson_style`: one draw per *faithful* style (a style whose evidence
exists for that item; :mod:`serving.explain` decides which) from the policy's posteriors, and the
largest draw wins. The draws are seeded by (policy version, shopper, item), so the same request
under the same policy always gets the same style, while every new policy version re-draws.

>>> from learner.explanation_bandit import ExplanationBandit
>>> bandit = ExplanationBandit(("history", "popular"))
>>> for _ in range(50):
...     bandit.learn_one("regular", "history", helpful=True)
...     bandit.learn_one("regular", "popular", helpful=False)
>>> policy = make_policy(bandit, version=7, key=b"k", created_at=1.3e9)
>>> verify_policy(policy, b"k", current_version=6)
>>> thompson_style(policy, "regular", ("history", "popular"), user_id="u1", item_id="A")
'history'
>>> thompson_style(policy, "regular", ("popular",), user_id="u1", item_id="A")
'popular'
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
import random
from collections.abc import Sequence

import orjson

from learner.artifacts import sign
from learner.explanation_bandit import ExplanationBandit
from streams.records import ExplanationPolicy, to_dict

#: Decimals the posterior parameters are published with (the signature covers the rounded values).
DECIMALS = 6


class PolicyRejected(Exception):
    """A policy serving must not adopt; ``kind`` is a short label for metrics, ``reason`` says why."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def signing_bytes(policy: ExplanationPolicy) -> bytes:
    """The canonical bytes the signature covers: every field but ``signature``, keys sorted.

    >>> p = ExplanationPolicy(1, 1.3e9, ("popular",), {"new": {"popular": (2.0, 1.0)}}, signature="x")
    >>> signing_bytes(p)[:60]
    b'{"created_at":1300000000.0,"feedback_events":0,"posteriors":'
    """
    fields = {name: value for name, value in to_dict(policy).items() if name != "signature"}
    if fields.get("calibration") is None:  # absent in policies from before it existed: their signatures still hold
        fields.pop("calibration", None)
    return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)


def make_policy(bandit: ExplanationBandit, *, version: int, key: bytes | str, created_at: float,
                feedback_events: int = 0,
                calibration: tuple[float, float, float, float] | None = None) -> ExplanationPolicy:
    """The bandit's current posteriors (and the served scores' calibration) as a policy record, signed with ``key``."""
    posteriors = {segment: {style: (round(alpha, DECIMALS), round(beta, DECIMALS))
                            for style, (alpha, beta) in arms.items()}
                  for segment, arms in sorted(bandit.posteriors().items())}
    if calibration is not None:
        calibration = tuple(round(float(v), DECIMALS) for v in calibration)
    unsigned = ExplanationPolicy(version=version, created_at=created_at, styles=tuple(bandit.styles),
                                 posteriors=posteriors, signature="-", prior=float(bandit.prior),
                                 feedback_events=feedback_events, calibration=calibration)
    return _with_signature(unsigned, sign(signing_bytes(unsigned), key))


def _with_signature(policy: ExplanationPolicy, signature: str) -> ExplanationPolicy:
    return dataclasses.replace(policy, signature=signature)


def calibrated_probability(policy: ExplanationPolicy | None, score: float) -> float | None:
    """The probability that the shopper clicks, adds or buys an item served with ``score``, by the calibration
    the policy carries; ``None`` without one.

    >>> p = ExplanationPolicy(1, 1.3e9, ("popular",), {}, signature="x", calibration=(1.0, 2.0, 1.5, -2.0))
    >>> round(calibrated_probability(p, 1.0), 4), round(calibrated_probability(p, 5.0), 4)
    (0.1192, 0.7311)
    """
    if policy is None or policy.calibration is None:
        return None
    mean, std, a, b = policy.calibration
    logit = min(max(a * (score - mean) / std + b, -30.0), 30.0)
    return 1.0 / (1.0 + math.exp(-logit))


def calibration_moved(policy: ExplanationPolicy | None,
                      calibration: tuple[float, float, float, float] | None, tolerance: float = 0.05) -> bool:
    """Whether ``calibration`` differs from the one ``policy`` carries by more than ``tolerance`` (logit units)."""
    if calibration is None:
        return False
    if policy is None or policy.calibration is None:
        return True
    old_mean, old_std, old_a, old_b = policy.calibration
    mean, std, a, b = calibration
    return (abs(a - old_a) > tolerance or abs(b - old_b) > tolerance
            or abs(mean - old_mean) > tolerance * old_std or abs(std / old_std - 1.0) > tolerance)


def verify_policy(policy: ExplanationPolicy, key: bytes | str, current_version: int | None) -> None:
    """Raise :class:`PolicyRejected` unless ``policy`` is signed with ``key`` and newer than ``current_version``.

    >>> p = make_policy(ExplanationBandit(), version=3, key=b"k", created_at=1.3e9)
    >>> verify_policy(p, b"other", None)
    Traceback (most recent call last):
    ...
    learner.explanation_policy.PolicyRejected: bad signature: not signed with this deployment's key
    >>> verify_policy(p, b"k", current_version=3)
    Traceback (most recent call last):
    ...
    learner.explanation_policy.PolicyRejected: stale version: 3 is not newer than the serving policy 3
    """
    if not hmac.compare_digest(sign(signing_bytes(policy), key), policy.signature):
        raise PolicyRejected("signature", "bad signature: not signed with this deployment's key")
    if current_version is not None and policy.version <= current_version:
        raise PolicyRejected("version", f"stale version: {policy.version} is not newer than the serving policy "
                                        f"{current_version}")


def posterior_changed(policy: ExplanationPolicy | None, bandit: ExplanationBandit) -> bool:
    """Whether the bandit has learned anything ``policy`` does not say (after rounding)."""
    if policy is None:
        return bool(bandit.segments)
    fresh = {segment: {style: (round(a, DECIMALS), round(b, DECIMALS)) for style, (a, b) in arms.items()}
             for segment, arms in bandit.posteriors().items()}
    return fresh != policy.posteriors


def _seed(version: int, user_id: str, item_id: str) -> int:
    digest = hashlib.sha256(f"{version}|{user_id}|{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def thompson_style(policy: ExplanationPolicy, segment: str, faithful: Sequence[str], *, user_id: str,
                   item_id: str) -> str:
    """The style to show: the largest of one posterior draw per ``faithful`` style (never another one).

    A style the policy has no posterior for (new segment, or a style it does not list) draws from
    the Beta(prior, prior) prior, so it still gets tried. Deterministic per (version, shopper, item).
    """
    if not faithful:
        raise ValueError("no faithful style to choose from")
    rng = random.Random(_seed(policy.version, user_id, item_id))
    arms = policy.posteriors.get(segment, {})
    prior = (policy.prior, policy.prior)
    draws = {style: rng.betavariate(*arms.get(style, prior)) for style in faithful}
    return max(draws, key=draws.__getitem__)

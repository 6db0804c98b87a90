"""Every record that travels on a recloop topic, with strict validation.

Records are frozen dataclasses serialised as JSON with orjson. Every record carries
``schema_version``. Decoding never trusts its input: ``decode(Interaction, raw)`` either
returns a valid record or raises :class:`InvalidRecord` with a reason an operator can read,
which is what lands on the dead-letter topic.

>>> raw = b'{"event_id":"e1","user_id":"u1","item_id":"85123A","type":"purchase","ts":1291191960}'
>>> decode(Interaction, raw).type
'purchase'
>>> decode(Interaction, b'{"event_id":"e1"}')
Traceback (most recent call last):
...
streams.records.InvalidRecord: missing field 'user_id'
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

import orjson

SCHEMA_VERSION = 1

#: Largest encoded event we accept on the event topics. Real events are a few hundred bytes;
#: anything near this limit is a bug or an attack and goes to the dead-letter topic.
MAX_EVENT_BYTES = 64 * 1024
#: Impressions carry up to 1000 explained items.
MAX_IMPRESSION_BYTES = 2 * 1024 * 1024
#: Adapters are a few MB of safetensors; the topics are configured to carry them.
MAX_ADAPTER_BYTES = 48 * 1024 * 1024

MAX_ID_CHARS = 128
MAX_TEXT_CHARS = 4096
#: Event time must be a plausible wall-clock time (2000-01-01 .. 2100-01-01, seconds).
MIN_TS, MAX_TS = 946_684_800.0, 4_102_444_800.0

INTERACTION_TYPES = ("view", "click", "add_to_cart", "purchase", "return")


class InvalidRecord(ValueError):
    """A message that does not satisfy the contract; ``str(exc)`` is the reason."""


# --------------------------------------------------------------------------- field checks


def _id(value: Any, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidRecord(f"field {name!r} must be a string, got {type(value).__name__}")
    text = str(value)
    if not text or len(text) > MAX_ID_CHARS:
        raise InvalidRecord(f"field {name!r} must have 1..{MAX_ID_CHARS} characters")
    if not text.isprintable():
        raise InvalidRecord(f"field {name!r} has non-printable characters")
    return text


def _text(value: Any, name: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    if not isinstance(value, str):
        raise InvalidRecord(f"field {name!r} must be a string, got {type(value).__name__}")
    if len(value) > max_chars:
        raise InvalidRecord(f"field {name!r} is longer than {max_chars} characters")
    return value


def _number(value: Any, name: str, *, minimum: float | None = None, maximum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRecord(f"field {name!r} must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidRecord(f"field {name!r} must be finite")
    if minimum is not None and number < minimum:
        raise InvalidRecord(f"field {name!r} must be >= {minimum}")
    if maximum is not None and number > maximum:
        raise InvalidRecord(f"field {name!r} must be <= {maximum}")
    return number


def _integer(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRecord(f"field {name!r} must be an integer, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise InvalidRecord(f"field {name!r} must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise InvalidRecord(f"field {name!r} must be <= {maximum}")
    return value


def _timestamp(value: Any, name: str = "ts") -> float:
    """Seconds since the epoch; an ISO-8601 string is accepted and converted.

    >>> _timestamp("2010-12-01T08:26:00Z")
    1291191960.0
    """
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRecord(f"field {name!r} is not an ISO-8601 time: {value[:40]!r}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        value = parsed.timestamp()
    return _number(value, name, minimum=MIN_TS, maximum=MAX_TS)


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidRecord(f"field {name!r} must be true or false, got {type(value).__name__}")
    return value


def _choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InvalidRecord(f"field {name!r} must be one of {', '.join(choices)}; got {str(value)[:40]!r}")
    return value


def _optional(check, value: Any, name: str, **kwargs: Any) -> Any:
    return None if value is None else check(value, name, **kwargs)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Item:
    """A catalogue entry: what a shopper can be recommended."""

    item_id: str
    title: str
    description: str | None = None
    category: str | None = None
    price: float | None = None
    schema_version: int = SCHEMA_VERSION

    max_bytes: ClassVar[int] = MAX_EVENT_BYTES

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Item:
        return cls(
            item_id=_id(_required(d, "item_id"), "item_id"),
            title=_text(_required(d, "title"), "title", 512),
            description=_optional(_text, d.get("description"), "description"),
            category=_optional(_text, d.get("category"), "category", max_chars=256),
            price=_optional(_number, d.get("price"), "price", minimum=0.0),
        )

    @property
    def text(self) -> str:
        """What the text tower encodes: the title, then the description and the category when present (the
        tower reads the first tokens only, so the title always counts); the id when there is nothing else.

        >>> Item("1", "WHITE MUG ", description="Stoneware, 300 ml", category="kitchen").text
        'WHITE MUG. Stoneware, 300 ml. kitchen'
        >>> Item("2", "LANTERN").text, Item("3", " ").text
        ('LANTERN', '3')
        """
        parts = [part.strip() for part in (self.title, self.description, self.category) if part and part.strip()]
        return ". ".join(parts) if parts else self.item_id


@dataclass(frozen=True, slots=True)
class Interaction:
    """One thing a shopper did with an item. ``event_id`` makes replays idempotent."""

    event_id: str
    user_id: str
    item_id: str
    type: str
    ts: float
    session_id: str | None = None
    rec_id: str | None = None
    quantity: int | None = None
    price: float | None = None
    schema_version: int = SCHEMA_VERSION

    max_bytes: ClassVar[int] = MAX_EVENT_BYTES

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Interaction:
        return cls(
            event_id=_id(_required(d, "event_id"), "event_id"),
            user_id=_id(_required(d, "user_id"), "user_id"),
            item_id=_id(_required(d, "item_id"), "item_id"),
            type=_choice(_required(d, "type"), "type", INTERACTION_TYPES),
            ts=_timestamp(_required(d, "ts")),
            session_id=_optional(_id, d.get("session_id"), "session_id"),
            rec_id=_optional(_id, d.get("rec_id"), "rec_id"),
            quantity=_optional(_integer, d.get("quantity"), "quantity", minimum=0, maximum=1_000_000),
            price=_optional(_number, d.get("price"), "price", minimum=0.0),
        )


@dataclass(frozen=True, slots=True)
class RecommendedItem:
    item_id: str
    score: float
    explanation: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RecommendedItem:
        if not isinstance(d, dict):
            raise InvalidRecord("each impression item must be an object")
        explanation = d.get("explanation") or {}
        if not isinstance(explanation, dict):
            raise InvalidRecord("field 'explanation' must be an object")
        return cls(
            item_id=_id(_required(d, "item_id"), "item_id"),
            score=_number(_required(d, "score"), "score"),
            explanation=explanation,
        )


@dataclass(frozen=True, slots=True)
class Impression:
    """What a serving worker showed a shopper: the join key for clicks and non-clicks."""

    rec_id: str
    user_id: str
    ts: float
    model_version: str
    items: tuple[RecommendedItem, ...]
    schema_version: int = SCHEMA_VERSION
    #: The :class:`ExplanationPolicy` version the explanation styles were drawn from (None: none yet, or an
    #: older serving worker). Optional, so impressions without it stay valid.
    policy_version: int | None = None

    max_bytes: ClassVar[int] = MAX_IMPRESSION_BYTES

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Impression:
        items = _required(d, "items")
        if not isinstance(items, list) or len(items) > 1000:
            raise InvalidRecord("field 'items' must be a list of at most 1000 items")
        return cls(
            rec_id=_id(_required(d, "rec_id"), "rec_id"),
            user_id=_id(_required(d, "user_id"), "user_id"),
            ts=_timestamp(_required(d, "ts")),
            model_version=_id(_required(d, "model_version"), "model_version"),
            items=tuple(RecommendedItem.from_dict(item) for item in items),
            policy_version=_optional(_integer, d.get("policy_version"), "policy_version", minimum=1),
        )


EXPLANATION_STYLES = ("history", "co_purchase", "similar_text", "popular")


@dataclass(frozen=True, slots=True)
class ExplanationFeedback:
    """A shopper's verdict on the explanation shown beside a recommendation."""

    event_id: str
    user_id: str
    rec_id: str
    item_id: str
    explanation_id: str
    style: str
    helpful: bool
    ts: float
    reason: str | None = None
    schema_version: int = SCHEMA_VERSION

    max_bytes: ClassVar[int] = MAX_EVENT_BYTES

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExplanationFeedback:
        return cls(
            event_id=_id(_required(d, "event_id"), "event_id"),
            user_id=_id(_required(d, "user_id"), "user_id"),
            rec_id=_id(_required(d, "rec_id"), "rec_id"),
            item_id=_id(_required(d, "item_id"), "item_id"),
            explanation_id=_id(_required(d, "explanation_id"), "explanation_id"),
            style=_choice(_required(d, "style"), "style", EXPLANATION_STYLES),
            helpful=_bool(_required(d, "helpful"), "helpful"),
            ts=_timestamp(_required(d, "ts")),
            reason=_optional(_text, d.get("reason"), "reason", max_chars=512),
        )


@dataclass(frozen=True, slots=True)
class AdapterUpdate:
    """A published LoRA adapter: traceable to its parent and to the exact frozen base."""

    version: str
    parent: str | None
    base_fingerprint: str
    created_at: float
    metrics: dict[str, float]
    sha256: str
    signature: str
    payload: bytes
    schema_version: int = SCHEMA_VERSION

    max_bytes: ClassVar[int] = MAX_ADAPTER_BYTES

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AdapterUpdate:
        import base64

        payload = _required(d, "payload")
        if not isinstance(payload, str):
            raise InvalidRecord("field 'payload' must be base64 text")
        try:
            payload_bytes = base64.b64decode(payload, validate=True)
        except ValueError:
            raise InvalidRecord("field 'payload' is not valid base64") from None
        metrics = d.get("metrics") or {}
        if not isinstance(metrics, dict):
            raise InvalidRecord("field 'metrics' must be an object")
        return cls(
            version=_id(_required(d, "version"), "version"),
            parent=_optional(_id, d.get("parent"), "parent"),
            base_fingerprint=_id(_required(d, "base_fingerprint"), "base_fingerprint"),
            created_at=_timestamp(_required(d, "created_at"), "created_at"),
            metrics={str(k): _number(v, f"metrics.{k}") for k, v in metrics.items()},
            sha256=_id(_required(d, "sha256"), "sha256"),
            signature=_id(_required(d, "signature"), "signature"),
            payload=payload_bytes,
        )


#: Most segments one explanation policy may carry (the bandit has three; the bound keeps records small).
MAX_POLICY_SEGMENTS = 64


def _calibration(value: Any) -> tuple[float, float, float, float] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 4:
        raise InvalidRecord("field 'calibration' must be [mean, std, a, b] or null")
    mean, std, a, b = (_number(v, "calibration") for v in value)
    if std <= 0:
        raise InvalidRecord("field 'calibration' must have a positive std")
    return mean, std, a, b


def _posteriors(value: Any, styles: tuple[str, ...]) -> dict[str, dict[str, tuple[float, float]]]:
    """``{segment: {style: [alpha, beta]}}`` with positive, finite Beta parameters of known styles."""
    if not isinstance(value, dict) or len(value) > MAX_POLICY_SEGMENTS:
        raise InvalidRecord(f"field 'posteriors' must be an object of at most {MAX_POLICY_SEGMENTS} segments")
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for segment, arms in value.items():
        name = _id(segment, "posteriors segment")
        if not isinstance(arms, dict):
            raise InvalidRecord(f"posteriors of segment {name!r} must be an object")
        out[name] = {}
        for style, params in arms.items():
            if style not in styles:
                raise InvalidRecord(f"posteriors of segment {name!r}: style {str(style)[:40]!r} is not in 'styles'")
            if not isinstance(params, (list, tuple)) or len(params) != 2:
                raise InvalidRecord(f"posterior {name}/{style} must be [alpha, beta]")
            alpha, beta = (_number(p, f"posterior {name}/{style}", minimum=1e-9) for p in params)
            out[name][style] = (alpha, beta)
    return out


@dataclass(frozen=True, slots=True)
class ExplanationPolicy:
    """Which explanation style to show whom: Beta posteriors of the helpful rate per segment and style.

    Published by the worker's explanation bandit on ``recloop.explanation-policy``; serving workers
    verify ``signature`` (HMAC-SHA256 with the adapter key over the other fields,
    :func:`learner.explanation_policy.signing_bytes`) and adopt only versions newer than their own.
    """

    version: int
    created_at: float
    styles: tuple[str, ...]
    posteriors: dict[str, dict[str, tuple[float, float]]]
    signature: str
    #: Pseudo-counts of the Beta(prior, prior) of a (segment, style) the posteriors do not list.
    prior: float = 1.0
    #: Feedback events the posteriors were learned from (for operators).
    feedback_events: int = 0
    #: Online Platt scaling of served scores to the probability that the shopper clicks, adds or buys the item:
    #: ``(mean, std, a, b)``, ``P = sigmoid(a * (score - mean) / std + b)`` (``None``: not learned yet).
    calibration: tuple[float, float, float, float] | None = None
    schema_version: int = SCHEMA_VERSION

    max_bytes: ClassVar[int] = MAX_EVENT_BYTES

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExplanationPolicy:
        styles = _required(d, "styles")
        if not isinstance(styles, list) or not styles or any(s not in EXPLANATION_STYLES for s in styles):
            raise InvalidRecord(f"field 'styles' must be a non-empty list of {', '.join(EXPLANATION_STYLES)}")
        styles = tuple(dict.fromkeys(styles))
        return cls(
            version=_integer(_required(d, "version"), "version", minimum=1),
            created_at=_timestamp(_required(d, "created_at"), "created_at"),
            styles=styles,
            posteriors=_posteriors(_required(d, "posteriors"), styles),
            signature=_id(_required(d, "signature"), "signature"),
            prior=_number(d.get("prior", 1.0), "prior", minimum=1e-9),
            feedback_events=_integer(d.get("feedback_events", 0), "feedback_events", minimum=0),
            calibration=_calibration(d.get("calibration")),
        )


SEVERITIES = ("info", "warning", "critical")


@dataclass(frozen=True, slots=True)
class DriftAlarm:
    detector: str
    signal: str
    value: float
    window: int
    severity: str
    ts: float
    schema_version: int = SCHEMA_VERSION

    max_bytes: ClassVar[int] = MAX_EVENT_BYTES

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DriftAlarm:
        return cls(
            detector=_id(_required(d, "detector"), "detector"),
            signal=_id(_required(d, "signal"), "signal"),
            value=_number(_required(d, "value"), "value"),
            window=_integer(_required(d, "window"), "window", minimum=0),
            severity=_choice(_required(d, "severity"), "severity", SEVERITIES),
            ts=_timestamp(_required(d, "ts")),
        )


@dataclass(frozen=True, slots=True)
class MetricSnapshot:
    """A windowed value of one metric, as the worker saw it at ``ts``."""

    name: str
    value: float
    window: int
    ts: float
    labels: dict[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    max_bytes: ClassVar[int] = MAX_EVENT_BYTES

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MetricSnapshot:
        labels = d.get("labels") or {}
        if not isinstance(labels, dict):
            raise InvalidRecord("field 'labels' must be an object")
        return cls(
            name=_id(_required(d, "name"), "name"),
            value=_number(_required(d, "value"), "value"),
            window=_integer(_required(d, "window"), "window", minimum=0),
            ts=_timestamp(_required(d, "ts")),
            labels={str(k): str(v) for k, v in labels.items()},
        )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message we could not accept, kept whole with where it came from and why."""

    source_topic: str
    partition: int
    offset: int
    error: str
    value: bytes | None
    key: bytes | None
    ts: float
    schema_version: int = SCHEMA_VERSION

    max_bytes: ClassVar[int] = MAX_ADAPTER_BYTES

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeadLetter:
        import base64

        def raw(name: str) -> bytes | None:
            value = d.get(name)
            return None if value is None else base64.b64decode(value)

        return cls(
            source_topic=_id(_required(d, "source_topic"), "source_topic"),
            partition=_integer(_required(d, "partition"), "partition"),
            offset=_integer(_required(d, "offset"), "offset"),
            error=_text(_required(d, "error"), "error"),
            value=raw("value"),
            key=raw("key"),
            ts=_number(_required(d, "ts"), "ts"),
        )


Record = (Item | Interaction | Impression | ExplanationFeedback | AdapterUpdate | DriftAlarm | MetricSnapshot
          | DeadLetter | ExplanationPolicy)
R = TypeVar("R", Item, Interaction, Impression, ExplanationFeedback, AdapterUpdate, DriftAlarm, MetricSnapshot,
            DeadLetter, ExplanationPolicy)


def _required(d: dict[str, Any], name: str) -> Any:
    value = d.get(name)
    if value is None:
        raise InvalidRecord(f"missing field {name!r}")
    return value


def _default(obj: Any) -> Any:
    if isinstance(obj, bytes):
        import base64

        return base64.b64encode(obj).decode("ascii")
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def to_dict(record: Record) -> dict[str, Any]:
    """The record as plain JSON-able data (bytes become base64 on encoding)."""
    return dataclasses.asdict(record)


def encode(record: Record) -> bytes:
    """Serialise a record to the bytes that go on its topic."""
    return orjson.dumps(record, default=_default)


def decode(cls: type[R], raw: bytes | bytearray | memoryview | None) -> R:
    """Parse and validate bytes from a topic into ``cls``, or raise :class:`InvalidRecord`."""
    if raw is None:
        raise InvalidRecord("empty message (null value)")
    if len(raw) > cls.max_bytes:
        raise InvalidRecord(f"message of {len(raw)} bytes exceeds the {cls.max_bytes}-byte limit for {cls.__name__}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRecord(f"not valid UTF-8 JSON: {exc}") from None
    return from_dict(cls, data)


def from_dict(cls: type[R], data: Any) -> R:
    """Validate already-parsed JSON data into ``cls``."""
    if not isinstance(data, dict):
        raise InvalidRecord(f"expected a JSON object, got {type(data).__name__}")
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise InvalidRecord(f"unsupported schema_version {version!r} (this build reads {SCHEMA_VERSION})")
    return cls.from_dict(data)

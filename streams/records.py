"""Every record that travels on a recloop topic, declared once, with strict validation.

Records are frozen dataclasses serialised as JSON with orjson. Every record carries
``schema_version``. Each field is declared once, with its type and a :class:`Rule` in
``Annotated[...]``; the rule is both how the field is read (:meth:`Rule.check`) and how it is described
in JSON Schema (:meth:`Rule.schema`). The parser, the JSON Schema files in ``schemas/`` and the
``/feedback`` request models are all derived from these declarations
(:mod:`streams.record_schemas`), so they cannot drift apart.

Decoding never trusts its input: ``decode(Interaction, raw)`` either returns a valid record or raises
:class:`InvalidRecord` with a reason an operator can read, which is what lands on the dead-letter
topic. ``null`` is the same as leaving a field out; fields a record does not declare are ignored.

>>> raw = b'{"event_id":"e1","user_id":"u1","item_id":"85123A","type":"purchase","ts":1291191960}'
>>> decode(Interaction, raw).type
'purchase'
>>> decode(Interaction, b'{"event_id":"e1"}')
Traceback (most recent call last):
...
streams.records.InvalidRecord: missing field 'user_id'
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, TypeVar

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

#: Characters an id may not contain: C0 and C1 control characters, DEL, and the Unicode line and
#: paragraph separators. The same class is the ``pattern`` of ids in the JSON Schemas.
ID_FORBIDDEN = r"\x00-\x1f\x7f-\x9f\u2028\u2029"
ID_PATTERN = rf"^[^{ID_FORBIDDEN}]*$"
_ID_FORBIDDEN = re.compile(f"[{ID_FORBIDDEN}]")
#: Integer ids must be "safe" integers, exact in every JSON reader (a double holds them exactly).
MAX_SAFE_INT = 2**53 - 1

#: The canonical text form of a time in the JSON Schemas: an RFC 3339 date-time with an offset, in
#: 2001..2098 so that every offset stays inside ``MIN_TS..MAX_TS``. The parser also reads the other
#: ISO-8601 forms :meth:`datetime.fromisoformat` reads, and epoch seconds.
_DATE = (r"20(?:0[1-9]|[1-8][0-9]|9[0-8])-(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])"
         r"|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)"
         r"|20(?:0[48]|[2468][048]|[13579][26])-02-29")
TS_PATTERN = (rf"^(?:{_DATE})T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{{1,6}})?"
              r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$")
#: Standard base64 with padding, as :func:`base64.b64encode` writes it.
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


class InvalidRecord(ValueError):
    """A message that does not satisfy the contract; ``str(exc)`` is the reason."""


# --------------------------------------------------------------------------- field checks


def _id(value: Any, name: str) -> str:
    """An id as text; a JSON integer up to 2**53 - 1 (even written ``17850.0``) is read as its digits.

    >>> _id("85123A", "item_id"), _id(17850, "user_id"), _id(17850.0, "user_id")
    ('85123A', '17850', '17850')
    """
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidRecord(f"field {name!r} must be a string, got {type(value).__name__}")
    if isinstance(value, int) and not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
        raise InvalidRecord(f"field {name!r} must be a string; an integer id must be within +-(2**53 - 1)")
    text = str(value)
    if not text or len(text) > MAX_ID_CHARS:
        raise InvalidRecord(f"field {name!r} must have 1..{MAX_ID_CHARS} characters")
    if _ID_FORBIDDEN.search(text):
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
    """An integer; a float with no fraction (``6.0``) counts, as it does in JSON Schema.

    >>> _integer(6.0, "quantity"), _integer(6, "quantity")
    (6, 6)
    """
    if isinstance(value, float) and value.is_integer():
        value = int(value)
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


# --------------------------------------------------------------------------- field rules


class Rule:
    """How one field is read from JSON (:meth:`check`) and described in JSON Schema (:meth:`schema`).

    A record field declares its rule once, in ``Annotated[type, Rule(...)]``; everything that reads or
    describes the field goes through it. Subclasses keep the two methods side by side so that a change
    to one is a change to the other.
    """

    #: What the field is when absent or null, for a field whose dataclass declaration has no default
    #: (a zero-argument factory; None: the field is required unless its type admits None).
    default: Any = None

    def __init__(self, description: str | None = None) -> None:
        self.description = description

    def check(self, value: Any, name: str) -> Any:
        """The field's value read from (non-null) ``value``, or :class:`InvalidRecord`."""
        raise NotImplementedError

    def schema(self) -> dict[str, Any]:
        """JSON Schema of exactly the (non-null) values :meth:`check` accepts."""
        raise NotImplementedError

    def described(self) -> dict[str, Any]:
        schema = self.schema()
        return {**schema, "description": self.description} if self.description else schema

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Id(Rule):
    """An identifier: 1..128 characters without control characters; a (safe) JSON integer is read as its digits."""

    def check(self, value: Any, name: str) -> str:
        return _id(value, name)

    def schema(self) -> dict[str, Any]:
        return {"anyOf": [{"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS, "pattern": ID_PATTERN},
                          {"type": "integer", "minimum": -MAX_SAFE_INT, "maximum": MAX_SAFE_INT}]}


class Text(Rule):
    def __init__(self, max_chars: int = MAX_TEXT_CHARS, description: str | None = None) -> None:
        super().__init__(description)
        self.max_chars = max_chars

    def check(self, value: Any, name: str) -> str:
        return _text(value, name, self.max_chars)

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "maxLength": self.max_chars}


class Number(Rule):
    """A finite number (JSON has no NaN or infinity), optionally bounded."""

    def __init__(self, minimum: float | None = None, maximum: float | None = None,
                 description: str | None = None) -> None:
        super().__init__(description)
        self.minimum, self.maximum = minimum, maximum

    def check(self, value: Any, name: str) -> float:
        return _number(value, name, minimum=self.minimum, maximum=self.maximum)

    def schema(self) -> dict[str, Any]:
        return _bounded({"type": "number"}, self.minimum, self.maximum)


class Integer(Number):
    """An integer, within +-(2**53 - 1) unless bounded tighter: exact in every JSON reader, and encodable."""

    def __init__(self, minimum: int = -MAX_SAFE_INT, maximum: int = MAX_SAFE_INT,
                 description: str | None = None) -> None:
        super().__init__(minimum, maximum, description)

    def check(self, value: Any, name: str) -> int:
        return _integer(value, name, minimum=self.minimum, maximum=self.maximum)

    def schema(self) -> dict[str, Any]:
        return _bounded({"type": "integer"}, self.minimum, self.maximum)


def _bounded(schema: dict[str, Any], minimum: float | None, maximum: float | None) -> dict[str, Any]:
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


class Timestamp(Rule):
    """Event time: seconds since the epoch in 2000..2100, or an ISO-8601 date-time (converted)."""

    def check(self, value: Any, name: str) -> float:
        return _timestamp(value, name)

    def schema(self) -> dict[str, Any]:
        return {"anyOf": [{"type": "number", "minimum": MIN_TS, "maximum": MAX_TS},
                          {"type": "string", "pattern": TS_PATTERN}]}


class Flag(Rule):
    def check(self, value: Any, name: str) -> bool:
        return _bool(value, name)

    def schema(self) -> dict[str, Any]:
        return {"type": "boolean"}


class Choice(Rule):
    def __init__(self, choices: tuple[str, ...], description: str | None = None) -> None:
        super().__init__(description)
        self.choices = tuple(choices)

    def check(self, value: Any, name: str) -> str:
        return _choice(value, name, self.choices)

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.choices)}


class Base64(Rule):
    """Bytes, as standard padded base64 text (how :func:`encode` writes bytes)."""

    def check(self, value: Any, name: str) -> bytes:
        # binascii's strict mode accepts exactly BASE64_PATTERN (and no trailing newline, as JSON Schema's "$")
        # in C: the pattern itself, in Python's re, took 80 ms on a 2 MB adapter, holding the GIL.
        try:
            return binascii.a2b_base64(value.encode("ascii"), strict_mode=True)
        except (AttributeError, UnicodeEncodeError, binascii.Error):
            raise InvalidRecord(f"field {name!r} must be base64 text") from None

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "contentEncoding": "base64", "pattern": BASE64_PATTERN}


class JsonObject(Rule):
    """Any JSON object, kept as it is."""

    def check(self, value: Any, name: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise InvalidRecord(f"field {name!r} must be an object")
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "object"}


class NumberMap(Rule):
    """An object of finite numbers, ``{name: number}``."""

    def __init__(self, description: str | None = None, default: Any = None) -> None:
        super().__init__(description)
        self.default = default

    def check(self, value: Any, name: str) -> dict[str, float]:
        if not isinstance(value, dict):
            raise InvalidRecord(f"field {name!r} must be an object")
        return {str(k): _number(v, f"{name}.{k}") for k, v in value.items()}

    def schema(self) -> dict[str, Any]:
        return {"type": "object", "additionalProperties": {"type": "number"}}


class LabelMap(Rule):
    """An object of labels, ``{name: text}``; numbers and booleans are kept as their text."""

    def check(self, value: Any, name: str) -> dict[str, str]:
        if not isinstance(value, dict):
            raise InvalidRecord(f"field {name!r} must be an object")
        for k, v in value.items():
            if v is None or not isinstance(v, (str, int, float)):  # bool is an int
                raise InvalidRecord(f"label {name}.{k} must be text, a number or a boolean")
        return {str(k): str(v) for k, v in value.items()}

    def schema(self) -> dict[str, Any]:
        return {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}}


class ListOf(Rule):
    """A JSON array of ``item`` values, read into a tuple (``unique``: repeats dropped, first kept)."""

    def __init__(self, item: Rule, *, min_items: int = 0, max_items: int | None = None, unique: bool = False,
                 message: str | None = None, description: str | None = None) -> None:
        super().__init__(description)
        self.item, self.min_items, self.max_items, self.unique = item, min_items, max_items, unique
        self.message = message

    def check(self, value: Any, name: str) -> tuple:
        if not isinstance(value, list) or len(value) < self.min_items or (
                self.max_items is not None and len(value) > self.max_items):
            raise InvalidRecord(self.message or f"field {name!r} must be a list of {self._size()} items")
        try:
            items = tuple(self.item.check(v, f"{name}[{i}]") for i, v in enumerate(value))
        except InvalidRecord:
            if self.message is None:
                raise
            raise InvalidRecord(self.message) from None
        return tuple(dict.fromkeys(items)) if self.unique else items

    def _size(self) -> str:
        if self.max_items is None:
            return f"at least {self.min_items}"
        return f"at most {self.max_items}" if not self.min_items else f"{self.min_items}..{self.max_items}"

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "array", "items": self.item.described()}
        if self.min_items:
            schema["minItems"] = self.min_items
        if self.max_items is not None:
            schema["maxItems"] = self.max_items
        return schema


class Nested(Rule):
    """A record inside a record (an impression's items)."""

    def __init__(self, record: type, message: str | None = None, description: str | None = None) -> None:
        super().__init__(description)
        self.record, self.message = record, message

    def check(self, value: Any, name: str) -> Any:
        if not isinstance(value, dict):
            raise InvalidRecord(self.message or f"field {name!r} must be an object")
        return self.record.from_dict(value)

    def schema(self) -> dict[str, Any]:
        return object_schema(self.record)


class SchemaVersion(Rule):
    def check(self, value: Any, name: str) -> int:
        if isinstance(value, bool) or value != SCHEMA_VERSION:
            raise InvalidRecord(f"unsupported schema_version {value!r} (this build reads {SCHEMA_VERSION})")
        return SCHEMA_VERSION

    def schema(self) -> dict[str, Any]:
        return {"const": SCHEMA_VERSION}


class Calibration(Rule):
    """``[mean, std, a, b]`` of the online Platt scaling, ``std`` positive."""

    def check(self, value: Any, name: str) -> tuple[float, float, float, float]:
        if not isinstance(value, list) or len(value) != 4:
            raise InvalidRecord(f"field {name!r} must be [mean, std, a, b] or null")
        mean, std, a, b = (_number(v, name) for v in value)
        if std <= 0:
            raise InvalidRecord(f"field {name!r} must have a positive std")
        return mean, std, a, b

    def schema(self) -> dict[str, Any]:
        number = {"type": "number"}
        return {"type": "array", "prefixItems": [number, {"type": "number", "exclusiveMinimum": 0}, number, number],
                "minItems": 4, "items": False}


#: Most segments one explanation policy may carry (the bandit has three; the bound keeps records small).
MAX_POLICY_SEGMENTS = 64
EXPLANATION_STYLES = ("history", "co_purchase", "similar_text", "popular")
#: The entry points an impression can come from (``GET /recommend``, ``/search``, ``/similar``).
IMPRESSION_SOURCES = ("recommend", "search", "similar")


class Posteriors(Rule):
    """``{segment: {style: [alpha, beta]}}`` with positive, finite Beta parameters of known styles.

    Which styles a policy may name is a second rule its record checks (:meth:`ExplanationPolicy.from_dict`):
    only those in its own ``styles``, which JSON Schema cannot express.
    """

    def check(self, value: Any, name: str) -> dict[str, dict[str, tuple[float, float]]]:
        if not isinstance(value, dict) or len(value) > MAX_POLICY_SEGMENTS:
            raise InvalidRecord(f"field {name!r} must be an object of at most {MAX_POLICY_SEGMENTS} segments")
        out: dict[str, dict[str, tuple[float, float]]] = {}
        for segment, arms in value.items():
            segment_name = _id(segment, f"{name} segment")
            if not isinstance(arms, dict):
                raise InvalidRecord(f"{name} of segment {segment_name!r} must be an object")
            out[segment_name] = {}
            for style, params in arms.items():
                if style not in EXPLANATION_STYLES:
                    raise InvalidRecord(f"{name} of segment {segment_name!r}: style {str(style)[:40]!r} is not a "
                                        f"style ({', '.join(EXPLANATION_STYLES)})")
                if not isinstance(params, list) or len(params) != 2:
                    raise InvalidRecord(f"posterior {segment_name}/{style} must be [alpha, beta]")
                alpha, beta = (_number(p, f"posterior {segment_name}/{style}", minimum=1e-9) for p in params)
                out[segment_name][style] = (alpha, beta)
        return out

    def schema(self) -> dict[str, Any]:
        beta = {"type": "array", "items": {"type": "number", "minimum": 1e-9}, "minItems": 2, "maxItems": 2}
        arms = {"type": "object", "propertyNames": {"enum": list(EXPLANATION_STYLES)}, "additionalProperties": beta}
        segment = {"minLength": 1, "maxLength": MAX_ID_CHARS, "pattern": ID_PATTERN}
        return {"type": "object", "maxProperties": MAX_POLICY_SEGMENTS, "propertyNames": segment,
                "additionalProperties": arms}


# --------------------------------------------------------------------------- reading records by their rules


@dataclass(frozen=True)
class FieldRule:
    """One declared field of a record: its name, its rule, and what it is when absent or null."""

    name: str
    rule: Rule
    required: bool
    default: Any = None  #: a zero-argument factory; None for required fields

    def absent(self) -> Any:
        return self.default() if self.default is not None else None


_FIELDS: dict[type, tuple[FieldRule, ...]] = {}


def fields_of(cls: type) -> tuple[FieldRule, ...]:
    """The declared fields of record type ``cls``, in declaration order (read once from its annotations).

    A field is optional when its type admits ``None`` or when it has a default; otherwise it is required.
    """
    found = _FIELDS.get(cls)
    if found is None:
        hints = typing.get_type_hints(cls, include_extras=True)
        rules = []
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            rule = next((a for a in getattr(hint, "__metadata__", ()) if isinstance(a, Rule)), None)
            if rule is None:
                raise TypeError(f"{cls.__name__}.{f.name} declares no Rule in Annotated[...]")
            nullable = type(None) in typing.get_args(typing.get_args(hint)[0])
            if f.default is not dataclasses.MISSING:
                default = _constant(f.default)
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory
            elif rule.default is not None:
                default = rule.default
            else:
                default = _constant(None) if nullable else None
            rules.append(FieldRule(f.name, rule, required=default is None, default=default))
        found = _FIELDS[cls] = tuple(rules)
    return found


def _constant(value: Any):
    return lambda: value


def read_fields(cls: type[R], d: dict[str, Any]) -> R:
    """Read each declared field of ``cls`` from ``d`` by its rule (null is the same as absent)."""
    values = {}
    for f in fields_of(cls):
        value = d.get(f.name)
        if value is None:
            if f.required:
                raise InvalidRecord(f"missing field {f.name!r}")
            values[f.name] = f.absent()
        else:
            values[f.name] = f.rule.check(value, f.name)
    return cls(**values)


def object_schema(cls: type, *, closed: bool = False, optional: tuple[str, ...] = (),
                  rules: dict[str, Rule] | None = None, notes: dict[str, str] | None = None) -> dict[str, Any]:
    """JSON Schema of the objects :func:`read_fields` accepts for ``cls``.

    ``closed``: no other properties (request bodies); ``optional``: required fields that may be left out
    (filled in by the reader); ``rules``: fields read by another rule; ``notes``: added to descriptions.
    """
    properties: dict[str, Any] = {}
    required = []
    for f in fields_of(cls):
        schema = (rules or {}).get(f.name, f.rule).described()
        note = (notes or {}).get(f.name)
        if note:
            schema["description"] = f"{schema['description']} ({note})" if "description" in schema else note
        if f.required and f.name not in optional:
            required.append(f.name)
        else:
            description = schema.pop("description", None)
            schema = {"anyOf": [schema, {"type": "null"}]}
            if description:
                schema["description"] = description
            default = f.absent()
            if default is not None and not isinstance(default, bytes):
                schema["default"] = list(default) if isinstance(default, tuple) else default
        properties[f.name] = schema
    schema = {"type": "object", "properties": properties, "required": required}
    if closed:
        schema["additionalProperties"] = False
    return schema


class _Record:
    """What every record has: its size limit and a reader driven by its declared fields."""

    __slots__ = ()
    max_bytes: ClassVar[int] = MAX_EVENT_BYTES

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        return read_fields(cls, d)


# --------------------------------------------------------------------------- records

#: Every record's ``schema_version`` field: optional on input (this build's version), always written.
Version = Annotated[int, SchemaVersion("The record format's version; leave it out or send 1")]


@dataclass(frozen=True, slots=True)
class Item(_Record):
    """A catalogue entry: what a shopper can be recommended."""

    item_id: Annotated[str, Id("The shop's id of the item (SKU, stock code)")]
    title: Annotated[str, Text(512, "What the shopper sees first; the text model reads it")]
    description: Annotated[str | None, Text()] = None
    category: Annotated[str | None, Text(256)] = None
    price: Annotated[float | None, Number(minimum=0.0)] = None
    schema_version: Version = SCHEMA_VERSION
    #: In stock? ``false`` takes the item off every list (as a tombstone does, but it comes back with a later
    #: ``true``); absent = not said, which lists keep unless a request asks for ``in_stock`` items only.
    available: Annotated[bool | None, Flag(
        "In stock? false takes the item off every list until a later catalog event says true; absent = not said"
    )] = None

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
class Interaction(_Record):
    """One thing a shopper did with an item. ``event_id`` makes replays idempotent."""

    event_id: Annotated[str, Id("Unique per event; a repeated id is a duplicate and counted once")]
    user_id: Annotated[str, Id("The shopper; also the message key")]
    item_id: Annotated[str, Id("The item, as in the catalogue")]
    type: Annotated[str, Choice(INTERACTION_TYPES)]
    ts: Annotated[float, Timestamp("When it happened (event time)")]
    session_id: Annotated[str | None, Id("The visit or basket (an invoice number)")] = None
    rec_id: Annotated[str | None, Id("The recommendation it followed, when it followed one")] = None
    quantity: Annotated[int | None, Integer(minimum=0, maximum=1_000_000)] = None
    price: Annotated[float | None, Number(minimum=0.0, description="Unit price")] = None
    schema_version: Version = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class RecommendedItem(_Record):
    item_id: Annotated[str, Id()]
    score: Annotated[float, Number()]
    explanation: Annotated[dict[str, Any], JsonObject()] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Impression(_Record):
    """What a serving worker showed a shopper: the join key for clicks and non-clicks."""

    rec_id: Annotated[str, Id()]
    user_id: Annotated[str, Id()]
    ts: Annotated[float, Timestamp()]
    model_version: Annotated[str, Id()]
    items: Annotated[tuple[RecommendedItem, ...], ListOf(
        Nested(RecommendedItem, message="each impression item must be an object"), max_items=1000)]
    schema_version: Version = SCHEMA_VERSION
    #: The :class:`ExplanationPolicy` version the explanation styles were drawn from (None: none yet, or an
    #: older serving worker). Optional, so impressions without it stay valid.
    policy_version: Annotated[int | None, Integer(minimum=1)] = None
    #: Which entry point served the list (None: ``recommend``, as older serving workers wrote it).
    source: Annotated[str | None, Choice(IMPRESSION_SOURCES, "The route that served the list; absent = recommend")
                      ] = None
    query: Annotated[str | None, Text(512, "source search: what the shopper searched for")] = None
    page_item_id: Annotated[str | None, Id("source similar: the product page's item")] = None

    max_bytes: ClassVar[int] = MAX_IMPRESSION_BYTES

    @property
    def route(self) -> str:
        """The entry point that served it (``recommend`` for impressions without a source)."""
        return self.source or "recommend"


@dataclass(frozen=True, slots=True)
class ExplanationFeedback(_Record):
    """A shopper's verdict on the explanation shown beside a recommendation."""

    event_id: Annotated[str, Id("Unique per verdict; a repeated id is a duplicate")]
    user_id: Annotated[str, Id("The shopper; also the message key")]
    rec_id: Annotated[str, Id("The recommendation the explanation was shown with")]
    item_id: Annotated[str, Id("The recommended item")]
    explanation_id: Annotated[str, Id("The explanation's id, as served")]
    style: Annotated[str, Choice(EXPLANATION_STYLES, "The explanation's style, as served")]
    helpful: Annotated[bool, Flag("Did the shopper find the explanation helpful?")]
    ts: Annotated[float, Timestamp("When the verdict was given")]
    reason: Annotated[str | None, Text(512, "The shopper's own words, if any")] = None
    schema_version: Version = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class AdapterUpdate(_Record):
    """A published LoRA adapter: traceable to its parent and to the exact frozen base."""

    version: Annotated[str, Id()]
    parent: Annotated[str | None, Id()]
    base_fingerprint: Annotated[str, Id()]
    created_at: Annotated[float, Timestamp()]
    metrics: Annotated[dict[str, float], NumberMap(default=dict)]
    sha256: Annotated[str, Id()]
    signature: Annotated[str, Id()]
    payload: Annotated[bytes, Base64("The adapter's safetensors bytes")]
    schema_version: Version = SCHEMA_VERSION

    max_bytes: ClassVar[int] = MAX_ADAPTER_BYTES


@dataclass(frozen=True, slots=True)
class ExplanationPolicy(_Record):
    """Which explanation style to show whom: Beta posteriors of the helpful rate per segment and style.

    Published by the worker's explanation bandit on ``recloop.explanation-policy``; serving workers
    verify ``signature`` (HMAC-SHA256 with the adapter key over the other fields,
    :func:`learner.explanation_policy.signing_bytes`) and adopt only versions newer than their own.
    """

    version: Annotated[int, Integer(minimum=1)]
    created_at: Annotated[float, Timestamp()]
    styles: Annotated[tuple[str, ...], ListOf(
        Choice(EXPLANATION_STYLES), min_items=1, unique=True,
        message=f"field 'styles' must be a non-empty list of {', '.join(EXPLANATION_STYLES)}")]
    posteriors: Annotated[dict[str, dict[str, tuple[float, float]]], Posteriors(
        "Beta(alpha, beta) of the helpful rate per segment and style; only styles listed in `styles`")]
    signature: Annotated[str, Id()]
    #: Pseudo-counts of the Beta(prior, prior) of a (segment, style) the posteriors do not list.
    prior: Annotated[float, Number(minimum=1e-9)] = 1.0
    #: Feedback events the posteriors were learned from (for operators).
    feedback_events: Annotated[int, Integer(minimum=0)] = 0
    #: Online Platt scaling of served scores to the probability that the shopper clicks, adds or buys the item:
    #: ``(mean, std, a, b)``, ``P = sigmoid(a * (score - mean) / std + b)`` (``None``: not learned yet).
    calibration: Annotated[tuple[float, float, float, float] | None, Calibration()] = None
    schema_version: Version = SCHEMA_VERSION

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExplanationPolicy:
        policy = read_fields(cls, d)
        for segment, arms in policy.posteriors.items():
            for style in arms:
                if style not in policy.styles:
                    raise InvalidRecord(f"posteriors of segment {segment!r}: style {style!r} is not in 'styles'")
        return policy


SEVERITIES = ("info", "warning", "critical")


@dataclass(frozen=True, slots=True)
class DriftAlarm(_Record):
    detector: Annotated[str, Id()]
    signal: Annotated[str, Id()]
    value: Annotated[float, Number()]
    window: Annotated[int, Integer(minimum=0)]
    severity: Annotated[str, Choice(SEVERITIES)]
    ts: Annotated[float, Timestamp()]
    schema_version: Version = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class MetricSnapshot(_Record):
    """A windowed value of one metric, as the worker saw it at ``ts``."""

    name: Annotated[str, Id()]
    value: Annotated[float, Number()]
    window: Annotated[int, Integer(minimum=0)]
    ts: Annotated[float, Timestamp()]
    labels: Annotated[dict[str, str], LabelMap()] = field(default_factory=dict)
    schema_version: Version = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class DeadLetter(_Record):
    """A message we could not accept, kept whole with where it came from and why."""

    source_topic: Annotated[str, Id()]
    partition: Annotated[int, Integer()]
    offset: Annotated[int, Integer()]
    error: Annotated[str, Text()]
    value: Annotated[bytes | None, Base64("The message's value as it arrived")]
    key: Annotated[bytes | None, Base64("The message's key as it arrived")]
    ts: Annotated[float, Number()]
    schema_version: Version = SCHEMA_VERSION

    max_bytes: ClassVar[int] = MAX_ADAPTER_BYTES


Record = (Item | Interaction | Impression | ExplanationFeedback | AdapterUpdate | DriftAlarm | MetricSnapshot
          | DeadLetter | ExplanationPolicy)
R = TypeVar("R", Item, Interaction, Impression, ExplanationFeedback, AdapterUpdate, DriftAlarm, MetricSnapshot,
            DeadLetter, ExplanationPolicy)
#: Every record type that is a topic's value, in the contract's order.
RECORD_TYPES: tuple[type, ...] = (Item, Interaction, Impression, ExplanationFeedback, AdapterUpdate,
                                  ExplanationPolicy, DriftAlarm, MetricSnapshot, DeadLetter)


def _default(obj: Any) -> Any:
    if isinstance(obj, bytes):
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
    version = data.get("schema_version")
    if version is not None:
        SchemaVersion().check(version, "schema_version")
    return cls.from_dict(data)

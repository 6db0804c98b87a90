"""Records: strict validation with readable reasons, and a lossless round trip."""

from __future__ import annotations

import orjson
import pytest

from streams import records
from streams.records import (
    AdapterUpdate,
    DeadLetter,
    ExplanationFeedback,
    Impression,
    Interaction,
    InvalidRecord,
    Item,
    decode,
    encode,
)

GOOD = {"event_id": "e1", "user_id": "17850", "item_id": "85123A", "type": "purchase", "ts": 1291191960.0,
        "session_id": "536365", "quantity": 6, "price": 2.55}


def test_interaction_round_trip_keeps_every_field_and_schema_version():
    record = decode(Interaction, orjson.dumps(GOOD))
    assert record == Interaction(**GOOD)
    data = orjson.loads(encode(record))
    assert data["schema_version"] == records.SCHEMA_VERSION
    assert decode(Interaction, encode(record)) == record


@pytest.mark.parametrize(("change", "reason"), [
    ({"user_id": None}, "missing field 'user_id'"),
    ({"type": "teleport"}, "field 'type' must be one of"),
    ({"ts": "not a time"}, "is not an ISO-8601 time"),
    ({"ts": 12.0}, "field 'ts' must be >="),
    ({"quantity": "6"}, "field 'quantity' must be an integer"),
    ({"quantity": True}, "field 'quantity' must be an integer"),
    ({"price": -1}, "field 'price' must be >= 0"),
    ({"price": float("nan")}, "must be finite"),
    ({"item_id": ""}, "must have 1..128 characters"),
    ({"item_id": "x" * 129}, "must have 1..128 characters"),
    ({"user_id": "a\nb"}, "non-printable"),
    ({"user_id": ["u"]}, "must be a string"),
    ({"schema_version": 99}, "unsupported schema_version 99"),
])
def test_invalid_interactions_are_rejected_with_a_reason(change, reason):
    data = {**GOOD, **change}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(InvalidRecord, match=reason.replace("(", r"\(").replace(")", r"\)")):
        records.from_dict(Interaction, data)


@pytest.mark.parametrize(("raw", "reason"), [
    (b"{not json", "not valid UTF-8 JSON"),
    (b"\xff\xfe\x00", "not valid UTF-8 JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (None, "empty message"),
    (b'{"a":"' + b"x" * (records.MAX_EVENT_BYTES + 10) + b'"}', "exceeds the"),
])
def test_undecodable_messages_are_rejected(raw, reason):
    with pytest.raises(InvalidRecord, match=reason):
        decode(Interaction, raw)


def test_iso_timestamps_are_accepted_and_normalised_to_epoch_seconds():
    record = records.from_dict(Interaction, {**GOOD, "ts": "2010-12-01T08:26:00Z"})
    assert record.ts == 1291191960.0


def test_every_record_type_round_trips():
    samples = [
        Item(item_id="85123A", title="WHITE HANGING HEART T-LIGHT HOLDER", price=2.55),
        ExplanationFeedback(event_id="f1", user_id="u", rec_id="r", item_id="i", explanation_id="x", style="history",
                            helpful=False, ts=1.3e9, reason="irrelevant"),
        Impression(rec_id="r", user_id="u", ts=1.3e9, model_version="v1",
                   items=(records.RecommendedItem(item_id="i", score=0.5, explanation={"text": "because"}),)),
        AdapterUpdate(version="v2", parent="v1", base_fingerprint="abc", created_at=1.3e9, metrics={"ndcg": 0.3},
                      sha256="00", signature="11", payload=b"\x00\x01binary"),
        DeadLetter(source_topic="t", partition=1, offset=5, error="bad", value=b"\xff", key=None, ts=1.3e9),
    ]
    for record in samples:
        assert decode(type(record), encode(record)) == record


def test_feedback_requires_a_boolean_verdict():
    with pytest.raises(InvalidRecord, match="must be true or false"):
        records.from_dict(ExplanationFeedback, {"event_id": "f", "user_id": "u", "rec_id": "r", "item_id": "i",
                                                "explanation_id": "x", "style": "history", "helpful": "yes",
                                                "ts": 1.3e9})

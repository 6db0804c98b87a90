"""The JSON Schemas in schemas/ are the code's, and the record parsers accept exactly what they describe.

Property tests (hypothesis): whatever bytes or JSON arrive, decoding returns a record or raises
:class:`InvalidRecord`, nothing else; records generated from a schema are accepted and round-trip;
data a schema forbids is refused; and on any one field replaced by arbitrary JSON the parser and the
schema agree. The generator is schemathesis's JSON Schema generator (:func:`ops.fuzz.record_bodies`);
validity is judged by jsonschema_rs (ECMA-262 regular expressions, as validators in other languages use).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jsonschema_rs
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from ops.fuzz import consistent_policy, fuzz_records, record_bodies
from ops.fuzz import producer_bytes as raw
from serving.app import create_app
from serving.feedback import ClickIn, ExplanationFeedbackIn
from streams import records
from streams.record_schemas import SCHEMA_DIR, main, record_schema, request_model, stale, write
from streams.records import ExplanationPolicy, InvalidRecord, Timestamp, decode, encode, fields_of

TYPES = records.RECORD_TYPES
PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


# --------------------------------------------------------------------------- the checked-in files


def test_the_checked_in_schemas_are_the_codes():
    assert stale() == [], "schemas/ differs from streams/records.py: run `python -m streams.record_schemas`"


def test_the_generator_writes_one_file_per_record_and_checks_them(tmp_path, monkeypatch):
    written = write(tmp_path)
    assert sorted(p.name for p in written) == sorted(
        f"{n}.schema.json" for n in ("item", "interaction", "impression", "explanation_feedback", "adapter_update",
                                     "explanation_policy", "drift_alarm", "metric_snapshot", "dead_letter"))
    assert write(tmp_path) == [] and stale(tmp_path) == []
    (tmp_path / "interaction.schema.json").write_text("{}")
    (tmp_path / "retired.schema.json").write_text("{}")
    assert stale(tmp_path) == ["interaction.schema.json: differs from streams/records.py",
                               "retired.schema.json: no record type has this schema"]
    monkeypatch.setattr("streams.record_schemas.SCHEMA_DIR", tmp_path)
    assert main(["--check"]) == 1
    assert main([]) == 0 and (tmp_path / "interaction.schema.json").read_text() != "{}"
    (tmp_path / "retired.schema.json").unlink()
    assert main(["--check"]) == 0


@pytest.mark.parametrize("cls", TYPES, ids=lambda cls: cls.__name__)
def test_each_schema_is_a_valid_2020_12_schema_naming_its_topic(cls):
    schema = record_schema(cls)
    jsonschema_rs.meta.validate(schema)
    assert schema["x-recloop-topic"].startswith("recloop.") and schema["title"] == cls.__name__
    assert list(schema["properties"]) == [f.name for f in fields_of(cls)]


# --------------------------------------------------------------------------- parsers against schemas


@pytest.mark.parametrize("cls", TYPES, ids=lambda cls: cls.__name__)
def test_records_the_schema_allows_are_accepted_and_round_trip(cls):
    @PROPERTY
    @given(record_bodies(cls, GenerationMode.POSITIVE))
    def check(data):
        if cls is ExplanationPolicy:
            data = consistent_policy(data)
        record = decode(cls, raw(data))
        assert decode(cls, encode(record)) == record
        assert orjson.loads(encode(record))["schema_version"] == records.SCHEMA_VERSION

    check()


@pytest.mark.parametrize("cls", TYPES, ids=lambda cls: cls.__name__)
def test_data_the_schema_forbids_is_refused(cls):
    validator = jsonschema_rs.validator_for(record_schema(cls))

    @PROPERTY
    @given(record_bodies(cls, GenerationMode.NEGATIVE))
    def check(data):
        text = raw(data)  # negative bodies may not even be JSON
        try:
            if validator.is_valid(orjson.loads(text)):  # a negative case that happens to be valid once encoded
                return
        except orjson.JSONDecodeError:
            pass
        with pytest.raises(InvalidRecord):
            decode(cls, text)

    check()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
    | st.sampled_from(["2010-12-01T08:26:00Z", "2010-12-01 08:26", "1999-01-01T00:00:00Z", "2010-02-30T00:00:00Z",
                       "", "x" * 129, "a\nb", "a\u00a0b", "AAEC", "AAE=", "history", "click", "17850"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8)


SAMPLES = {
    records.Item: records.Item("85123A", "WHITE HANGING HEART T-LIGHT HOLDER", price=2.55),
    records.Interaction: records.Interaction("e1", "17850", "85123A", "purchase", 1291191960.0, quantity=6),
    records.Impression: records.Impression("r", "u", 1.3e9, "v1", (records.RecommendedItem("i", 0.5, {"t": 1}),)),
    records.ExplanationFeedback: records.ExplanationFeedback("f", "u", "r", "i", "x", "history", False, 1.3e9),
    records.AdapterUpdate: records.AdapterUpdate("v2", "v1", "abc", 1.3e9, {"ndcg": 0.3}, "00", "11", b"\x00\x01"),
    records.ExplanationPolicy: records.ExplanationPolicy(3, 1.3e9, ("history", "popular"),
                                                         {"new": {"popular": (2.0, 1.0)}}, "sig"),
    records.DriftAlarm: records.DriftAlarm("adwin", "ctr", 0.1, 500, "warning", 1.3e9),
    records.MetricSnapshot: records.MetricSnapshot("ctr", 0.1, 500, 1.3e9, {"worker": "w1"}),
    records.DeadLetter: records.DeadLetter("recloop.interactions", 1, 5, "bad", b"\xff", None, 1.3e9),
}


@pytest.mark.parametrize("cls", TYPES, ids=lambda cls: cls.__name__)
def test_on_any_one_field_the_parser_and_the_schema_agree(cls):
    """A valid record with one field replaced by (or turned into) arbitrary JSON: accepted iff the schema says so."""
    validator = jsonschema_rs.validator_for(record_schema(cls))
    base = orjson.loads(encode(SAMPLES[cls]))
    names = [f.name for f in fields_of(cls)]
    rules = {f.name: f.rule for f in fields_of(cls)}

    @PROPERTY
    @given(st.sampled_from(names), JSON)
    def check(name, value):
        text = raw({**base, name: value})
        data = orjson.loads(text)
        valid = validator.is_valid(data)
        try:
            decode(cls, text)
            accepted = True
        except InvalidRecord:
            accepted = False
        if accepted and not valid and isinstance(rules[name], Timestamp) and isinstance(value, str):
            return  # the parser also reads ISO-8601 forms other than the schema's canonical one (docs/records.md)
        if not accepted and valid and cls is ExplanationPolicy and name in ("styles", "posteriors"):
            return  # posteriors may name only listed styles: checked by the parser, not expressible in the schema
        assert accepted == valid, (name, value)

    check()


@pytest.mark.parametrize("cls", TYPES, ids=lambda cls: cls.__name__)
def test_any_bytes_or_json_give_a_record_or_an_invalid_record_never_a_crash(cls):
    @PROPERTY
    @given(st.binary(max_size=200) | JSON.map(raw) | st.dictionaries(st.sampled_from(
        [f.name for f in fields_of(cls)]), JSON, max_size=6).map(raw))
    def check(message):
        try:
            decode(cls, message)
        except InvalidRecord as exc:
            assert str(exc)

    check()


def test_the_record_fuzz_figures_are_clean():
    figures = fuzz_records(examples=10)
    assert figures["fuzz_record_cases"] >= 9 * 3 and figures["fuzz_record_crashes"] == 0
    assert figures["fuzz_record_violations"] == 0


# --------------------------------------------------------------------------- the API's request models


def test_the_feedback_request_models_are_the_records_closed_with_server_filled_fields_optional():
    for model, cls in ((ExplanationFeedbackIn, records.ExplanationFeedback), (ClickIn, records.Interaction)):
        body, record = model.model_json_schema(), record_schema(cls)
        assert body["additionalProperties"] is False and list(body["properties"]) == list(record["properties"])
        assert set(record["required"]) - set(body["required"]) == {"event_id", "ts"}
        for name, schema in record["properties"].items():
            if name in ("event_id", "ts", "type"):
                continue
            assert {k: v for k, v in body["properties"][name].items() if k not in ("title", "default")} == {
                k: v for k, v in schema.items() if k != "default"}, name
    assert ClickIn.model_json_schema()["properties"]["type"]["enum"] == ["click"]


def test_the_openapi_document_declares_exactly_those_bodies(base):
    from tests.unit.test_serving_app import make_worker

    openapi = create_app(make_worker(base)).openapi()
    body = openapi["paths"]["/feedback"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    for declared, model in zip(body["oneOf"], (ExplanationFeedbackIn, ClickIn), strict=True):
        derived = model.model_json_schema()
        assert (declared["title"], declared["required"], declared["additionalProperties"]) == (
            derived["title"], derived["required"], False)
        assert list(declared["properties"]) == list(derived["properties"])


def test_request_models_validate_with_the_records_rules():
    good = {"user_id": "u1", "item_id": "i1", "type": "click"}
    assert ClickIn.model_validate(good).user_id == "u1"
    for bad in ({**good, "type": "purchase"}, {**good, "user_id": "a\nb"}, {**good, "colour": "red"},
                {"item_id": "i1", "type": "click"}, {**good, "ts": 12.0}):
        with pytest.raises(ValueError):
            ClickIn.model_validate(bad)
    assert request_model(records.Item, "ItemIn").model_validate({"item_id": 7, "title": "Mug"}).item_id == "7"


def test_records_are_still_plain_frozen_dataclasses():
    record = SAMPLES[records.Interaction]
    assert dataclasses.replace(record, quantity=7).quantity == 7 and records.to_dict(record)["user_id"] == "17850"
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.user_id = "x"  # type: ignore[misc]


# --------------------------------------------------------------------------- the README's producer example


def test_the_readme_producer_example_sends_valid_interactions_keyed_by_shopper(monkeypatch):
    import kafka

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Producing events from your own service")[1].split("\n## ")[0]
    example = section.split("```python\n")[1].split("```")[0]
    sent = []

    class Producer:  # kafka-python's KafkaProducer, minus the broker
        def __init__(self, **config):
            self.config = config

        def send(self, topic, key=None, value=None):
            sent.append((topic, self.config["key_serializer"](key), self.config["value_serializer"](value)))

        def flush(self):
            pass

    monkeypatch.setattr(kafka, "KafkaProducer", Producer)
    exec(compile(example, "README.md", "exec"), {})
    validator = jsonschema_rs.validator_for(json.loads((SCHEMA_DIR / "interaction.schema.json").read_text()))
    assert [(topic, key) for topic, key, _ in sent] == [("recloop.interactions", b"17850")] * 2
    for _, key, value in sent:
        validator.validate(orjson.loads(value))
        record = decode(records.Interaction, value)
        assert record.user_id.encode() == key
    assert [decode(records.Interaction, value).type for _, _, value in sent] == ["click", "purchase"]


@settings(PROPERTY, max_examples=500)
@given(st.text(alphabet="QUJD+/=\n é", max_size=12))
def test_base64_fields_accept_exactly_the_schemas_pattern(text):
    """The parser decodes base64 in C (strict mode), not with the pattern; both accept the same texts (the
    schema's ``$`` is ECMA-262's: no trailing newline)."""
    import re

    rule = records.Base64()
    try:
        rule.check(text, "payload")
        accepted = True
    except InvalidRecord:
        accepted = False
    assert accepted == bool(re.fullmatch(records.BASE64_PATTERN.strip("^$"), text))

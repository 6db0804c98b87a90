"""Fuzz figures: the serving API against its own OpenAPI document, the record parsers against ``schemas/``.

What the tests assert (``tests/unit/test_api_fuzz.py``, ``tests/unit/test_record_schemas.py``), as
numbers a benchmark can print: cases run, 5xx answers, crashes (an exception out of the app or the
parser), hangs (an answer slower than ``max_response_s``) and schema violations (any schemathesis check
failing: response bodies, status codes, content types, headers, accepted-invalid and refused-valid
requests; for records, a schema-valid record refused or a schema-invalid one accepted). All must be 0
but the cases. Runs are derandomised: the same code gives the same figures.

>>> figures = fuzz_records(examples=5)
>>> figures["fuzz_record_cases"] > 0, figures["fuzz_record_crashes"], figures["fuzz_record_violations"]
(True, 0, 0)
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from streams import records
from streams.record_schemas import record_schema

#: What a schema-valid request may be answered with: schemathesis' default, and 422 on the list routes, whose
#: business filters can be unmeetable by construction (a category the catalogue never named, price_min above
#: price_max) in a way no static schema expresses (serving.filters). A 422 must still carry the declared body.
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
LIST_ROUTES = "^/(recommend|search|similar)$"


def schemathesis_config(*, max_response_s: float, examples: int | None = None) -> Any:
    """The one schemathesis configuration of the API fuzzing (every check on; deterministic)."""
    from schemathesis.config import SchemathesisConfig

    generation: dict[str, Any] = {"deterministic": True, "database": "none"}
    if examples is not None:
        generation["max-examples"] = examples
    return SchemathesisConfig.from_dict({
        "checks": {"max_response_time": max_response_s}, "generation": generation,
        "operations": [{"include-path-regex": LIST_ROUTES, "checks": {
            "positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "422"]}}}]})


_SETTINGS = {"deadline": None, "derandomize": True, "database": None, "phases": [Phase.explicit, Phase.generate],
             "suppress_health_check": list(HealthCheck)}


def fuzz_api(target: Any, *, examples: int = 200, max_response_s: float = 5.0) -> dict[str, Any]:
    """Fuzz every operation of ``target`` (an ASGI app, or the base URL of a running serving worker).

    Each operation gets ``examples`` schema-valid and ``examples`` schema-invalid requests; every
    response goes through all of schemathesis's checks.
    """
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.core.failures import Failure, FailureGroup

    config = schemathesis_config(max_response_s=max_response_s)
    if isinstance(target, str):
        schema = schemathesis.openapi.from_url(f"{target.rstrip('/')}/openapi.json", config=config)
    else:
        schema = schemathesis.openapi.from_asgi("/openapi.json", target, config=config)
    figures: Counter = Counter()
    failures: Counter = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=examples, **_SETTINGS)
            @given(operation.as_strategy(generation_mode=mode))
            def run(case):
                figures["cases"] += 1
                start = time.perf_counter()
                try:
                    response = case.call()
                except Exception as exc:  # the app raised instead of answering
                    figures["crashes"] += 1
                    failures[f"crash: {type(exc).__name__}"] += 1
                    return
                figures["hangs"] += time.perf_counter() - start > max_response_s
                figures["5xx"] += response.status_code >= 500
                try:
                    case.validate_response(response)
                except FailureGroup as group:
                    for failure in group.exceptions:
                        failures[failure.title] += 1
                except Failure as failure:
                    failures[failure.title] += 1

            try:
                run()
            except Unsatisfiable:  # nothing to generate in this mode (no parameters to make invalid)
                pass
    return {"fuzz_cases": figures["cases"], "fuzz_5xx": figures["5xx"], "fuzz_crashes": figures["crashes"],
            "fuzz_hangs": figures["hangs"], "fuzz_schema_violations": sum(failures.values()),
            "fuzz_failures": dict(failures)}


def record_bodies(cls: type, mode: Any) -> st.SearchStrategy:
    """JSON values generated from ``cls``'s schema: valid ones (``GenerationMode.POSITIVE``) or not.

    The generator is schemathesis's: the schema is offered to it as the body of an in-memory OpenAPI
    operation. Negative values may be bytes that are not JSON at all.
    """
    import schemathesis

    body = {k: v for k, v in record_schema(cls).items() if k != "$schema"}
    api = schemathesis.openapi.from_dict({
        "openapi": "3.1.0", "info": {"title": cls.__name__, "version": "1"},
        "paths": {"/record": {"post": {"requestBody": {"required": True, "content": {"application/json": {
            "schema": body}}}, "responses": {"200": {"description": "accepted"}}}}}})
    return api["/record"]["POST"].as_strategy(generation_mode=mode).map(lambda case: case.body)


def producer_bytes(value: Any) -> bytes:
    """JSON text as a producer would send it (integers beyond 64 bits are valid JSON; orjson would refuse them)."""
    return value if isinstance(value, bytes) else json.dumps(value, ensure_ascii=False).encode()


def consistent_policy(data: dict) -> dict:
    """A generated explanation policy whose posteriors name only its own styles, the rule JSON Schema cannot state."""
    styles = data.get("styles") or []
    return {**data, "posteriors": {segment: {style: beta for style, beta in arms.items() if style in styles}
                                   for segment, arms in (data.get("posteriors") or {}).items()}}


def fuzz_records(*, examples: int = 200) -> dict[str, Any]:
    """Decode generated messages of every record type: valid, invalid, and arbitrary bytes."""
    figures: Counter = Counter()
    for cls in records.RECORD_TYPES:
        _fuzz_record(cls, examples, figures)
    return {"fuzz_record_cases": figures["cases"], "fuzz_record_crashes": figures["crashes"],
            "fuzz_record_violations": figures["violations"]}


def _fuzz_record(cls: type, examples: int, figures: Counter) -> None:
    import jsonschema_rs
    import orjson
    from schemathesis import GenerationMode

    validator = jsonschema_rs.validator_for(record_schema(cls))

    def outcome(message: bytes) -> bool | None:
        """True: accepted, False: refused with InvalidRecord, None: crashed (counted)."""
        figures["cases"] += 1
        try:
            records.decode(cls, message)
            return True
        except records.InvalidRecord:
            return False
        except Exception:
            figures["crashes"] += 1
            return None

    @settings(max_examples=examples, **_SETTINGS)
    @given(record_bodies(cls, GenerationMode.POSITIVE))
    def valid(data):
        data = consistent_policy(data) if cls is records.ExplanationPolicy else data
        figures["violations"] += outcome(producer_bytes(data)) is False

    @settings(max_examples=examples, **_SETTINGS)
    @given(record_bodies(cls, GenerationMode.NEGATIVE))
    def invalid(data):
        message = producer_bytes(data)
        try:
            if validator.is_valid(orjson.loads(message)):
                return  # a negative case that is valid once encoded
        except orjson.JSONDecodeError:
            pass
        figures["violations"] += outcome(message) is True

    @settings(max_examples=examples, **_SETTINGS)
    @given(st.binary(max_size=256))
    def arbitrary(message):
        outcome(message)

    valid()
    invalid()
    arbitrary()

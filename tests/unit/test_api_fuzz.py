"""Fuzz the serving API against its own OpenAPI document with schemathesis, every check on, in-process.

Schemathesis reads ``/openapi.json`` from the app and, for each operation, sends requests the schema
allows (which must be accepted) and requests it forbids (which must be refused with a 4xx), and checks
every response against the declared status codes, content types, headers and response schemas; a 5xx
is a failure. Runs are deterministic (a fixed derandomised search, no example database), so a failure
in CI reproduces locally; raise ``RECLOOP_FUZZ_EXAMPLES`` for a longer search.

No check is excluded. One is widened: on the list routes (``/recommend``, ``/search``, ``/similar``) a
schema-valid request may be refused with 422 when its business filters cannot be met by construction — a
category the catalogue never named, ``price_min`` above ``price_max`` — which no static schema can express
(the catalogue's categories change with the stream). A 422 there must still carry the declared error body
(``ops.fuzz.schemathesis_config``). ``max_response_time`` (off by default) is on, at 5 s per request, so that a
request the worker hangs on is a failure rather than a slow test; pytest-timeout bounds the rest.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from ops.fuzz import schemathesis_config
from serving.app import create_app
from tests.unit.test_serving_app import make_worker

#: Examples per operation and generation phase; the default keeps the whole module under a minute on 2 cores.
EXAMPLES = int(os.environ.get("RECLOOP_FUZZ_EXAMPLES", "400"))
MAX_RESPONSE_S = 5.0

CONFIG = schemathesis_config(max_response_s=MAX_RESPONSE_S, examples=EXAMPLES)


def _app():
    from learner.encoder import tiny_bert

    return create_app(make_worker(tiny_bert(seed=0)))


APP = _app()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, config=CONFIG)

#: Per-run figures: requests sent, and responses by status class, per operation.
FIGURES: Counter = Counter()


@pytest.mark.timeout(300)
@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_the_api_honours_its_own_schema(case):
    response = case.call()
    operation = f"{case.method} {case.path}"
    FIGURES["cases"] += 1
    FIGURES[f"{operation} {response.status_code // 100}xx"] += 1
    if response.status_code >= 500:
        FIGURES["5xx"] += 1
    case.validate_response(response)


def test_the_fuzzing_ran_and_found_no_server_error():
    """The figures of the run above (the test before this one in the module)."""
    if not FIGURES["cases"]:
        pytest.skip("the fuzz test did not run in this session")
    print(f"\nfuzz: {dict(sorted(FIGURES.items()))}")
    assert FIGURES["5xx"] == 0
    # both ways, accepted and refused, were exercised
    for operation in ("GET /recommend", "GET /search", "POST /feedback"):
        assert FIGURES[f"{operation} 2xx"] > 0 and FIGURES[f"{operation} 4xx"] > 0, operation


def test_the_benchmark_figures_of_a_short_run_are_clean():
    """``ops.fuzz.fuzz_api``, what ``recloop bench faults`` reports, on the same app."""
    from ops.fuzz import fuzz_api

    figures = fuzz_api(APP, examples=15)
    assert figures["fuzz_cases"] > 4 * 15 and figures["fuzz_5xx"] == figures["fuzz_crashes"] == 0
    assert figures["fuzz_hangs"] == figures["fuzz_schema_violations"] == 0, figures["fuzz_failures"]


@pytest.fixture(scope="module", autouse=True)
def stop_the_app():
    """Schemathesis starts the app's lifespan once and keeps it; stop it when the module is done."""
    yield
    from schemathesis.python import asgi

    asgi.shutdown_lifespans()

"""The serving worker's HTTP face: ``/recommend``, ``/search``, ``/similar``, ``/feedback``, ``/healthz``, ``/metrics``.

The worker itself (:mod:`serving.worker`) does the work; this module maps HTTP onto it: query parameters
and their validation, error answers (every one an :class:`~serving.api_models.ErrorResponse`), timing and
counting per route. Responses are serialised with orjson directly; :mod:`serving.api_models` documents
them in OpenAPI, and ``/feedback`` bodies are read by the records' own rules (:mod:`serving.feedback`).

Module map: :mod:`serving.recommender` ranks and explains, :mod:`serving.state` holds the swappable model,
:mod:`serving.history` follows the stream, :mod:`serving.publishing` logs impressions,
:mod:`serving.metrics` counts.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving.api_models import ErrorResponse, FeedbackResponse, RecommendResponse, SearchResponse, SimilarResponse
from serving.feedback import ClickIn, ExplanationFeedbackIn, FeedbackRejected
from serving.filters import Filters, InvalidFilter
from serving.settings import MAX_K, ServingSettings
from serving.worker import NotReady, ServingWorker, UnknownItem, load_serving_base
from streams.records import ID_FORBIDDEN, ID_PATTERN, MAX_EVENT_BYTES, MAX_ID_CHARS, MAX_TS, MIN_TS
from streams.settings import KafkaSettings

log = logging.getLogger(__name__)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) once it passes ``limit`` bytes instead of reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise FeedbackRejected(413, f"body of {declared} bytes exceeds the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise FeedbackRejected(413, f"body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


#: A search query: some visible character, no control characters (those ids may not hold either).
QUERY_PATTERN = rf"^[^{ID_FORBIDDEN}]*[^\s{ID_FORBIDDEN}][^{ID_FORBIDDEN}]*$"
#: Query parameters several routes share.
OptionalShopper = Annotated[str | None, Query(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN, description=(
    "The shopper, to rank for them (a shopper the model does not know yet gets the unpersonalised ranking)"))]
HowMany = Annotated[int, Query(ge=1, le=MAX_K, description="How many items (1..1000)")]
VisitTime = Annotated[float | None, Query(ge=MIN_TS, le=MAX_TS, allow_inf_nan=False, description=(
    "Event time of the visit (epoch seconds), stamped on the impression so that it joins with what the shopper "
    "does next in replays too; default: now"))]


async def request_filters(
    category: Annotated[str | None, Query(min_length=1, max_length=256, description=(
        "Only items of this catalogue category (exact, case-insensitive); an unknown category is a 422"))] = None,
    price_min: Annotated[float | None, Query(ge=0, allow_inf_nan=False, description=(
        "Only items priced at least this (items without a price are left out)"))] = None,
    price_max: Annotated[float | None, Query(ge=0, allow_inf_nan=False, description=(
        "Only items priced at most this (items without a price are left out)"))] = None,
    exclude_purchased: Annotated[bool, Query(description="Leave out what the shopper bought before")] = False,
    in_stock: Annotated[bool, Query(description=(
        "Only items the catalogue says are available (`available: true`); items with `available: false` are "
        "never listed"))] = False,
) -> Filters:
    """The business filters every list route takes (:mod:`serving.filters`). ``async`` so that FastAPI calls it
    on the event loop: a plain function dependency would cost every request a trip through a thread pool."""
    return Filters(category, price_min, price_max, exclude_purchased, in_stock)


def create_app(worker: ServingWorker) -> FastAPI:
    """The HTTP face of ``worker``; starting the app starts the worker's stream followers."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await worker.start()
        try:
            yield
        finally:
            await worker.stop()

    app = FastAPI(title="recloop serving worker", version="1", lifespan=lifespan,
                  description="Recommendations with faithful explanations, from a model that learns while it serves.")
    app.state.worker = worker
    metrics = worker.metrics
    not_ready = {"model": ErrorResponse, "description": "No model version is serving yet"}
    invalid = {"model": ErrorResponse, "description": "Invalid parameters: `detail` says which and why"}

    @app.exception_handler(InvalidFilter)
    async def invalid_filter(request: Request, exc: InvalidFilter) -> JSONResponse:
        metrics.requests.labels(request.url.path.strip("/") or "root", "422").inc()
        return _error(422, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        message = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'request'}: {e['msg']}" for e in errors)
        return JSONResponse({"detail": message, "errors": jsonable_errors(errors)}, status_code=422)

    async def answered(route: str, body: Awaitable[bytes]) -> Response:
        """A GET route's JSON answer, timed and counted; a worker not ready is a 503, an item it does not serve
        a 404."""
        start = time.perf_counter()
        try:
            content = await body
        except NotReady:
            metrics.requests.labels(route, "503").inc()
            return _error(503, "no model version is serving yet")
        except UnknownItem as exc:
            metrics.requests.labels(route, "404").inc()
            return _error(404, f"item {exc.args[0]!r} is not in the catalogue this worker serves")
        metrics.request_seconds.labels(route).observe(time.perf_counter() - start)
        metrics.requests.labels(route, "200").inc()
        return Response(content, media_type="application/json")

    @app.get("/recommend", response_model=None,
             responses={200: {"model": RecommendResponse}, 422: invalid, 503: not_ready})
    async def recommend(
        user_id: Annotated[str, Query(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN,
                                      description="The shopper (an id: no control characters)")],
        filters: Annotated[Filters, Depends(request_filters)],
        k: HowMany = worker.settings.default_k,
        ts: VisitTime = None,
    ) -> Response:
        """Rank the whole catalogue for ``user_id`` with the current model and explain the top ``k``."""
        async def body() -> bytes:
            return (await worker.recommend(user_id, k, ts, filters)).body()
        return await answered("recommend", body())

    @app.get("/search", response_model=None,
             responses={200: {"model": SearchResponse}, 422: invalid, 503: not_ready})
    async def search(
        q: Annotated[str, Query(min_length=1, max_length=512, pattern=QUERY_PATTERN,
                                description="What the shopper searched for (words; no control characters)")],
        filters: Annotated[Filters, Depends(request_filters)],
        user_id: OptionalShopper = None,
        k: HowMany = worker.settings.default_k,
        ts: VisitTime = None,
    ) -> Response:
        """Items matching ``q`` by their words (BM25) ranked by the shopper's model score, then items close to ``q``
        in meaning (the text tower), each explained; the impression carries ``source: search``."""
        async def body() -> bytes:
            return (await worker.search(q, user_id, k, filters, ts)).body()
        return await answered("search", body())

    @app.get("/similar", response_model=None,
             responses={200: {"model": SimilarResponse}, 404: {"model": ErrorResponse, "description": (
                 "The item is not in the catalogue this worker serves")}, 422: invalid, 503: not_ready})
    async def similar(
        item_id: Annotated[str, Query(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN,
                                      description="The product page's item")],
        filters: Annotated[Filters, Depends(request_filters)],
        user_id: OptionalShopper = None,
        k: HowMany = worker.settings.default_k,
    ) -> Response:
        """Items bought together with ``item_id`` or alike in text, ranked for ``user_id`` when given, explained."""
        async def body() -> bytes:
            return (await worker.similar(item_id, user_id, k, filters)).body()
        return await answered("similar", body())

    @app.post("/feedback", status_code=202, response_model=FeedbackResponse,
              responses={400: {"model": ErrorResponse, "description": "The body is not JSON"},
                         413: {"model": ErrorResponse, "description": f"The body exceeds {MAX_EVENT_BYTES} bytes"},
                         422: {"model": ErrorResponse, "description": "The body is not a valid verdict or click"},
                         503: {"model": ErrorResponse, "description": "The feedback could not be delivered"}},
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                  "oneOf": [ExplanationFeedbackIn.model_json_schema(), ClickIn.model_json_schema()]}}}}})
    async def feedback(request: Request) -> Any:
        """A verdict on an explanation (with ``explanation_id``) or a click (``type: click``)."""
        start = time.perf_counter()
        try:
            accepted = await worker.feedback(await _read_body(request, MAX_EVENT_BYTES))
        except FeedbackRejected as exc:
            metrics.requests.labels("feedback", str(exc.status)).inc()
            return _error(exc.status, exc.message)
        metrics.request_seconds.labels("feedback").observe(time.perf_counter() - start)
        metrics.requests.labels("feedback", "202").inc()
        return accepted

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """200 once a model version serves, 503 while starting."""
        return JSONResponse(worker.health(), status_code=200 if worker.ready else 503)

    @app.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def jsonable_errors(errors: Any) -> Any:
    """Validation errors without the exception objects pydantic may put in ``ctx``."""
    return orjson.loads(orjson.dumps(errors, default=str))


# --------------------------------------------------------------------------- running


def run_server(settings: ServingSettings, kafka: KafkaSettings) -> None:
    """Load the base, build the worker and serve HTTP until SIGINT/SIGTERM; with ``settings.processes`` > 1,
    that many worker processes share the port (uvicorn's workers: the kernel spreads connections over them),
    each a whole serving worker that follows the topics and swaps versions on its own."""
    import uvicorn

    settings.signing_key()  # fail before loading anything when the key is missing
    if settings.processes > 1:
        os.environ.update(settings.environment())  # the processes build the same settings from the environment
        log.info("serving on http://%s:%d with %d processes (topics %s.*)", settings.host, settings.port,
                 settings.processes, kafka.topic_prefix)
        uvicorn.run("serving.app:app_from_environment", factory=True, workers=settings.processes,
                    host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False,
                    lifespan="on")
        return
    worker = serving_worker(settings, kafka)
    log.info("serving on http://%s:%d (topics %s.*, base %s)", settings.host, settings.port, kafka.topic_prefix,
             worker.builder.base.name)
    uvicorn.run(create_app(worker), host=settings.host, port=settings.port, log_level=settings.log_level,
                access_log=False, lifespan="on")


def serving_worker(settings: ServingSettings, kafka: KafkaSettings) -> ServingWorker:
    import torch

    torch.set_num_threads(1)  # requests are small; the cores are shared with the stream worker and each other
    return ServingWorker(settings, load_serving_base(settings), kafka)


def app_from_environment() -> FastAPI:
    """One serving process of ``recloop serve --processes N``: its settings from the environment."""
    from ops import logs

    logs.configure()
    return create_app(serving_worker(ServingSettings(), KafkaSettings()))

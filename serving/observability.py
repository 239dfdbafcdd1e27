"""Metrics (Prometheus), request ids and structured JSON logs.

``GET /metrics`` serves Prometheus' text format. With several worker processes
(``rag serve --workers N``) every worker writes its samples to ``PROMETHEUS_MULTIPROC_DIR``
and the scrape sums them (prometheus_client's multiprocess mode), so the figures are the
service's, not one worker's.

Every request gets an id: the caller's ``X-Request-ID`` when it is a sane token, else a
new one; it comes back in the response's ``X-Request-ID`` and is on every log line written
while the request runs. Question text is logged at INFO only with ``RAG_LOG_QUESTIONS``.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import sys
import time
import uuid
from typing import IO, Any

from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import compile_path

from rag.errors import internal_error_body
from rag.privacy import mask_cards
from rag.settings import Settings

from .asgi import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("rag.serving")
access_log = logging.getLogger("rag.access")

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

HTTP_REQUESTS = Counter("rag_http_requests_total", "HTTP requests by route, method and status.", ["route", "method", "status"])  # fmt: skip
HTTP_LATENCY = Histogram(
    "rag_http_request_duration_seconds",
    "Time from request to the last byte of the response (streams included).",
    ["route", "method", "status"],
    buckets=_LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge("rag_http_requests_in_flight", "Requests being served now.", multiprocess_mode="livesum")
CACHE = Counter(
    "rag_cache_lookups_total",
    "Answers by collection and how the cache served them: exact, semantic, miss, or bypass (follow-ups).",
    ["collection", "result"],
)
RETRIEVAL = Histogram("rag_retrieval_seconds", "Hybrid retrieval per question.", ["collection"], buckets=_LATENCY_BUCKETS)  # fmt: skip
EMBEDDING = Histogram("rag_embedding_seconds", "Embedding one question.", buckets=_LATENCY_BUCKETS)
CACHE_CHECKS = Counter(
    "rag_cache_checks_total",
    "The response cache's lookups by outcome: exact_hits, semantic_hits, misses, and why a stored answer was "
    "not served (exact_rejected: its cited chunks changed; exact_outdated: a passage added since is retrieved; "
    "rejected_as_ambiguous, rejected_by_*: the near-duplicate checks; store_errors).",
    ["outcome"],
)
ERRORS_SENT = Counter(
    "rag_errors_total",
    "Error responses by status and code (backend_unavailable, collection_damaged, rate_limit_exceeded, "
    "internal_error, ...), /readyz's own not counted; "
    "an error inside a stream that began as a 200 is not one.",
    ["status", "code"],
)
ANSWERS = Counter(
    "rag_answers_total",
    "Answers by collection, kind (generated, quoted, no_answer, curated, small_talk) and why a person "
    "should take over (no_answer, guard_replaced; none when the answer stands).",
    ["collection", "kind", "needs_human"],
)
JUDGE = Histogram(
    "rag_judge_seconds",
    "The judge reading every retrieved sentence against the question (CPU: the cross-encoder).",
    ["collection"],
    buckets=_LATENCY_BUCKETS,
)
GENERATION = Histogram("rag_generation_seconds", "Generating one answer.", ["backend"], buckets=_LATENCY_BUCKETS)
FIRST_TOKEN = Histogram(
    "rag_time_to_first_token_seconds",
    "Time from a streamed request's arrival to its first text.",
    ["backend"],
    buckets=_LATENCY_BUCKETS,
)
TOKENS = Counter("rag_generated_tokens_total", "Tokens generated.", ["backend"])
REPLICA_UP = Gauge(
    "rag_backend_replica_up",
    "1 when a vLLM replica is taking requests, 0 while it sits out after failures.",
    ["replica"],
    multiprocess_mode="livemostrecent",
)

ENGINE_UP = Gauge(
    "rag_engine_up",
    "1 when an engine the settings name (redis, database) answers a ping at the scrape, else 0.",
    ["engine"],
    multiprocess_mode="livemostrecent",
)

UNWRITTEN = Gauge(
    "rag_unwritten_answers",
    "Answers held in memory because the answer log cannot be written now (a full disk, a read-only data dir, the database away).",
    multiprocess_mode="livesum",
)

INDEX_VERSION = Gauge(
    "rag_index_version_info",
    "1 for the index version this process serves for each collection it has loaded.",
    ["collection", "version"],
    multiprocess_mode="livemostrecent",
)
_INDEX_LABELS: set[tuple[str, str]] = set()  # the label sets INDEX_VERSION shows now


def observe_answer(answer: Any, cacheable: bool) -> None:
    """Pipeline observer: one call per answer, whatever path it took."""
    timings = answer.timings_ms
    if not cacheable:
        result = "bypass"
    elif answer.cache.hit:
        result = str(answer.cache.kind or "exact")
    else:
        result = "miss"
    CACHE.labels(answer.collection, result).inc()
    ANSWERS.labels(answer.collection, answer.answer_kind, answer.handoff_reason() or "none").inc()
    if timings.get("embed"):
        EMBEDDING.observe(timings["embed"] / 1000)
    if timings.get("retrieve"):
        RETRIEVAL.labels(answer.collection).observe(timings["retrieve"] / 1000)
    if timings.get("support"):
        JUDGE.labels(answer.collection).observe(timings["support"] / 1000)
    if timings.get("generate"):
        GENERATION.labels(answer.backend).observe(timings["generate"] / 1000)
    if timings.get("first_token"):
        FIRST_TOKEN.labels(answer.backend).observe(timings["first_token"] / 1000)
    tokens = int(answer.usage.get("completion_tokens") or 0)
    if tokens:
        TOKENS.labels(answer.backend).inc(tokens)


def update_replicas(generator: Any) -> None:
    pool = getattr(generator, "pool", None)
    for replica in getattr(pool, "replicas", ()):
        REPLICA_UP.labels(replica.url).set(1 if replica.healthy else 0)  # its last request's or probe's verdict


def count_cache_check(outcome: str) -> None:
    """Cache hook (``SemanticCache.count_hooks``): one lookup's outcome."""
    CACHE_CHECKS.labels(outcome).inc()


def update_engines(states: dict[str, str]) -> None:
    """``states``: each engine's "ok" or why not (:func:`serving.health.engine_states`)."""
    for engine, state in states.items():
        ENGINE_UP.labels(engine).set(1 if state == "ok" else 0)


def update_unwritten(support: Any) -> None:
    UNWRITTEN.set(support.unwritten())


def update_index_versions(pipeline: Any) -> None:
    """The version each loaded collection serves now (a swapped-out version's line goes)."""
    served = {(name, index.version) for name, index in list(pipeline._indexes.items())}
    for labels in _INDEX_LABELS - served:
        INDEX_VERSION.remove(*labels)
    for labels in served:
        INDEX_VERSION.labels(*labels).set(1)
    _INDEX_LABELS.clear()
    _INDEX_LABELS.update(served)


def metrics_payload() -> tuple[bytes, str]:
    """The scrape: this process's registry, or every worker's when there are several."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def worker_exit() -> None:
    """A worker's live gauges leave the sums when it stops."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())


def _route_of(scope: Scope) -> str:
    """The route template a request was for, also when it was refused before routing (a 401,
    a 429, a 413: the guard answers those), so that a dashboard per route sees them."""
    route = getattr(scope.get("route"), "path", None)
    if route:
        return str(route)
    app = scope.get("app")
    if app is None or not hasattr(app, "openapi"):
        return "unmatched"
    templates = getattr(app.state, "route_templates", None)
    if templates is None:  # once per app: its schema's paths, as patterns
        try:
            templates = [(compile_path(path)[0], path) for path in app.openapi().get("paths", {})]
        except Exception:  # never the reason a request's own error is lost
            return "unmatched"
        app.state.route_templates = templates
    return next((template for pattern, template in templates if pattern.match(scope["path"])), "unmatched")


class RequestContextMiddleware:
    """Outermost: request id, in-flight gauge, latency by route and status, one access log line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        # One that holds a card number is not kept (it is logged and sent back): a new one.
        request_id = given if _REQUEST_ID_RE.match(given) and mask_cards(given) == given else uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        status, started_response = 500, False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status, started_response = message["status"], True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        IN_FLIGHT.inc()
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # A bug: logged here, inside the request's context (the traceback carries its id),
            # and answered here (the 500 carries X-Request-ID, to find that traceback by).
            log.exception("unexpected error")
            if started_response:  # too late for a response of its own: the server closes it
                raise
            ERRORS_SENT.labels("500", "internal_error").inc()
            await JSONResponse(internal_error_body(), status_code=500)(scope, receive, send_with_id)
        finally:
            IN_FLIGHT.dec()
            seconds = time.perf_counter() - started
            route = _route_of(scope)
            HTTP_REQUESTS.labels(route, scope["method"], str(status)).inc()
            HTTP_LATENCY.labels(route, scope["method"], str(status)).observe(seconds)
            principal = scope.get("state", {}).get("principal")
            access_log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "route": route,
                    "path": mask_cards(scope["path"]),  # a job id is the caller's text
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                    "key": principal.label if principal is not None else None,
                },
            )
            REQUEST_ID.reset(token)


def log_question(settings: Settings, collection: str | None, question: str) -> None:
    level = logging.INFO if settings.log_questions else logging.DEBUG
    log.log(level, "question", extra={"collection": collection, "question": question})


class _TextFormatter(logging.Formatter):
    """Plain lines (RAG_LOG_FORMAT=text); the access line's fields, extras that JSON shows
    on their own, are written out after it."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        if record.name == access_log.name and hasattr(record, "route"):
            fields = record.__dict__
            line += f" {fields['method']} {fields['path']} {fields['status']} {fields['duration_ms']} ms key={fields['key']}"
        return line


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


def configure_logging(settings: Settings, stream: IO[str] | None = None) -> logging.Handler:
    """Root logging for `rag serve`: JSON lines (or text) on stderr, with the request id."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if settings.log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # httpx logs every request's URL at INFO: a webhook's ?token= among them, and one line per
    # call to vLLM. Their failures reach the log through the code that made the call.
    # faiss says at INFO, three lines at every start, that it "could not load" an AVX-512 build
    # it then does without: an alarm for anyone who greps the log for failures.
    for name in ("httpx", "httpcore", "faiss.loader"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return handler

"""The FastAPI application: ``create_app(settings)`` builds it, lifespan loads the parts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, Response

from rag.errors import BackendUnavailableError, InvalidRequestError
from rag.pipeline import Pipeline, build_pipeline
from rag.settings import Settings
from rag.store import list_collections

from . import observability
from .auth import Authenticator, GuardMiddleware, KeyLimits, KeyStore, principal_of
from .errors import error_response, install_error_handlers
from .jobs import JobRunner, JobStore
from .jobs import router as jobs_router
from .openai_compat import router as openai_router
from .schemas import ErrorResponse, QueryRequest, QueryResponse
from .streaming import EventSourceResponse, sse_events

WIDGET = Path(__file__).resolve().parent / "static" / "widget.js"
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 413, 429, 503)
}


def _cache(request: Request) -> Any:
    principal_of(request).require_admin()
    cache = request.app.state.pipeline.cache
    if cache is None:
        raise InvalidRequestError("the response cache is off (RAG_CACHE_ENABLED=false)")
    return cache


def create_app(settings: Settings | None = None, pipeline: Pipeline | None = None) -> FastAPI:
    """Build the app. Pass ``pipeline`` to share one already loaded (tests, embedding)."""
    settings = settings or Settings()
    keys = KeyStore(settings.data_dir)
    authenticator = Authenticator(keys)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = pipeline is None
        app.state.pipeline = pipeline or await asyncio.to_thread(build_pipeline, settings)
        if observability.observe_answer not in app.state.pipeline.observers:
            app.state.pipeline.observers.append(observability.observe_answer)
        app.state.jobs = JobRunner(
            JobStore(settings.data_dir / "jobs.sqlite"), app.state.pipeline, settings.job_concurrency
        )
        app.state.jobs.resume()  # jobs a restart interrupted carry on
        try:
            yield
        finally:
            await app.state.jobs.aclose()
            if owned:
                await app.state.pipeline.aclose()
            keys.close()
            observability.worker_exit()

    app = FastAPI(
        title="rag-service",
        summary="Grounded, cited answers from your documents, with a semantic response cache.",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(openai_router, responses=_ERRORS)
    app.include_router(jobs_router, responses=_ERRORS)
    app.state.authenticator = authenticator
    # Outermost last: request id, metrics and access log see everything, CORS headers ride
    # on 401s and 429s too (so the widget can read them), then keys and limits.
    app.add_middleware(GuardMiddleware, settings=settings, authenticator=authenticator, limits=KeyLimits(settings))
    if settings.cors_origins:  # the widget on a help centre's own origin; nothing else
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "Authorization", "Accept", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(observability.RequestContextMiddleware)

    @app.get("/widget.js", include_in_schema=False)
    async def widget() -> FileResponse:
        """The chat widget: one <script> tag on any page (see the README)."""
        return FileResponse(WIDGET, media_type="text/javascript", headers={"Cache-Control": "public, max-age=300"})

    @app.post("/v1/query", response_model=QueryResponse, responses=_ERRORS)
    async def query(body: QueryRequest, request: Request) -> Any:
        pipe: Pipeline = request.app.state.pipeline
        principal_of(request).require_collection(body.collection or settings.collection)
        observability.log_question(settings, body.collection, body.question)
        history = [turn.model_dump() for turn in body.history]
        if body.stream:
            # Bad requests still get a plain 4xx: everything that can fail on the request
            # itself happens before the stream starts.
            prep = await pipe.prepare(body.question, body.collection, body.top_k, history, body.filters)
            return EventSourceResponse(sse_events(pipe, prep))
        answer = await pipe.answer(body.question, body.collection, body.top_k, history, body.filters)
        return answer.to_dict()

    @app.get("/v1/cache/stats", responses=_ERRORS)
    async def cache_stats(request: Request) -> dict[str, Any]:
        """Entries, bytes on disk, and this worker's lookups by outcome."""
        return _cache(request).stats()

    @app.delete("/v1/cache", responses=_ERRORS)
    async def cache_clear(request: Request, collection: str | None = None) -> dict[str, Any]:
        """Drop cached answers: all, or one collection's (`?collection=NAME`)."""
        return {"cleared": _cache(request).clear(collection), "collection": collection}

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        """Prometheus metrics of every worker (admin key when keys are configured)."""
        principal_of(request).require_admin()
        observability.update_replicas(request.app.state.pipeline.generator)
        payload, content_type = observability.metrics_payload()
        return Response(payload, media_type=content_type)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", responses=_ERRORS)
    async def readyz(request: Request) -> Any:
        """Ready to answer: every collection that has been ingested loads, and the backend is up.

        Each collection is reported with its index version and size (or why it does not load);
        with API keys configured, strangers see counts, not collection names."""
        pipe: Pipeline = request.app.state.pipeline
        names = list_collections(settings.collections_dir)
        if not names:
            return error_response(
                503,
                f"not ready: no collection has been ingested under {settings.data_dir} "
                "- run `rag ingest PATH --collection NAME` first",
                "service_unavailable",
                None,
                "not_ready",
            )
        collections: dict[str, dict[str, Any]] = {}
        for name in names:
            try:
                index = pipe.get_index(name)
            except Exception as exc:  # not ready is an answer here, not a failure
                collections[name] = {"status": "error", "message": str(getattr(exc, "message", exc))}
            else:
                collections[name] = {"status": "ready", "index_version": index.version, "chunks": len(index)}
        broken = {n: c["message"] for n, c in collections.items() if c["status"] != "ready"}
        public = authenticator.enabled()  # public route: no collection names to strangers
        if broken:
            detail = "; ".join(f"{n}: {m}" for n, m in broken.items()) if not public else f"{len(broken)} collection(s)"
            return error_response(503, f"not ready: {detail}", "service_unavailable", None, "not_ready")
        ready = getattr(pipe.generator, "ready", None)
        if ready is not None and not await ready():
            raise BackendUnavailableError(f"backend {pipe.generator.name} is not ready")
        body: dict[str, Any] = {
            "status": "ready",
            "backend": pipe.generator.name,
            "chunks": sum(c["chunks"] for c in collections.values()),
        }
        if public:
            body["collection_count"] = len(collections)
        else:
            body["collections"] = collections
            body["default_collection"] = settings.collection if settings.collection in collections else None
        return body

    return app


def app_from_env() -> FastAPI:
    """The app `rag serve` runs (each worker process builds its own): settings from
    ``RAG_*`` variables, logging configured for the service."""
    settings = Settings()
    observability.configure_logging(settings)
    return create_app(settings)

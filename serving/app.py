"""The FastAPI application: ``create_app(settings)`` wires the parts together (the pipeline
in the lifespan, the middleware, the error handlers) and includes one router per API:
`query` (/v1/query), `feedback` (/v1/feedback), `curation` (/v1/curated), `openai_compat` (/v1/chat/completions,
/v1/models), `jobs` (/v1/jobs),
`admin` (the cache, /metrics), `health` (/healthz, /readyz) and `widget` (/widget.js)."""

from __future__ import annotations

import asyncio
import faulthandler
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline
from starlette.datastructures import Headers
from starlette.responses import Response

from rag import __version__
from rag.pipeline import Pipeline, build_pipeline
from rag.settings import Settings

from . import admin, curation, erasure, feedback, health, jobs, observability, openai_compat, query, restore, widget
from .auth import DOCS_STATIC, Authenticator, GuardMiddleware, KeyLimits
from .database import Database
from .errors import ERRORS, error_response, install_error_handlers, without_validation_422
from .handoff import Handoff, Outbox
from .jobs import JobRunner, JobStore
from .keys import open_key_store
from .pg_jobs import PgJobStore
from .support_store import open_support_store


class _Cors(CORSMiddleware):
    """Starlette's CORS, with a refused preflight in the one error shape (it was text/plain)."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        refused = bytes(response.body).decode()  # "Disallowed CORS origin, headers"
        advice = []
        if "origin" in refused:
            advice.append("a page's origin must be in RAG_CORS_ORIGINS on the service")
        if "method" in refused or "headers" in refused:
            advice.append("a page may send GET and POST with Content-Type, Authorization, Accept and X-Request-ID")
        message = f"{refused} - {'; '.join(advice) or 'see RAG_CORS_ORIGINS'}"
        refusal = error_response(400, message, "invalid_request_error", None, "cors_refused")
        for name, value in response.headers.items():  # Vary and the allowed methods and headers
            if name not in ("content-length", "content-type"):
                refusal.headers[name] = value
        return refusal


def create_app(settings: Settings | None = None, pipeline: Pipeline | None = None) -> FastAPI:
    """Build the app. Pass ``pipeline`` to share one already loaded (tests, embedding)."""
    settings = settings or Settings()
    # PostgreSQL where RAG_DATABASE_URL names one (keys and jobs shared by every replica).
    database = Database(settings.database_url).open() if settings.database_url else None
    keys = open_key_store(settings, database)
    authenticator = Authenticator(keys)
    limits = KeyLimits(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = pipeline is None
        app.state.pipeline = pipeline or await asyncio.to_thread(build_pipeline, settings)
        if observability.observe_answer not in app.state.pipeline.observers:
            app.state.pipeline.observers.append(observability.observe_answer)
        cache = app.state.pipeline.cache
        if cache is not None and observability.count_cache_check not in cache.count_hooks:
            cache.count_hooks.append(observability.count_cache_check)
        support = app.state.support = open_support_store(settings.data_dir, database)
        app.state.curated = curation.CuratedStore(support.sql)
        app.state.handoff = Handoff(settings.handoff_webhook_url, Outbox(support.sql))
        app.state.handoff.start()  # the handoffs a stop left in the outbox go now
        store = PgJobStore(database, settings.job_lease_s) if database else JobStore(settings.data_dir / "jobs.sqlite")
        keep = partial(feedback.keep, app.state)  # a job's answers take feedback as a route's do
        app.state.jobs = JobRunner(store, app.state.pipeline, settings.job_concurrency, keep, settings.job_retry_s)
        app.state.jobs.resume()  # jobs a restart interrupted carry on (shared: any replica's)
        follower = curation.follow_versions(app.state.pipeline, app.state.curated, asyncio.get_running_loop())
        await curation.start(app.state.pipeline, app.state.curated)
        stop_watching = asyncio.Event()
        watcher = asyncio.get_running_loop().create_task(
            restore.watch(app.state.pipeline, support, app.state.curated, stop_watching, settings.store_check_s)
        )
        stop_sweeping = asyncio.Event()
        sweeper = asyncio.get_running_loop().create_task(
            erasure.keep_within_retention(settings, app.state.pipeline.cache, support, store, stop_sweeping)
        )
        try:
            yield
        finally:
            app.state.pipeline.on_version.remove(follower)
            stop_sweeping.set()  # a sweep in progress ends first: it uses the job store closed next
            await asyncio.wait([sweeper], timeout=60)
            await app.state.jobs.aclose()
            await app.state.handoff.aclose()
            stop_watching.set()  # its look in progress ends first: its threads use the stores closed below
            await asyncio.wait([watcher], timeout=30)
            watcher.cancel()
            support.close()
            if owned:
                await app.state.pipeline.aclose()
            elif release := getattr(app.state.pipeline.generator, "release_connections", None):
                await release()  # its owner's pipeline; the connections it opened are this loop's
            keys.close()
            await limits.aclose()
            if database is not None:
                database.close()
            observability.worker_exit()

    # /docs from Swagger UI's own files, not a CDN: it works on a host with no internet.
    app = FastAPIOffline(
        docs_url="/docs",
        redoc_url=None,
        static_url=DOCS_STATIC,
        title="rag-service",
        summary="Grounded, cited answers from your documents, with a semantic response cache.",
        version=__version__,
        lifespan=lifespan,
    )
    install_error_handlers(app)
    # Routes by API, in the order the OpenAPI schema lists them.
    app.include_router(openai_compat.router, responses=ERRORS)
    app.include_router(jobs.router, responses=ERRORS)
    app.include_router(widget.router)
    app.state.settings = settings
    app.state.authenticator = authenticator
    app.state.limits = limits
    app.state.database = database
    # Outermost last: request id, metrics and access log see everything, CORS headers ride
    # on 401s and 429s too (so the widget can read them), then keys and limits.
    app.add_middleware(GuardMiddleware, settings=settings, authenticator=authenticator, limits=limits)
    if settings.cors_origins:  # the widget on a help centre's own origin; nothing else
        app.add_middleware(
            _Cors,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "Authorization", "Accept", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(observability.RequestContextMiddleware)

    app.include_router(query.router, responses=ERRORS)
    app.include_router(feedback.router, responses=ERRORS)
    app.include_router(curation.router, responses=ERRORS)
    app.include_router(admin.router, responses=ERRORS)
    app.include_router(erasure.router, responses=ERRORS)
    app.include_router(health.router)  # /healthz documents no errors; /readyz its own
    without_validation_422(app)
    return app


def app_from_env() -> FastAPI:
    """The app `rag serve` runs (each worker process builds its own): settings from
    ``RAG_*`` variables, logging configured for the service."""
    settings = Settings()
    observability.configure_logging(settings)
    # A worker killed by a signal (SIGBUS: an index file truncated under its memory map;
    # SIGSEGV in a native library) leaves its Python traceback in the log, not only an exit code.
    faulthandler.enable()
    backend = f"{settings.backend} at {settings.vllm_url}" if settings.backend == "vllm" else settings.backend
    logging.getLogger("rag.serving").info("starting: backend %s, data dir %s", backend, settings.data_dir)
    return create_app(settings)

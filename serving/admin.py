"""The admin routes: the response cache (`/v1/cache/stats`, `DELETE /v1/cache`, the answers a
thumbs-down keeps out: `/v1/cache/blocks`), the support report and its page (`/v1/admin/report`,
`/admin`) and the
Prometheus metrics (`/metrics`); an admin key where keys are configured."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from rag.errors import CollectionNotFoundError, InvalidRequestError, NotFoundError
from rag.store import check_collection_name, list_collections

from . import observability
from .curation import sync_curated
from .health import engine_states
from .principals import principal_of
from .report import build_report

STATIC = Path(__file__).resolve().parent / "static"

router = APIRouter()


def _cache(request: Request) -> Any:
    principal_of(request).require_admin()
    cache = request.app.state.pipeline.cache
    if cache is None:
        raise InvalidRequestError("the response cache is off (RAG_CACHE_ENABLED=false)")
    return cache


@router.get("/v1/cache/stats")
async def cache_stats(request: Request) -> dict[str, Any]:
    """Entries, bytes on disk, and this worker's lookups by outcome."""
    return await asyncio.to_thread(_cache(request).stats)  # type: ignore[no-any-return]


def _require_known(request: Request, collection: str) -> None:
    """A collection this caller reads and that is ingested: a bad name is a 400, an unknown one a 404."""
    principal_of(request).require_collection(check_collection_name(collection))
    settings = request.app.state.settings
    if collection not in list_collections(settings.collections_dir):
        raise CollectionNotFoundError(collection, settings.data_dir)


@router.delete("/v1/cache")
async def cache_clear(request: Request, collection: str | None = None) -> dict[str, Any]:
    """Drop cached answers: all, or one collection's (`?collection=NAME`). Curated answers are
    put back (their records are the support store's). A name that is no collection is a 400 or
    a 404, not a clear of nothing."""
    cache = _cache(request)  # the admin check first: nothing is learnt or loaded without it
    if collection is not None:
        _require_known(request, collection)
    cleared = await asyncio.to_thread(cache.clear, collection)
    await sync_curated(request.app.state.pipeline, request.app.state.curated, collection)
    return {"cleared": cleared, "collection": collection}


@router.get("/v1/cache/blocks")
async def cache_blocks(request: Request, collection: str | None = None) -> dict[str, Any]:
    """Answers kept out of the cache by a thumbs-down (of a collection), newest first."""
    cache = _cache(request)
    return {"data": await asyncio.to_thread(cache.blocks.all, collection and check_collection_name(collection))}


@router.delete("/v1/cache/blocks/{block_id}")
async def cache_block_lift(block_id: str, request: Request) -> dict[str, Any]:
    """An admin approves the answer: it may be cached again."""
    cache = _cache(request)
    await asyncio.to_thread(request.app.state.support.lift_block, block_id)  # the copy first: never put back
    if not await asyncio.to_thread(cache.blocks.lift, block_id):
        raise NotFoundError(f"no block {block_id!r} - `GET /v1/cache/blocks` lists them", param="block_id")
    await asyncio.to_thread(cache.store.checkpoint)  # its question out of the write-ahead log
    return {"lifted": block_id}


@router.get("/v1/admin/report")
async def admin_report(request: Request, collection: str | None = None, days: int = 30) -> dict[str, Any]:
    """Per day: resolution, abstention and cache hit rates, p50/p95 latency; the unanswered
    questions grouped by meaning; the answers voted down (of a collection, or all a key reads)."""
    principal = principal_of(request)
    principal.require_admin()
    if collection is not None:
        _require_known(request, collection)
    if not 1 <= days <= 366:
        raise InvalidRequestError("days is 1 to 366", param="days")
    state = request.app.state
    since = time.time() - days * 86_400
    return await asyncio.to_thread(build_report, state.support, state.pipeline.embedder, collection, since)


# The page holds an admin key while it is open: it runs only its own script, talks only to this
# service, and no other site may frame it (clickjacking) or have its files read as another type.
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@router.get("/admin", include_in_schema=False)
async def admin_page() -> FileResponse:
    """The admin page (no data of its own: it asks the API with an admin key)."""
    return FileResponse(STATIC / "admin.html", media_type="text/html", headers=PAGE_HEADERS)


@router.get("/admin/admin.js", include_in_schema=False)
async def admin_script() -> FileResponse:
    return FileResponse(STATIC / "admin.js", media_type="text/javascript", headers=PAGE_HEADERS)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus metrics of every worker (admin key when keys are configured)."""
    principal_of(request).require_admin()
    observability.update_replicas(request.app.state.pipeline.generator)
    observability.update_index_versions(request.app.state.pipeline)
    observability.update_unwritten(request.app.state.support)
    observability.update_engines(await asyncio.to_thread(engine_states, request))
    payload, content_type = observability.metrics_payload()
    return Response(payload, media_type=content_type)

"""The admin routes: the response cache (`/v1/cache/stats`, `DELETE /v1/cache`, the answers a
thumbs-down keeps out: `/v1/cache/blocks`) and the
Prometheus metrics (`/metrics`); an admin key where keys are configured."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from rag.errors import InvalidRequestError, NotFoundError

from . import observability
from .curation import sync_curated
from .principals import principal_of

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
    return _cache(request).stats()  # type: ignore[no-any-return]


@router.delete("/v1/cache")
async def cache_clear(request: Request, collection: str | None = None) -> dict[str, Any]:
    """Drop cached answers: all, or one collection's (`?collection=NAME`). Curated answers are
    put back (their records are the support store's)."""
    cleared = _cache(request).clear(collection)
    await sync_curated(request.app.state.pipeline, request.app.state.curated, collection)
    return {"cleared": cleared, "collection": collection}


@router.get("/v1/cache/blocks")
async def cache_blocks(request: Request, collection: str | None = None) -> dict[str, Any]:
    """Answers kept out of the cache by a thumbs-down (of a collection), newest first."""
    cache = _cache(request)
    return {"data": await asyncio.to_thread(cache.blocks.all, collection)}


@router.delete("/v1/cache/blocks/{block_id}")
async def cache_block_lift(block_id: str, request: Request) -> dict[str, Any]:
    """An admin approves the answer: it may be cached again."""
    if not await asyncio.to_thread(_cache(request).blocks.lift, block_id):
        raise NotFoundError(f"no block {block_id!r} - `GET /v1/cache/blocks` lists them", param="block_id")
    return {"lifted": block_id}


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus metrics of every worker (admin key when keys are configured)."""
    principal_of(request).require_admin()
    observability.update_replicas(request.app.state.pipeline.generator)
    observability.update_index_versions(request.app.state.pipeline)
    payload, content_type = observability.metrics_payload()
    return Response(payload, media_type=content_type)

"""The health routes: `/healthz` (the process is up) and `/readyz` (every ingested
collection loads, and the backend answers). What every replica shares is reported, not
required: without Redis the cache answers as misses; without PostgreSQL keys found right in
the last minutes still work (cached answers serve, an unknown key, a new job get 503s);
without the vLLM servers cached answers serve; on a full disk answers come but are not kept.
Taking every replica out of its load balancer for a shared outage would leave no one to
serve what still works."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request

from rag.errors import AuthenticationError, BackendUnavailableError, RateLimitError
from rag.pipeline import Pipeline
from rag.store import list_collections, lost_collections

from .errors import ERRORS, error_response, rag_error_response

router = APIRouter()


@router.get("/healthz")
@router.head("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses=ERRORS)
@router.head("/readyz", include_in_schema=False)
async def readyz(request: Request) -> Any:
    """Ready to answer: every collection that has been ingested loads, and the backend is up
    (a shared model server that is down, vLLM's, is reported in ``backend_state`` instead: the
    cached answers still serve, so the replica stays in its load balancer).

    Each collection is reported with its index version and size (or why it does not load);
    with API keys configured, only an admin key sees them: others see counts, not names."""
    settings = request.app.state.settings
    pipe: Pipeline = request.app.state.pipeline
    names = sorted({*list_collections(settings.collections_dir), *lost_collections(settings.collections_dir)})
    if not names:
        return error_response(
            503,
            f"not ready: no collection has been ingested under {settings.data_dir} "
            "- run `rag ingest PATH --collection NAME` first",
            "service_unavailable",
            None,
            "not_ready",
            counted=False,  # a probe's answer, not a customer's error
        )
    collections: dict[str, dict[str, Any]] = {}
    for name in names:
        try:
            index = await pipe.index_for(name)
        except Exception as exc:  # not ready is an answer here, not a failure
            collections[name] = {"status": "error", "message": str(getattr(exc, "message", exc))}
        else:
            collections[name] = {
                "status": "ready",
                "version": index.version_dir.name,  # the folder, as `rag collections` names it
                "index_version": index.version,  # its content's fingerprint, as the metrics name it
                "chunks": len(index),
            }
            if name in pipe.swap_errors:  # still serving the version before, which is ready
                version, why = pipe.swap_errors[name]
                collections[name]["newer_version_error"] = f"{version.name}: {why}"
    broken = {n: c["message"] for n, c in collections.items() if c["status"] != "ready"}
    public = await _stranger(request)  # public route: no collection names to strangers
    if broken:
        detail = "; ".join(f"{n}: {m}" for n, m in broken.items()) if not public else f"{len(broken)} collection(s)"
        return error_response(503, f"not ready: {detail}", "service_unavailable", None, "not_ready", counted=False)
    engines = await asyncio.to_thread(engine_states, request)
    if public:  # strangers learn that an engine is away, not where it lives
        engines = {name: state.split(" (")[0] for name, state in engines.items()}
    ready = getattr(pipe.generator, "ready", None)
    backend_down = ready is not None and not await ready()
    # This process's own model, or nothing cached to serve meanwhile: not ready.
    if backend_down and (not getattr(pipe.generator, "shared", False) or pipe.cache is None):
        error = BackendUnavailableError(
            f"backend {pipe.generator.name} is not ready - check that its model server is up"
        )
        return rag_error_response(error, counted=False)
    body: dict[str, Any] = {
        "status": "ready",
        "backend": pipe.generator.name,
        "chunks": sum(c["chunks"] for c in collections.values()),
    }
    if backend_down:
        # A model server every replica shares (vLLM): its outage is no reason to take this
        # replica out of a load balancer, which would leave no one to serve the cached answers.
        body["backend_state"] = "unreachable: cached answers still serve, new questions get 503 - check `vllm serve`"
    if engines:
        body["engines"] = engines
    storage = storage_state(request)
    if storage:  # still ready: questions are answered, only not kept
        what, fix = storage
        body["storage_state"] = what if public else f"{what} - {fix}"  # strangers: not where it lives
    if public:
        body["collection_count"] = len(collections)
    else:
        body["collections"] = collections
        body["default_collection"] = settings.collection if settings.collection in collections else None
    return body


async def _stranger(request: Request) -> bool:
    """Whether the caller may not see names and versions: keys are configured and it sent no
    admin key (an operator's probe sends one, and then sees every collection's state)."""
    authenticator = request.app.state.authenticator
    header = request.headers.get("authorization")
    try:
        if not await authenticator.enabled_async():
            return False
    except BackendUnavailableError:  # the key store is away: the public view, still an answer
        return True
    if not header:
        return True
    limits, address = request.app.state.limits, request.client.host if request.client else "unknown"
    try:  # as on every other route: past RAG_AUTH_FAILURE_LIMIT, no lookups, only a key known right
        await limits.refuse_guessing(address)
    except RateLimitError:
        known = authenticator.known(header)
        return known is None or not known.admin
    try:
        principal = await authenticator.authenticate_async(header)
    except BackendUnavailableError:  # a key it cannot check now (PostgreSQL away): the public view
        return True
    except AuthenticationError:  # counts towards RAG_AUTH_FAILURE_LIMIT
        await limits.count_failure(address)
        return True
    request.scope.setdefault("state", {})["principal"] = principal  # the access log names the caller
    return not principal.admin


def engine_states(request: Request) -> dict[str, str]:
    """Each engine the settings name: "ok", or why not."""
    settings = request.app.state.settings
    found: dict[str, str] = {}
    if request.app.state.database is not None:
        try:
            request.app.state.database.ping()
            found["database"] = "ok"
        except Exception as exc:
            found["database"] = f"unreachable ({getattr(exc, 'message', exc)})"
    if settings.redis_url:
        import redis

        client = redis.Redis.from_url(settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            client.ping()
            found["redis"] = "ok"
        except redis.RedisError as exc:
            found["redis"] = f"unreachable, answering as cache misses ({exc})"
        finally:
            client.close()
    return found


def storage_state(request: Request) -> tuple[str, str] | None:
    """Why answers are not being kept now, and what to do (None: they are): the answer log's
    writes failing (a full disk, a read-only data dir, PostgreSQL away: the answers wait in
    memory), the response cache's (answers still come, uncached)."""
    settings, now = request.app.state.settings, time.monotonic()
    support, cache = request.app.state.support, request.app.state.pipeline.cache
    local = f"free disk space under {settings.data_dir}, or make it writable"
    problems, fixes = [], []
    if support.failing_since is not None:
        held = support.unwritten()
        problems.append(
            f"the answer log not written for {now - support.failing_since:.0f} s ({held} answer{'s' * (held != 1)} held in memory)"
        )
        fixes.append("check the database" if request.app.state.database is not None else local)
    if cache is not None and cache.failing_since is not None:
        problems.append(f"new answers not cached for {now - cache.failing_since:.0f} s")
        fixes.append("check Redis" if settings.redis_url else local)
    return ("; ".join(problems), " and ".join(dict.fromkeys(fixes))) if problems else None

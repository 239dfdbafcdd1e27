"""Authentication and per-key limits, before any route runs: the middleware.

``rag keys create --collections a,b [--admin]`` prints a key once; only its SHA-256 is kept
(in ``RAG_DATA_DIR/keys.sqlite``). Keys are 256-bit random tokens, so a fast hash is enough:
there is nothing to brute-force. A key is ``rk_<id>_<secret>``: the id finds its row, the
hash of the whole key must match it (compared in constant time).

With at least one active key, every route but health and the widget script needs
``Authorization: Bearer <key>``; a key reaches only its collections, and admin routes
(cache stats and clear, metrics, other keys' jobs) need an admin key. With no key, the
service is for this machine only: ``rag serve`` binds to 127.0.0.1 and says so.

Limits per key (``RAG_RATE_LIMIT`` requests per window, shared by worker processes through
``RAG_RATE_LIMIT_STORAGE``; ``RAG_MAX_CONCURRENT_PER_KEY`` requests in flight per process)
answer 429 with ``Retry-After``. The anonymous caller of a keyless, loopback-only service has
no limits.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from starlette.exceptions import HTTPException

from rag.errors import (
    AuthenticationError,
    InvalidRequestError,
    RagError,
    RateLimitError,
    RequestTooLargeError,
)
from rag.settings import Settings

from .asgi import ASGIApp, Message, Receive, Scope, Send, send_error
from .keys import KeyStoreLike
from .principals import ANONYMOUS, Principal

log = logging.getLogger("rag.serving")
# Reachable without a key: liveness/readiness probes, the widget script, the API schema.
# A refused body up to this many times RAG_MAX_BODY_BYTES is read and dropped before the 413.
DRAIN_FACTOR = 8
PUBLIC_PATHS = frozenset(
    {
        "/healthz",
        "/readyz",
        "/widget.js",
        "/admin",
        "/admin/admin.js",
        "/docs",
        "/docs/oauth2-redirect",
        "/openapi.json",
    }
)  # the admin page holds no data: it asks the API with the admin key its user enters


class Authenticator:
    """Bearer key -> Principal, with a few seconds of memory so a request costs no query;
    a revoked key stops working within ``ttl_s`` (on every replica, with keys in PostgreSQL).

    With no key ever created, requests are anonymous (`rag serve` then listens on loopback
    only). Once a key has been created, keys stay required, revoked ones counted (on every
    replica and after a restart): revoking the last one locks the service, never opens it, and
    a key store that reads as empty later does not open this process either."""

    def __init__(self, store: KeyStoreLike, ttl_s: float = 0.5) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._enabled: tuple[float, bool] = (0.0, False)
        self._ever_enabled = False
        self._known: dict[str, tuple[float, Principal | None]] = {}

    async def refresh(self, authorization: str | None) -> None:
        """Bring what :meth:`authenticate` needs up to date, in a thread when it needs the key
        store (PostgreSQL may be slow or away: the event loop never waits on it)."""
        now = time.monotonic()
        stale = now - self._enabled[0] > self.ttl_s
        if not stale and self._enabled[1]:
            cached = self._known.get(_token(authorization))
            stale = cached is None or now - cached[0] > self.ttl_s
        if stale:
            await asyncio.to_thread(self._lookup_now, authorization)

    def _lookup_now(self, authorization: str | None) -> None:
        try:
            self.authenticate(authorization)
        except AuthenticationError:
            pass  # remembered; the request's own call raises it

    def enabled(self) -> bool:
        checked, enabled = self._enabled
        now = time.monotonic()
        if now - checked > self.ttl_s:
            enabled = self._ever_enabled = self._ever_enabled or self.store.created() > 0
            self._enabled = (now, enabled)
        return enabled

    def authenticate(self, authorization: str | None) -> Principal:
        if not self.enabled():
            return ANONYMOUS
        token = _token(authorization)
        if not token:
            raise AuthenticationError(
                "this service needs an API key: send `Authorization: Bearer <key>` (create one with `rag keys create`)"
            )
        now = time.monotonic()
        cached = self._known.get(token)
        if cached is None or now - cached[0] > self.ttl_s:
            if len(self._known) > 10_000:
                self._known.clear()
            cached = (now, self.store.lookup(token))
            self._known[token] = cached
        if cached[1] is None:
            raise AuthenticationError("API key not recognised (mistyped or revoked) - check the key you send")
        return cached[1]


def _token(authorization: str | None) -> str:
    """The key of an ``Authorization: Bearer <key>`` header ("" for anything else)."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _storage_options(uri: str) -> dict[str, float | str | bool]:
    """Redis through redis-py (a dependency already), with short timeouts: a Redis that is
    away must cost a request little time."""
    if "redis" not in uri:
        return {}
    return {"implementation": "redispy", "socket_timeout": 0.5, "socket_connect_timeout": 0.5}


class KeyLimits:
    """Requests per window (``limits``' moving window; shared storage for several workers)
    and requests in flight, per key."""

    def __init__(self, settings: Settings) -> None:
        from limits import parse
        from limits.aio.strategies import MovingWindowRateLimiter
        from limits.storage import storage_from_string

        uri = settings.limits_storage
        self.rate = parse(settings.rate_limit) if settings.rate_limit else None
        self.failures = parse(settings.auth_failure_limit) if settings.auth_failure_limit else None
        # The event loop must not wait on Redis: the asyncio flavour of the same storage.
        self._limiter = MovingWindowRateLimiter(
            storage_from_string(uri if uri.startswith("async+") else f"async+{uri}", **_storage_options(uri))
        )
        self.max_concurrent = settings.max_concurrent_per_key
        self._in_flight: dict[str, int] = {}
        self._store_down_until = 0.0

    async def _over(self, limit: Any, *keys: str, hit: bool = True) -> int | None:
        """Seconds to wait when ``keys`` are over ``limit`` (counting this request when
        ``hit``), else None. A limits store that is away (Redis down) limits nothing: for a
        second after a failure it is not asked, and the request goes on."""
        if time.monotonic() < self._store_down_until:
            return None
        try:
            allowed = await (self._limiter.hit if hit else self._limiter.test)(limit, *keys)
            if allowed:
                return None
            stats = await self._limiter.get_window_stats(limit, *keys)
        except Exception as exc:
            self._store_down_until = time.monotonic() + 1.0
            log.warning("rate limits unavailable (%s), not limiting for a second", exc)
            return None
        return max(1, math.ceil(stats.reset_time - time.time()))

    async def admit(self, principal: Principal) -> None:
        if principal.key_id is None:
            return
        if self.rate is not None and (wait := await self._over(self.rate, principal.key_id)) is not None:
            raise RateLimitError(f"rate limit of {self.rate} reached for this API key - retry in {wait} s", wait)
        if self._in_flight.get(principal.key_id, 0) >= self.max_concurrent:
            raise RateLimitError(
                f"{self.max_concurrent} requests already in flight for this API key - wait for one to finish",
                1,
                code="too_many_concurrent_requests",
            )
        self._in_flight[principal.key_id] = self._in_flight.get(principal.key_id, 0) + 1

    async def refuse_guessing(self, address: str) -> None:
        """429 for a client address past RAG_AUTH_FAILURE_LIMIT wrong keys (shared across
        replicas through Redis): checked before its key is, so guessing gets nowhere."""
        if self.failures is not None and (wait := await self._over(self.failures, "auth-failures", address, hit=False)):
            raise RateLimitError(
                f"too many failed authentications from this address - retry in {wait} s", wait, code="too_many_failures"
            )

    async def count_failure(self, address: str) -> None:
        if self.failures is not None:
            await self._over(self.failures, "auth-failures", address)

    async def aclose(self) -> None:
        """Close the limits store's connections (the asyncio Redis client: it belongs to the
        event loop that is ending). ``limits`` has no close of its own, so this reaches in."""
        client = getattr(getattr(self._limiter.storage, "bridge", None), "storage", None)
        close = getattr(client, "aclose", None)
        if close is not None:
            await close()

    def release(self, principal: Principal) -> None:
        if principal.key_id is not None:
            left = self._in_flight.get(principal.key_id, 1) - 1
            if left > 0:
                self._in_flight[principal.key_id] = left
            else:
                self._in_flight.pop(principal.key_id, None)


class GuardMiddleware:
    """Body size limit, authentication and per-key limits, before any route runs.

    Pure ASGI, so a streamed answer holds its in-flight slot until its last byte.
    """

    def __init__(self, app: ASGIApp, settings: Settings, authenticator: Authenticator, limits: KeyLimits) -> None:
        self.app = app
        self.max_body = settings.max_body_bytes
        self._drain_bound = DRAIN_FACTOR * settings.max_body_bytes
        self.auth = authenticator
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            # A client that waits for "100 Continue" has sent nothing yet; a huge one is refused unread.
            if headers.get("expect", "").lower() != "100-continue" and int(declared) <= self._drain_bound:
                await self._drain(receive, 0)
            await send_error(send, self._too_large(), {"Connection": "close"})
            return
        if "\x00" in scope["path"] or b"%00" in scope.get("query_string", b""):  # bodies: schemas.RequestBody
            await send_error(send, InvalidRequestError("the URL must not contain NUL (%00) characters - remove them"))
            return
        principal = ANONYMOUS
        if scope["path"] not in PUBLIC_PATHS and scope["method"] != "OPTIONS":
            address = (scope.get("client") or ("unknown",))[0]
            try:
                await self.auth.refresh(headers.get("authorization"))
                if self.auth.enabled():
                    await self.limits.refuse_guessing(address)
                principal = self.auth.authenticate(headers.get("authorization"))
                await self.limits.admit(principal)
            except AuthenticationError as exc:
                await self.limits.count_failure(address)
                await send_error(send, exc, {"WWW-Authenticate": "Bearer"})
                return
            except RateLimitError as exc:
                await send_error(send, exc, {"Retry-After": str(exc.retry_after_s)})
                return
            except RagError as exc:  # the key store is away (PostgreSQL down): a 503
                await send_error(send, exc)
                return
        scope.setdefault("state", {})["principal"] = principal
        try:
            await self.app(scope, self._bounded(receive, send), send)
        finally:
            self.limits.release(principal)

    def _too_large(self) -> RagError:
        return RequestTooLargeError(
            f"request body is over {self.max_body} bytes - send less (or raise RAG_MAX_BODY_BYTES)"
        )

    async def _drain(self, receive: Receive, seen: int) -> None:
        """Read and drop the rest of a refused body (``seen`` bytes of it read so far).

        Closing a socket with unread data in it makes the kernel send a reset, which can
        destroy the 413 on its way, so the client sees a broken connection instead of the
        error (the fuzzer caught this one). Past the bound the rest is left unread.
        """
        message: Message = {"more_body": True}
        while message.get("more_body", False) and seen <= self._drain_bound:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))

    def _bounded(self, receive: Receive, send: Send) -> Receive:
        """A body without Content-Length (chunked) is counted as it arrives."""
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:  # FastAPI passes an HTTPException through as it is
                    if message.get("more_body", False):
                        await self._drain(receive, seen)
                    raise HTTPException(413, self._too_large().message)
            return message

        return bounded

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
answer 429 with ``Retry-After``. A public key (``--public``: the widget's, in a web page that
anyone can read) is also limited per visitor (client address: ``RAG_VISITOR_RATE_LIMIT``,
``RAG_MAX_CONCURRENT_PER_VISITOR``), so one visitor cannot spend every customer's budget. A
request takes its in-flight slot only once its whole body is in (``RAG_BODY_TIMEOUT_S``, then
408): a client that opens requests and sends their bodies slowly holds no slot. The anonymous
caller of a keyless, loopback-only service has no limits.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
from typing import Any

from starlette.exceptions import HTTPException

from rag.errors import (
    AuthenticationError,
    BackendUnavailableError,
    InvalidRequestError,
    RagError,
    RateLimitError,
    RequestTimeoutError,
    RequestTooLargeError,
)
from rag.settings import Settings

from .asgi import ASGIApp, Message, Receive, Scope, Send, send_error
from .keys import KeyStoreLike
from .principals import ANONYMOUS, Principal

log = logging.getLogger("rag.serving")
# Reachable without a key: liveness/readiness probes, the widget script, the API schema and
# its page (/docs, and Swagger UI's script and style under DOCS_STATIC).
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
DOCS_STATIC = "/docs/static"


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(DOCS_STATIC + "/")


STALE_KEY_S = 300.0  # how long a key found right still works while the key store is unreachable


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

    async def authenticate_async(self, authorization: str | None) -> Principal:
        """:meth:`authenticate`, in a thread when it needs the key store (PostgreSQL may be
        slow or away: the event loop never waits on it, however long the lookup takes)."""
        now = time.monotonic()
        stale = now - self._enabled[0] > self.ttl_s
        if not stale and self._enabled[1]:
            cached = self._known.get(_token(authorization))
            stale = cached is None or now - cached[0] > self.ttl_s
        if stale:
            return await asyncio.to_thread(self.authenticate, authorization)
        return self.authenticate(authorization)

    async def enabled_async(self) -> bool:
        """:meth:`enabled`, in a worker thread when it needs the key store."""
        if time.monotonic() - self._enabled[0] > self.ttl_s:
            return await asyncio.to_thread(self.enabled)
        return self.enabled()

    def enabled(self) -> bool:
        checked, enabled = self._enabled
        now = time.monotonic()
        if now - checked > self.ttl_s:
            # Once keys were needed they stay needed: the store is not asked again (nor, while it
            # is away, is its absence taken for "no keys").
            enabled = self._ever_enabled = self._ever_enabled or self.store.created() > 0
            self._enabled = (time.monotonic(), enabled)  # from the answer: a slow store is not stale at once
        return enabled

    def known(self, authorization: str | None) -> Principal | None:
        """The caller of a key this process found right in the last 10 s (a busy widget key always
        is), without a lookup; a key revoked meanwhile works that long more from such an address."""
        cached = self._known.get(_token(authorization))
        if cached is None or cached[1] is None or time.monotonic() - cached[0] > 10.0:
            return None
        return cached[1]

    def authenticate(self, authorization: str | None) -> Principal:
        if not self.enabled():
            return ANONYMOUS
        token = _token(authorization)
        if not token:
            raise AuthenticationError(
                "this service needs an API key: send `Authorization: Bearer <key>` (create one with `rag keys create --collections NAME`, or `--admin`)"
            )
        now = time.monotonic()
        cached = self._known.get(token)
        if cached is None or now - cached[0] > self.ttl_s:
            if len(self._known) > 10_000:
                self._known.clear()
            try:
                cached = (now, self.store.lookup(token))
            except BackendUnavailableError:
                # The key store (PostgreSQL) is away: a key found right in the last few minutes
                # still works, so that the cached answers serve; an unknown one gets the 503.
                if cached is not None and cached[1] is not None and now - cached[0] <= STALE_KEY_S:
                    return cached[1]
                raise
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
        self.visitor_rate = parse(settings.visitor_rate_limit) if settings.visitor_rate_limit else None
        self.failures = parse(settings.auth_failure_limit) if settings.auth_failure_limit else None
        # The event loop must not wait on Redis: the asyncio flavour of the same storage.
        self._limiter = MovingWindowRateLimiter(
            storage_from_string(uri if uri.startswith("async+") else f"async+{uri}", **_storage_options(uri))
        )
        self.max_concurrent = settings.max_concurrent_per_key
        self.max_per_visitor = settings.max_concurrent_per_visitor
        self._in_flight: dict[str, int] = {}  # by key id, and by "key id|address" for public keys
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

    async def charge(self, principal: Principal, address: str) -> None:
        """Count the request against its key's rate limit (and its visitor's, for a public key),
        before its body is read; 429 past either."""
        key = principal.key_id
        if key is None:
            return
        if principal.public and self.visitor_rate is not None:
            if (wait := await self._over(self.visitor_rate, "visitor", visitor_of(key, address))) is not None:
                raise RateLimitError(
                    f"rate limit of {self.visitor_rate} reached for this visitor - retry in {wait} s", wait
                )
        if self.rate is not None and (wait := await self._over(self.rate, key)) is not None:
            raise RateLimitError(f"rate limit of {self.rate} reached for this API key - retry in {wait} s", wait)

    def occupy(self, principal: Principal, address: str, stage: str = "run") -> list[str]:
        """Take the request's slots of ``stage`` or raise 429; returns them, for :meth:`release`.
        ``upload``: a body being read (its own, looser bound per key: a slow client cannot take
        the slots that answer questions; per visitor the same bound as ``run``); ``run``: in flight."""
        key = principal.key_id
        if key is None:
            return []
        per_key = self.max_concurrent * (UPLOADS_PER_SLOT if stage == "upload" else 1)
        slots = [(f"{stage}|{key}", per_key, "this API key")]
        if principal.public:
            slots.append((f"{stage}|{visitor_of(key, address)}", self.max_per_visitor, "this visitor"))
        for slot, most, whose in slots:
            if self._in_flight.get(slot, 0) >= most:
                doing = "requests already in flight" if stage == "run" else "request bodies still arriving"
                raise RateLimitError(
                    f"{most} {doing} for {whose} - wait for one to finish", 1, code="too_many_concurrent_requests"
                )
        for slot, _, _ in slots:
            self._in_flight[slot] = self._in_flight.get(slot, 0) + 1
        return [slot for slot, _, _ in slots]

    async def refuse_guessing(self, address: str) -> None:
        """429 for a client address past RAG_AUTH_FAILURE_LIMIT wrong keys (shared across
        replicas through Redis): it slows a client trying keys and spares the key store their
        lookups (the keys' 256 random bits are what make guessing hopeless)."""
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

    def release(self, slots: list[str]) -> None:
        for slot in slots:
            left = self._in_flight.get(slot, 1) - 1
            if left > 0:
                self._in_flight[slot] = left
            else:
                self._in_flight.pop(slot, None)


UPLOADS_PER_SLOT = 4
"""Request bodies that may be arriving at once per key, per in-flight slot: the memory held is
bounded (each up to RAG_MAX_BODY_BYTES), and slow uploads do not take the slots that answer."""


def visitor_of(key: str, address: str) -> str:
    """Who a public key's request comes from: its client address (an IPv6 client by its /64,
    which one subscriber holds whole, so changing address within it is still one visitor)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"{key}|{address}"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"{key}|{ip.ipv4_mapped}"
        return f"{key}|{ipaddress.ip_network(f'{address}/64', strict=False)}"
    return f"{key}|{ip}"


class GuardMiddleware:
    """Body size limit, authentication and per-key limits, before any route runs.

    Pure ASGI, so a streamed answer holds its in-flight slot until its last byte.
    """

    def __init__(self, app: ASGIApp, settings: Settings, authenticator: Authenticator, limits: KeyLimits) -> None:
        self.app = app
        self.max_body = settings.max_body_bytes
        self.body_timeout_s = settings.body_timeout_s
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
        if is_public(scope["path"]) or scope["method"] == "OPTIONS":
            # No key, no buffering: the route reads what it needs (most read nothing), bounded.
            scope.setdefault("state", {})["principal"] = ANONYMOUS
            await self.app(scope, self._bounded(receive), send)
            return
        address = (scope.get("client") or ("unknown",))[0]
        try:
            principal = await self._authenticate(headers.get("authorization"), address)
            await self.limits.charge(principal, address)
            uploading = self.limits.occupy(principal, address, "upload")
        except AuthenticationError as exc:
            await send_error(send, exc, {"WWW-Authenticate": "Bearer"})
            return
        except RateLimitError as exc:
            await send_error(send, exc, {"Retry-After": str(exc.retry_after_s)})
            return
        except RagError as exc:  # the key store is away (PostgreSQL down): a 503, and when to try again
            retry = getattr(exc, "retry_after_s", None)
            await send_error(send, exc, {"Retry-After": str(retry)} if retry is not None else None)
            return
        # The whole body before an in-flight slot: a client that sends it slowly (or never)
        # holds none of the slots that answer questions.
        try:
            body = await asyncio.wait_for(self._read_body(receive), self.body_timeout_s)
        except TimeoutError:
            error = RequestTimeoutError(
                f"the request body did not arrive within {self.body_timeout_s:g} s - send it at once "
                "(or raise RAG_BODY_TIMEOUT_S)"
            )
            await send_error(send, error, {"Connection": "close"})
            return
        except RequestTooLargeError as exc:
            await send_error(send, exc, {"Connection": "close"})
            return
        finally:
            self.limits.release(uploading)
        if body is None:  # the client went away
            return
        try:
            slots = self.limits.occupy(principal, address)
        except RateLimitError as exc:
            await send_error(send, exc, {"Retry-After": str(exc.retry_after_s)})
            return
        scope.setdefault("state", {})["principal"] = principal
        try:
            await self.app(scope, self._replay(body, receive), send)
        finally:
            self.limits.release(slots)

    async def _authenticate(self, authorization: str | None, address: str) -> Principal:
        """The caller; a wrong key counts towards its address's failure limit (past it, 429).
        A key this process already knows to be right is let in even from an address past that
        limit: a shared address (an office, a mobile carrier's NAT) must not lock out every
        customer behind it because of one bad client. Past the limit nothing else is looked up."""
        if await self.auth.enabled_async():
            try:
                await self.limits.refuse_guessing(address)
            except RateLimitError:  # past the limit: only a key already known right, no lookups
                known = self.auth.known(authorization)
                if known is None:
                    raise
                return known
        try:
            return await self.auth.authenticate_async(authorization)
        except AuthenticationError:
            await self.limits.count_failure(address)
            raise

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

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body (counted as it arrives, by :meth:`_bounded`: past RAG_MAX_BODY_BYTES, a
        413), or None when the client went away."""
        bounded, parts = self._bounded(receive), []
        while True:
            try:
                message = await bounded()
            except HTTPException:
                raise self._too_large() from None
            if message["type"] != "http.request":
                return None
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(parts)

    def _bounded(self, receive: Receive) -> Receive:
        """``receive`` with the body counted as it arrives (past RAG_MAX_BODY_BYTES, a 413): what a
        route that needs no key reads through, and what :meth:`_read_body` reads with."""
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

    @staticmethod
    def _replay(body: bytes, receive: Receive) -> Receive:
        """The body read, then the client's own messages (a disconnect)."""
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

"""API keys and per-key limits.

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

import hashlib
import hmac
import json
import math
import secrets
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.exceptions import HTTPException

from rag.errors import (
    AuthenticationError,
    InvalidRequestError,
    PermissionDeniedError,
    RagError,
    RateLimitError,
    RequestTooLargeError,
)
from rag.settings import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

KEYS_FILE = "keys.sqlite"
ALL = "*"
# Reachable without a key: liveness/readiness probes, the widget script, the API schema.
# A refused body up to this many times RAG_MAX_BODY_BYTES is read and dropped before the 413.
DRAIN_FACTOR = 8
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/widget.js", "/docs", "/docs/oauth2-redirect", "/openapi.json"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY, name TEXT, hash TEXT NOT NULL, collections TEXT NOT NULL,
    admin INTEGER NOT NULL, created_at REAL NOT NULL, revoked_at REAL
);
"""


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key (its id, collections, admin flag) or the anonymous local user."""

    key_id: str | None
    collections: frozenset[str] | None  # None: every collection
    admin: bool

    @property
    def label(self) -> str:
        return self.key_id or "anonymous"

    def can_read(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections

    def require_collection(self, collection: str) -> None:
        if not self.can_read(collection):
            raise PermissionDeniedError(
                f"this API key cannot read collection {collection!r} - use a key created with "
                f"`rag keys create --collections {collection}`",
                param="collection",
            )

    def require_admin(self) -> None:
        if not self.admin:
            raise PermissionDeniedError("this route needs an admin key (`rag keys create --admin`)")


ANONYMOUS = Principal(None, None, True)


@dataclass(frozen=True)
class KeyInfo:
    id: str
    name: str | None
    collections: list[str]
    admin: bool
    created_at: float
    revoked_at: float | None


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """API keys in SQLite: shared by every worker process and by the `rag keys` command."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / KEYS_FILE
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _conn(self, create: bool = False) -> sqlite3.Connection | None:
        if self._db is None:
            if not self.path.exists() and not create:
                return None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    def create(self, collections: list[str], admin: bool = False, name: str | None = None) -> tuple[str, KeyInfo]:
        """A new key: returns it (shown once, never stored) and its record."""
        if not collections and not admin:
            raise InvalidRequestError("a key needs --collections (names, or '*' for all) or --admin")
        key_id = secrets.token_hex(4)
        key = f"rk_{key_id}_{secrets.token_urlsafe(32)}"
        stored = [ALL] if admin or ALL in collections else sorted(set(collections))
        info = KeyInfo(key_id, name, stored, admin, time.time(), None)
        db = self._conn(create=True)
        assert db is not None
        with self._lock:
            db.execute(
                "INSERT INTO keys (id, name, hash, collections, admin, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (key_id, name, _digest(key), json.dumps(stored), int(admin), info.created_at),
            )
        return key, info

    def revoke(self, key_id: str) -> bool:
        db = self._conn()
        if db is None:
            return False
        with self._lock:
            cur = db.execute(
                "UPDATE keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (time.time(), key_id)
            )
        return cur.rowcount > 0

    def list(self) -> list[KeyInfo]:
        db = self._conn()
        if db is None:
            return []
        rows = db.execute("SELECT id, name, collections, admin, created_at, revoked_at FROM keys ORDER BY created_at")
        return [KeyInfo(r[0], r[1], json.loads(r[2]), bool(r[3]), r[4], r[5]) for r in rows]

    def active(self) -> int:
        db = self._conn()
        if db is None:
            return 0
        return int(db.execute("SELECT COUNT(*) FROM keys WHERE revoked_at IS NULL").fetchone()[0])

    def lookup(self, key: str) -> Principal | None:
        parts = key.split("_", 2)
        db = self._conn()
        if db is None or len(parts) != 3 or parts[0] != "rk":
            return None
        row = db.execute(
            "SELECT hash, collections, admin FROM keys WHERE id = ? AND revoked_at IS NULL", (parts[1],)
        ).fetchone()
        if row is None or not hmac.compare_digest(row[0], _digest(key)):
            return None
        collections = json.loads(row[1])
        return Principal(parts[1], None if ALL in collections else frozenset(collections), bool(row[2]))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class Authenticator:
    """Bearer key -> Principal, with a few seconds of memory so a request costs no query;
    a revoked key stops working within ``ttl_s``."""

    def __init__(self, store: KeyStore, ttl_s: float = 2.0) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._enabled: tuple[float, bool] = (0.0, False)
        self._known: dict[str, tuple[float, Principal | None]] = {}

    def enabled(self) -> bool:
        checked, enabled = self._enabled
        now = time.monotonic()
        if now - checked > self.ttl_s:
            enabled = self.store.active() > 0
            self._enabled = (now, enabled)
        return enabled

    def authenticate(self, authorization: str | None) -> Principal:
        if not self.enabled():
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
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


class KeyLimits:
    """Requests per window (``limits``' moving window; shared storage for several workers)
    and requests in flight, per key."""

    def __init__(self, settings: Settings) -> None:
        from limits import parse
        from limits.aio.strategies import MovingWindowRateLimiter
        from limits.storage import storage_from_string

        uri = settings.rate_limit_storage
        self.rate = parse(settings.rate_limit) if settings.rate_limit else None
        # The event loop must not wait on Redis: the asyncio flavour of the same storage.
        self._limiter = MovingWindowRateLimiter(
            storage_from_string(uri if uri.startswith("async+") else f"async+{uri}")
        )
        self.max_concurrent = settings.max_concurrent_per_key
        self._in_flight: dict[str, int] = {}

    async def admit(self, principal: Principal) -> None:
        if principal.key_id is None:
            return
        if self.rate is not None and not await self._limiter.hit(self.rate, principal.key_id):
            stats = await self._limiter.get_window_stats(self.rate, principal.key_id)
            wait = max(1, math.ceil(stats.reset_time - time.time()))
            raise RateLimitError(f"rate limit of {self.rate} reached for this API key - retry in {wait} s", wait)
        if self._in_flight.get(principal.key_id, 0) >= self.max_concurrent:
            raise RateLimitError(
                f"{self.max_concurrent} requests already in flight for this API key - wait for one to finish",
                1,
                code="too_many_concurrent_requests",
            )
        self._in_flight[principal.key_id] = self._in_flight.get(principal.key_id, 0) + 1

    def release(self, principal: Principal) -> None:
        if principal.key_id is not None:
            left = self._in_flight.get(principal.key_id, 1) - 1
            if left > 0:
                self._in_flight[principal.key_id] = left
            else:
                self._in_flight.pop(principal.key_id, None)


def principal_of(request: Any) -> Principal:
    """The caller of a request that went through GuardMiddleware."""
    return getattr(request.state, "principal", ANONYMOUS)


async def send_error(send: Send, exc: RagError, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(exc.body()).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": exc.status_code, "headers": raw})
    await send({"type": "http.response.body", "body": body})


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
        principal = ANONYMOUS
        if scope["path"] not in PUBLIC_PATHS and scope["method"] != "OPTIONS":
            try:
                principal = self.auth.authenticate(headers.get("authorization"))
                await self.limits.admit(principal)
            except AuthenticationError as exc:
                await send_error(send, exc, {"WWW-Authenticate": "Bearer"})
                return
            except RateLimitError as exc:
                await send_error(send, exc, {"Retry-After": str(exc.retry_after_s)})
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

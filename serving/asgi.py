"""The ASGI types the pure-ASGI middleware is written against, and how it answers an error
before any route runs (the one error body, ``rag.errors.error_body``)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from rag.errors import RagError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def send_error(send: Send, exc: RagError, headers: dict[str, str] | None = None) -> None:
    from .observability import ERRORS_SENT  # observability imports this module

    ERRORS_SENT.labels(str(exc.status_code), exc.code or exc.type).inc()
    body = json.dumps(exc.body()).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": exc.status_code, "headers": raw})
    await send({"type": "http.response.body", "body": body})

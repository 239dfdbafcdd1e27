"""A small typed client for a running rag-service: ``RagClient`` (sync) and
``AsyncRagClient``.

>>> client = RagClient("http://127.0.0.1:8000")                          # doctest: +SKIP
>>> answer = client.query("How long do refunds take?")
>>> answer.answer, [c.title for c in answer.citations], answer.cache.hit
>>> for event in client.stream("Do gift cards expire?"):
...     print(event.text if event.kind == "token" else event.answer)

Errors come back as ``RagClientError`` with the service's error body (status, type, param,
code, and ``retry_after`` from a 429 or 503); so does a service that cannot be reached
(``service_unreachable``), one that does not answer in time (``timeout``) and a stream cut
before its final event (``incomplete_stream``). Streaming reads the service's Server-Sent
Events with httpx-sse.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import SSEError, aconnect_sse, connect_sse

from .wire import CacheStatus, Citation

__all__ = ["AsyncRagClient", "CacheStatus", "Citation", "QueryResult", "RagClient", "RagClientError", "StreamEvent"]


@dataclass(frozen=True)
class QueryResult:
    answer: str
    citations: list[Citation]
    cache: CacheStatus
    timings_ms: dict[str, float | None]
    """Per stage; ``first_token`` is None when nothing was streamed."""
    collection: str
    backend: str
    answer_kind: str = "generated"
    """generated, quoted (sentences of the documents, verbatim), no_answer, curated or small_talk."""
    answer_id: str = ""
    """For :meth:`RagClient.feedback`."""
    needs_human: str | None = None
    """Why a person should take over (no_answer, guard_replaced), or None."""
    usage: dict[str, int] = field(default_factory=dict)
    """Tokens a model read and wrote (empty for a quote, a cache hit, a curated answer)."""
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> QueryResult:
        return cls(
            answer=body["answer"],
            citations=[Citation.from_dict(c) for c in body["citations"]],
            cache=CacheStatus(**body["cache"]),
            timings_ms=body.get("timings_ms", {}),
            collection=body.get("collection", ""),
            backend=body.get("backend", ""),
            answer_kind=body.get("answer_kind", "generated"),
            answer_id=body.get("answer_id", ""),
            needs_human=body.get("needs_human"),
            usage=body.get("usage") or {},
            raw=body,
        )


@dataclass(frozen=True)
class StreamEvent:
    kind: str  # "token" or "done"
    text: str = ""
    result: QueryResult | None = None

    @property
    def answer(self) -> str:
        return self.result.answer if self.result else self.text


class RagClientError(Exception):
    def __init__(self, status: int, body: dict[str, Any], retry_after: float | None = None) -> None:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        self.status = status
        self.body = body
        """The service's error body as it came (``{"error": {"message", "type", "param", "code"}}``)."""
        self.retry_after = retry_after
        """Seconds the service asked to wait (``Retry-After`` of a 429 or 503), if it said."""
        self.message = str(error.get("message", body))
        self.type = error.get("type")
        self.param = error.get("param")
        self.code = error.get("code")
        super().__init__(f"{status} {self.type}: {self.message}")


def _payload(question: str, **fields: Any) -> dict[str, Any]:
    return {"question": question, **{k: v for k, v in fields.items() if v is not None}}


def _feedback(
    answer_id: str, rating: str, reason: str | None, correction: str | None, conversation: list[dict[str, str]] | None
) -> dict[str, Any]:
    if rating not in ("up", "down"):
        raise ValueError(f"rating is 'up' or 'down', not {rating!r}")
    fields = {"reason": reason, "correction": correction, "conversation": conversation}
    return {"answer_id": answer_id, "rating": rating, **{k: v for k, v in fields.items() if v is not None}}


def _check(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = {"error": {"message": response.text}}
    if response.status_code >= 400:
        wait = response.headers.get("retry-after")
        raise RagClientError(response.status_code, body, float(wait) if wait and wait.isdigit() else None)
    return body  # type: ignore[no-any-return]


# The status an error event mid-stream would have had as a response (the stream's is 200).
_STATUS_OF_TYPE = {"invalid_request_error": 400, "service_unavailable": 503, "rate_limit_error": 429}


def _event(kind: str, data: str) -> StreamEvent:
    body = json.loads(data)
    if kind == "error":
        raise RagClientError(_STATUS_OF_TYPE.get(body["error"].get("type"), 500), body)
    if kind == "done":
        return StreamEvent("done", result=QueryResult.from_json(body))
    return StreamEvent("token", text=body["text"])


def _cut() -> RagClientError:
    body = {"message": "the stream ended before its final event - the connection was cut; ask again",
            "type": "server_error", "param": None, "code": "incomplete_stream"}  # fmt: skip
    return RagClientError(502, {"error": body})


def _error(status: int, code: str, message: str) -> RagClientError:
    return RagClientError(status, {"error": {"message": message, "type": "client_error", "param": None, "code": code}})


@contextmanager
def _transport(streaming: bool = False) -> Iterator[None]:
    """httpx's own failures as ``RagClientError``: what a caller catches is one exception."""
    try:
        yield
    except SSEError as exc:  # a 200 that is no event stream (a proxy's page): the service did not answer
        raise _error(502, "bad_response", f"the response is not an event stream ({exc})") from exc
    except httpx.TimeoutException as exc:
        raise _error(504, "timeout", f"no answer in time ({type(exc).__name__}) - ask again, or raise timeout") from exc
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:  # cut mid-answer (a reset is a ReadError)
        if not streaming:
            raise _error(502, "bad_response", f"the service's response was cut ({exc}) - ask again") from exc
        raise _cut() from exc
    except httpx.TransportError as exc:
        raise _error(503, "service_unreachable", f"cannot reach the service ({exc}) - is it running?") from exc
    except httpx.HTTPError as exc:  # a body it cannot decode, a redirect loop
        raise _error(502, "bad_response", f"{type(exc).__name__}: {exc}") from exc


TIMEOUT_S = 330.0  # past the service's own deadline for an answer (RAG_VLLM_TOTAL_TIMEOUT_S, 300 s)


class RagClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = TIMEOUT_S) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def query(
        self,
        question: str,
        collection: str | None = None,
        history: list[dict[str, str]] | None = None,
        top_k: int | None = None,
        filters: dict[str, Any] | None = None,
    ) -> QueryResult:
        body = _payload(question, collection=collection, history=history, top_k=top_k, filters=filters)
        with _transport():
            return QueryResult.from_json(_check(self._http.post("/v1/query", json=body)))

    def stream(
        self,
        question: str,
        collection: str | None = None,
        history: list[dict[str, str]] | None = None,
        top_k: int | None = None,
        filters: dict[str, Any] | None = None,
    ) -> Iterator[StreamEvent]:
        body = _payload(question, collection=collection, history=history, top_k=top_k, filters=filters, stream=True)
        with _transport(streaming=True), connect_sse(self._http, "POST", "/v1/query", json=body) as source:
            if source.response.status_code >= 400:
                source.response.read()
                _check(source.response)
            for sse in source.iter_sse():
                event = _event(sse.event, sse.data)
                yield event
                if event.kind == "done":
                    return
        raise _cut()

    def models(self) -> list[str]:
        with _transport():
            return [m["id"] for m in _check(self._http.get("/v1/models"))["data"]]

    def feedback(
        self,
        answer_id: str,
        rating: str,
        reason: str | None = None,
        correction: str | None = None,
        conversation: list[dict[str, str]] | None = None,
    ) -> dict[str, Any]:
        """Thumbs ``up`` or ``down`` on an answer (its ``answer_id``, or a completion id)."""
        body = _feedback(answer_id, rating, reason, correction, conversation)
        with _transport():
            return _check(self._http.post("/v1/feedback", json=body))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RagClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRagClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = TIMEOUT_S) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout)

    async def query(
        self,
        question: str,
        collection: str | None = None,
        history: list[dict[str, str]] | None = None,
        top_k: int | None = None,
        filters: dict[str, Any] | None = None,
    ) -> QueryResult:
        body = _payload(question, collection=collection, history=history, top_k=top_k, filters=filters)
        with _transport():
            return QueryResult.from_json(_check(await self._http.post("/v1/query", json=body)))

    async def stream(
        self,
        question: str,
        collection: str | None = None,
        history: list[dict[str, str]] | None = None,
        top_k: int | None = None,
        filters: dict[str, Any] | None = None,
    ) -> AsyncIterator[StreamEvent]:
        body = _payload(question, collection=collection, history=history, top_k=top_k, filters=filters, stream=True)
        with _transport(streaming=True):
            async with aclosing(self._events(body)) as events:  # closed at once if the caller stops
                async for event in events:
                    yield event

    async def _events(self, body: dict[str, Any]) -> AsyncGenerator[StreamEvent, None]:
        async with aconnect_sse(self._http, "POST", "/v1/query", json=body) as source:
            if source.response.status_code >= 400:
                await source.response.aread()
                _check(source.response)
            async for sse in source.aiter_sse():
                event = _event(sse.event, sse.data)
                yield event
                if event.kind == "done":
                    return
        raise _cut()

    async def models(self) -> list[str]:
        with _transport():
            return [m["id"] for m in _check(await self._http.get("/v1/models"))["data"]]

    async def feedback(
        self,
        answer_id: str,
        rating: str,
        reason: str | None = None,
        correction: str | None = None,
        conversation: list[dict[str, str]] | None = None,
    ) -> dict[str, Any]:
        """Thumbs ``up`` or ``down`` on an answer (its ``answer_id``, or a completion id)."""
        body = _feedback(answer_id, rating, reason, correction, conversation)
        with _transport():
            return _check(await self._http.post("/v1/feedback", json=body))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncRagClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

"""Server-Sent Events for ``POST /v1/query`` with ``"stream": true``.

Events: ``token`` (``{"text": ...}``) as the answer is generated, then exactly one of
``done`` (the whole QueryResponse: answer, citations, cache status, timings) or ``error``
(the one error body). When the client disconnects, sse-starlette cancels this generator,
which closes the upstream stream and so aborts the request in vLLM.

When the server is told to stop (SIGTERM), a stream in flight is not cut: it gets
``RAG_SHUTDOWN_GRACE_S`` to finish, and one still going then ends with its face's error
(:func:`answer_stream`; the OpenAI face's error chunk is followed by ``[DONE]``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from sse_starlette import EventSourceResponse

from rag.errors import RagError, error_body, internal_error_body
from rag.pipeline import Pipeline, Prepared
from rag.wire import Answer

__all__ = ["QUERY_FAREWELL", "SHUTTING_DOWN", "answer_stream", "sse_events"]

log = logging.getLogger("rag.serving")


def _error_event(body: dict[str, Any]) -> dict[str, Any]:
    return {"event": "error", "data": json.dumps(body)}


SHUTTING_DOWN = error_body(
    "the service is restarting and this answer was cut off - ask again", "service_unavailable", None, "shutting_down"
)
QUERY_FAREWELL = [_error_event(SHUTTING_DOWN)]


def answer_stream(
    events: AsyncIterator[dict[str, Any]], farewell: list[dict[str, Any]], grace_s: float
) -> EventSourceResponse:
    """``events`` as Server-Sent Events that outlive a shutdown by ``grace_s`` and then end
    with ``farewell`` (sse-starlette alone stops a stream at once, and the client reads a
    clean end: an answer cut without a word, logged as a 200)."""
    shutdown = anyio.Event()
    drained = _until_shutdown(events, shutdown, grace_s, farewell)
    return EventSourceResponse(drained, shutdown_event=shutdown, shutdown_grace_period=grace_s + 2.0)


async def _until_shutdown(
    events: AsyncIterator[dict[str, Any]], shutdown: anyio.Event, grace_s: float, farewell: list[dict[str, Any]]
) -> AsyncIterator[dict[str, Any]]:
    async def give_up() -> None:
        await shutdown.wait()
        await asyncio.sleep(grace_s)

    deadline = asyncio.ensure_future(give_up())
    upcoming = aiter(events)
    step: asyncio.Future[dict[str, Any]] | None = None
    try:
        while True:
            step = asyncio.ensure_future(anext(upcoming))
            await asyncio.wait({step, deadline}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                log.warning(
                    "a streamed answer was still going %.0f s after shutdown began: ended with an error", grace_s
                )
                for event in farewell:
                    yield event
                return
            try:
                event = step.result()
            except StopAsyncIteration:
                return
            yield event
    finally:
        deadline.cancel()
        # Shielded (for 5 s at most): a client that went away has this task cancelled again at
        # every await, and a close cut short leaves the connection to vLLM taken for good and
        # its generation running (the pool runs out: 503 for every question).
        with anyio.move_on_after(5, shield=True):
            if step is not None and not step.done():  # the events' generator is mid-step: stop it there first
                step.cancel()
                await asyncio.gather(step, return_exceptions=True)
            aclose = getattr(upcoming, "aclose", None)
            if aclose is not None:
                await aclose()


async def sse_events(
    pipeline: Pipeline, prep: Prepared, on_answer: Callable[[Answer], None] | None = None
) -> AsyncIterator[dict[str, Any]]:
    try:
        async for item in pipeline.stream(prep):
            if isinstance(item, Answer):
                if on_answer is not None:
                    on_answer(item)
                yield {"event": "done", "data": json.dumps(item.to_dict(), ensure_ascii=False)}
            else:
                yield {"event": "token", "data": json.dumps({"text": item}, ensure_ascii=False)}
    except RagError as exc:
        yield _error_event(exc.body())
    except Exception:  # a bug mid-stream: the client still gets the one error shape and an end
        log.exception("stream failed")
        yield _error_event(internal_error_body())

"""Server-Sent Events for ``POST /v1/query`` with ``"stream": true``.

Events: ``token`` (``{"text": ...}``) as the answer is generated, then exactly one of
``done`` (the whole QueryResponse: answer, citations, cache status, timings) or ``error``
(the one error body). When the client disconnects, sse-starlette cancels this generator,
which closes the upstream stream and so aborts the request in vLLM.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from sse_starlette import EventSourceResponse

from rag.errors import RagError, internal_error_body
from rag.pipeline import Pipeline, Prepared
from rag.wire import Answer

__all__ = ["EventSourceResponse", "sse_events"]

log = logging.getLogger("rag.serving")


def _error_event(body: dict[str, Any]) -> dict[str, Any]:
    return {"event": "error", "data": json.dumps(body)}


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

"""`POST /v1/query`: a question in, a grounded, cited answer out (or its SSE stream)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from rag.pipeline import Pipeline

from . import observability
from .feedback import remember
from .principals import principal_of
from .schemas import QueryRequest, QueryResponse
from .streaming import QUERY_FAREWELL, answer_stream, sse_events

router = APIRouter()


@router.post("/v1/query", response_model=QueryResponse)
async def query(body: QueryRequest, request: Request) -> Any:
    settings = request.app.state.settings
    pipe: Pipeline = request.app.state.pipeline
    principal = principal_of(request)
    collection = principal.collection_for(body.collection, settings.collection)
    principal.require_collection(collection)
    observability.log_question(settings, collection, body.question)
    history = [turn.model_dump() for turn in body.history]
    if body.stream:
        # Bad requests still get a plain 4xx: everything that can fail on the request
        # itself happens before the stream starts.
        prep = await pipe.prepare(body.question, collection, body.top_k, history, body.filters, streamed=True)
        events = sse_events(pipe, prep, lambda a: remember(request, a, body.question, history))
        return answer_stream(events, QUERY_FAREWELL, settings.shutdown_grace_s)
    answer = await pipe.answer(body.question, collection, body.top_k, history, body.filters)
    remember(request, answer, body.question, history)
    return answer.to_dict()

"""Request and response bodies of the REST API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: str = Field(max_length=20_000)


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(description="The customer's question.")
    collection: str | None = Field(
        default=None,
        description="Which document collection to answer from; the server default (RAG_COLLECTION) if unset.",
    )
    top_k: int | None = Field(default=None, ge=1, le=50, description="Chunks to retrieve; the server default if unset.")
    history: list[Turn] = Field(
        default_factory=list,
        max_length=1000,
        description='The conversation before this question, oldest first. A follow-up ("does it have '
        'parking?") is retrieved within the entity the conversation last named (a chunk title), or with the '
        "previous user turn if it names none, and is never answered from or stored in the cache. "
        "At most RAG_MAX_HISTORY_TURNS turns (50 unless configured).",
    )
    filters: dict[str, str | list[str]] | None = Field(
        default=None,
        description='Retrieve only chunks whose metadata match: keys "title", "document_id", "source"; '
        "a value or a list of accepted values. Replaces the entity carry-over.",
        examples=[{"title": "Returns and refunds"}],
    )
    stream: bool = Field(
        default=False,
        description="Answer as Server-Sent Events: `token` events as text arrives, then one `done` event "
        "with the whole response (its `answer` is authoritative), or an `error` event.",
    )


class CitationOut(BaseModel):
    id: int
    document_id: str
    source: str = Field(description="The file the passage comes from, relative to the folder that was ingested.")
    title: str
    text: str
    score: float


class CacheOut(BaseModel):
    hit: bool
    kind: str | None
    similarity: float | None


class TimingsOut(BaseModel):
    embed: float
    cache: float
    retrieve: float
    generate: float
    total: float
    first_token: float | None = None


class QueryResponse(BaseModel):
    answer: str
    answer_kind: Literal["generated", "quoted", "no_answer"] = Field(
        description="`generated`: the model's words, every clause checked against the documents; `quoted`: "
        "sentences of the documents, verbatim (the extractive backend, or what the guard served in place of an "
        'answer they do not support); `no_answer`: "I don\'t know from these documents."'
    )
    citations: list[CitationOut]
    cache: CacheOut
    timings_ms: TimingsOut
    collection: str
    backend: str


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody


def _sse_200(event_schema: dict[str, Any], description: str) -> dict[int | str, dict[str, Any]]:
    """A route's `responses=` entry documenting a 200 that may also be an event stream.

    Open API before 3.2 has the `schema` of `text/event-stream` describe one event as a
    client's SSE parser reads it: `{"event", "data", "id"?, "retry"?}`, `data` as text."""
    return {200: {"description": description, "content": {"text/event-stream": {"schema": event_schema}}}}


QUERY_STREAM_RESPONSES = _sse_200(
    {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string", "enum": ["token", "done", "error"]},
            "data": {
                "type": "string",
                "description": 'JSON: `token` {"text"}, then exactly one of `done` (the whole QueryResponse) '
                "or `error` (the error body).",
            },
        },
    },
    'The answer: a QueryResponse, or with `"stream": true` Server-Sent Events (text/event-stream).',
)
CHAT_STREAM_RESPONSES = _sse_200(
    {
        "type": "object",
        "required": ["data"],
        "properties": {
            "event": {"type": "string", "enum": ["message"]},
            "data": {
                "type": "string",
                "description": "JSON `chat.completion.chunk` objects (the last one with `citations` and `rag`), "
                "or an error body, then `[DONE]`.",
            },
        },
    },
    'An OpenAI chat completion, or with `"stream": true` its chunks as Server-Sent Events (text/event-stream).',
)

"""Request and response bodies of the REST API. The answer's parts are the wire types of
``rag.wire``, defined there once; this module only names their OpenAPI schemas."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from rag import wire

MAX_FILTER_VALUES = 1000  # each is a parameter of one SQL query


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    return isinstance(value, list) and any(_has_nul(v) for v in value)


class RequestBody(BaseModel):
    """Every request body: no field holds a NUL character. No text needs one, and PostgreSQL
    cannot store one: an answer log, a job or a curated answer holding it could never be written."""

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        if _has_nul(data):
            raise ValueError("text must not contain NUL (\\u0000) characters - remove them")
        return data


class Turn(RequestBody):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: str = Field(max_length=20_000)


class QueryRequest(RequestBody):
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
    filters: dict[str, str | Annotated[list[str], Field(max_length=MAX_FILTER_VALUES)]] | None = Field(
        default=None,
        description='Retrieve only chunks whose metadata match: keys "title", "document_id", "source"; '
        f"a value or a list of up to {MAX_FILTER_VALUES} accepted values. Replaces the entity carry-over.",
        examples=[{"title": "Returns and refunds"}],
    )
    stream: bool = Field(
        default=False,
        description="Answer as Server-Sent Events: `token` events as text arrives, then one `done` event "
        "with the whole response (its `answer` is authoritative), or an `error` event.",
    )


class FeedbackRequest(RequestBody):
    model_config = ConfigDict(extra="forbid")

    answer_id: str = Field(
        min_length=1,
        max_length=100,
        description="The answer's `answer_id` (`/v1/query`) or completion `id` (`/v1/chat/completions`).",
    )
    rating: Literal["up", "down"] = Field(description="`down` takes the answer out of the cache at once.")
    reason: str | None = Field(default=None, max_length=2000, description="Why, in the customer's or agent's words.")
    correction: str | None = Field(
        default=None, max_length=20_000, description="What the answer should have said (a curated answer to review)."
    )
    conversation: list[Turn] = Field(
        default_factory=list, max_length=1000, description="The conversation so far, for the handoff webhook."
    )


class FeedbackResponse(BaseModel):
    answer_id: str
    rating: Literal["up", "down"]
    needs_human: str | None = Field(description="`thumbs_down` after a down vote: hand the conversation over.")
    evicted: int = Field(description="Cached entries that gave this answer and were removed (every replica).")
    feedback_id: str = Field(description="This feedback (`POST /v1/curated/from-feedback` pins its correction).")


def _response_model(name: str, cls: type) -> type[BaseModel]:
    """The OpenAPI schema of a wire dataclass: its public fields, in order, each one always
    sent (so required), with the description its metadata gives."""
    hints = get_type_hints(cls)
    fields: dict[str, Any] = {
        f.name: (hints[f.name], Field(..., description=f.metadata.get("description")))
        for f in dataclasses.fields(cls)
        if not f.metadata.get("internal")
    }
    return create_model(name, **fields)


CitationOut = _response_model("CitationOut", wire.Citation)
CacheOut = _response_model("CacheOut", wire.CacheStatus)


class TimingsOut(BaseModel):
    embed: float
    cache: float
    retrieve: float
    generate: float
    total: float
    first_token: float | None = None


class QueryResponse(BaseModel):
    answer: str
    answer_kind: Literal["generated", "quoted", "no_answer", "curated"] = Field(
        description="`generated`: the model's words, every clause checked against the documents; `quoted`: "
        "sentences of the documents, verbatim (the extractive backend, or what the guard served in place of an "
        'answer they do not support); `no_answer`: "I don\'t know from these documents."; `curated`: an answer '
        "a person approved for this question (`POST /v1/curated`)."
    )
    citations: list[CitationOut]  # type: ignore[valid-type]  # a model made by create_model
    cache: CacheOut  # type: ignore[valid-type]
    timings_ms: TimingsOut
    collection: str
    backend: str
    answer_id: str = Field(description="This answer, for `POST /v1/feedback`.")
    needs_human: Literal["no_answer", "guard_replaced", "thumbs_down"] | None = Field(
        description="Why a person should take the conversation over (`no_answer`: the service abstained; "
        "`guard_replaced`: the model's answer failed the checks and the documents are quoted instead); "
        "null when the answer stands."
    )


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

"""Request and response bodies of the REST API. The answer's parts are the wire types of
``rag.wire``, defined there once; this module only names their OpenAPI schemas."""

from __future__ import annotations

import dataclasses
import re
from typing import Annotated, Any, Literal, get_type_hints

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, create_model, model_validator
from pydantic_core import PydanticCustomError

from cache.semantic import normalize_question
from rag import wire
from rag.privacy import without_card_numbers

MAX_FILTER_VALUES = 1000  # each is a parameter of one SQL query


_UNSTORABLE_RE = re.compile("[\x00\ud800-\udfff]")


def bad_text(value: Any, path: str = "") -> tuple[str, str] | None:
    """(where, what) of the first text in ``value`` that no store can keep: a NUL, or a lone
    surrogate (JSON's "\\ud800" escape, half of a pair: no UTF-8 encoding exists for it)."""
    if isinstance(value, str):
        if (char := _UNSTORABLE_RE.search(value)) is None:
            return None
        if char.group() == "\x00":
            return path, "a NUL (\\u0000) character"
        return path, "a lone surrogate (\\ud800-\\udfff without its pair: not a character)"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        where = f"{path}.{key}" if path else str(key)
        found = bad_text(key, where) if isinstance(key, str) else None
        if (found := found or bad_text(item, where)) is not None:
            return found
    return None


def _no_text_or_bool(value: Any) -> Any:
    if isinstance(value, str | bool):
        raise PydanticCustomError("int_type", "Input should be a valid integer, not text or true/false")
    return value


Count = Annotated[int, BeforeValidator(_no_text_or_bool)]
"""An integer field: "5" or true is a wrong type (a 400), not quietly 5 or 1; 5.0 is 5."""


class RequestBody(BaseModel):
    """Every request body: its text can be stored. No text needs a NUL, and PostgreSQL cannot
    keep one; a lone surrogate has no UTF-8 at all (the caches, the logs and the answer log
    would all fail on it). Either is a 400 that names the field. A payment card number is
    replaced before anything reads it. The models nested in a body (a turn, a chat message, a
    job's question) are plain models: the body's one scan covers them."""

    @model_validator(mode="before")
    @classmethod
    def _storable_text(cls, data: Any) -> Any:
        if (found := bad_text(data)) is not None:
            where, what = found
            raise PydanticCustomError(
                "invalid_text", "{field} holds {what} - remove it", {"field": where or "body", "what": what}
            )
        return without_card_numbers(data)


class Turn(BaseModel):  # inside a RequestBody, whose check covers it
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: str = Field(max_length=20_000)


class QueryRequest(RequestBody):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(description="The customer's question.")
    collection: str | None = Field(
        default=None,
        min_length=1,
        description="Which document collection to answer from; the server default (RAG_COLLECTION) if unset.",
    )
    top_k: Count | None = Field(
        default=None, ge=1, le=50, description="Chunks to retrieve; the server default if unset."
    )
    history: list[Turn] = Field(
        default_factory=list,
        max_length=1000,
        description='The conversation before this question, oldest first. A follow-up ("does it have '
        'parking?") is retrieved within the entity the conversation last named (a chunk title), or with the '
        "previous user turn if it names none (a question of a topic of its own is searched alone), and is "
        "never answered from or stored in the cache. "
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
        strict=True,
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
    """Milliseconds per stage; a stage that did not run (a cache hit retrieves nothing) is 0 or absent."""

    embed: float
    cache: float
    retrieve: float
    support: float | None = Field(default=None, description="The judge reading the retrieved sentences (a miss).")
    generate: float
    total: float
    first_token: float | None = Field(
        default=None,
        description="A stream's: from the request's arrival to the first text sent (an answer sent whole: its end).",
    )


class QueryResponse(BaseModel):
    answer: str
    answer_kind: Literal["generated", "quoted", "no_answer", "curated", "small_talk"] = Field(
        description="`generated`: the model's words, every clause checked against the documents; `quoted`: "
        "sentences of the documents, verbatim (the extractive backend, or what the guard served in place of an "
        'answer they do not support); `no_answer`: "I don\'t know from these documents."; `curated`: an answer '
        "a person approved for this question (`POST /v1/curated`); `small_talk`: a courteous reply to a message that "
        'asks nothing ("hi", "thanks, that worked!", an emoji), never handed to a person.'
    )
    citations: list[CitationOut]  # type: ignore[valid-type]  # a model made by create_model
    cache: CacheOut  # type: ignore[valid-type]
    timings_ms: TimingsOut
    collection: str
    backend: str
    usage: dict[str, int | None] = Field(
        default_factory=dict,
        description="Tokens the model read and wrote (`prompt_tokens`, `completion_tokens`); empty when no "
        "model wrote the answer (a quote, a cache hit, a curated answer).",
    )
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


def _has_words(question: str) -> str:
    # "???" and "   " normalise to the same empty question: pinned, it would answer them all.
    if not normalize_question(question):
        raise PydanticCustomError("no_words", "the question has no words - give the question customers ask")
    return question


class CuratedRequest(RequestBody):
    model_config = ConfigDict(extra="forbid")

    question: Annotated[str, Field(min_length=1, max_length=2000), AfterValidator(_has_words)] = Field(
        description="The question (its rewordings get it too)."
    )
    answer: str = Field(min_length=1, max_length=20_000, description="The approved answer.")
    collection: str | None = Field(
        default=None, min_length=1, description="The server default (RAG_COLLECTION) if unset."
    )
    document_ids: list[str] = Field(
        default_factory=list, max_length=20, description="Documents it cites: when one changes, it goes to review."
    )


class CuratedEdit(RequestBody):
    model_config = ConfigDict(extra="forbid")

    question: Annotated[str, Field(min_length=1, max_length=2000), AfterValidator(_has_words)] | None = None
    answer: str | None = Field(default=None, min_length=1, max_length=20_000)
    document_ids: list[str] | None = Field(
        default=None, max_length=20, description="Cite these documents instead (a moved or renamed one, say)."
    )

    @model_validator(mode="after")
    def _changes_something(self) -> CuratedEdit:
        if self.question is None and self.answer is None and self.document_ids is None:
            raise PydanticCustomError(
                "nothing_to_change", "nothing to change - give the question, the answer, the document_ids, or some"
            )
        return self


class FromFeedback(RequestBody):
    model_config = ConfigDict(extra="forbid")

    feedback_id: str = Field(min_length=1, max_length=100, description="A thumbs-down that came with a correction.")

"""The OpenAI-compatible face: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Bot frameworks that speak the OpenAI API (the official ``openai`` client, LangChain's
``ChatOpenAI``) work unchanged with ``base_url`` pointed here:

- ``model`` names the collection (``GET /v1/models`` lists them);
- ``messages``: the last user message is the question, the turns before it are the history
  (follow-up retrieval); system messages are accepted and not used: the service's own
  prompt keeps answers grounded;
- ``max_tokens`` (or ``max_completion_tokens``), ``temperature`` and ``stop`` reach the
  generator;
- ``stream: true`` sends ``chat.completion.chunk`` objects as SSE ``data:`` lines and ends
  with ``data: [DONE]``;
- the same pipeline as ``/v1/query`` (cache, retrieval, citations); citations and the cache
  status ride in extra fields (``citations``, ``rag``) of the response and of the last
  stream chunk, which OpenAI clients keep as extra attributes;
- the completion ``id`` is the answer's id for ``POST /v1/feedback``; an answer that needs
  a person says why in ``rag.needs_human`` and, unstreamed, in the ``X-RAG-Needs-Human``
  header.

Errors use the service's one error body, which is OpenAI's.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rag.errors import CollectionNotFoundError, InvalidRequestError, RagError, error_body, internal_error_body
from rag.pipeline import Pipeline, Prepared
from rag.privacy import mask_cards
from rag.store import list_collections
from rag.wire import Answer, GenerationOptions

from .errors import rag_error_response
from .feedback import remember
from .observability import log_question
from .principals import principal_of
from .schemas import Count, RequestBody
from .streaming import SHUTTING_DOWN, answer_stream

router = APIRouter()
log = logging.getLogger("rag.serving")


class ChatMessage(BaseModel):  # inside ChatCompletionRequest, whose check covers it
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: keep the text ones
            texts = [part.get("text", "") for part in self.content if part.get("type") == "text"]
            if not all(isinstance(t, str) for t in texts):
                raise InvalidRequestError(
                    "a text part's 'text' must be a string - send the words in quotes", param="messages"
                )
            return mask_cards("".join(texts))  # a card split over two parts is one card
        return self.content or ""


class ChatCompletionRequest(RequestBody):
    model_config = ConfigDict(extra="ignore")  # top_p, seed, user, ...: accepted, not used

    model: str = Field(min_length=1, description="The collection to answer from.")
    messages: list[ChatMessage] = Field(min_length=1, max_length=1001)
    # "yes" or "5" is a wrong type (a 400), not quietly true or 5 (strict: a float takes an int).
    stream: bool = Field(default=False, strict=True)
    max_tokens: Count | None = Field(default=None, ge=1, le=4096)
    max_completion_tokens: Count | None = Field(default=None, ge=1, le=4096)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, strict=True)
    n: Count | None = Field(default=None, ge=1, le=1, description="Choices: one (the grounded answer).")
    stop: str | list[str] | None = None
    # Asked for, these would change what the caller gets back: refused (400) rather than
    # ignored, or a bot that dispatches a tool call or parses JSON breaks later, unaware.
    tools: list[Any] | None = Field(default=None, description="Accepted; no tool is ever called (the answer is text).")
    tool_choice: Any = Field(default=None, description="Only 'auto' or 'none': no tool is ever called.")
    function_call: Any = Field(default=None, description="Only 'auto' or 'none': no function is ever called.")
    response_format: Any = Field(default=None, description="Only {'type': 'text'}: the answer is text.")
    logprobs: bool | None = Field(default=None, description="Not offered: false or left out.")

    @field_validator("tool_choice", "function_call")
    @classmethod
    def _no_forced_call(cls, value: Any) -> Any:
        if value in (None, "auto", "none"):
            return value
        raise ValueError(
            "no tool or function is ever called here: the answer is text from the collection's documents "
            "- leave it out, or send 'auto' or 'none'"
        )

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        if value is None or (isinstance(value, dict) and value.get("type") == "text"):
            return value
        raise ValueError("the answer is text with citations, never JSON - leave response_format out")

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("log probabilities are not offered (a quoted answer has none) - leave logprobs out")
        return value


def _split(body: ChatCompletionRequest) -> tuple[str, list[dict[str, str]]]:
    turns = [m for m in body.messages if m.role in ("user", "assistant")]
    if not turns or turns[-1].role != "user":
        raise InvalidRequestError("the last message must be the user's question", param="messages")
    history = [{"role": m.role, "content": m.text()} for m in turns[:-1]]
    return turns[-1].text(), history


def _options(body: ChatCompletionRequest) -> GenerationOptions | None:
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    if len(stop) > 4:
        raise InvalidRequestError("at most 4 stop sequences", param="stop")
    options = GenerationOptions(body.max_completion_tokens or body.max_tokens, body.temperature, stop)
    return None if options == GenerationOptions() else options


def _extras(answer: Answer) -> dict[str, Any]:
    data = answer.to_dict()
    return {
        "citations": data["citations"],
        "rag": {
            "cache": data["cache"],
            "timings_ms": data["timings_ms"],
            "backend": data["backend"],
            "answer_kind": data["answer_kind"],
            "needs_human": data["needs_human"],
        },
    }


def _usage(answer: Answer) -> dict[str, int]:
    prompt = int(answer.usage.get("prompt_tokens") or 0)
    completion = int(answer.usage.get("completion_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """The collections this key can read, as OpenAI models."""
    settings = request.app.state.pipeline.settings
    principal = principal_of(request)
    return {
        "object": "list",
        "data": [_model(name) for name in list_collections(settings.collections_dir) if principal.can_read(name)],
    }


@router.get("/v1/models/{model}")
async def get_model(model: str, request: Request) -> dict[str, Any]:
    """One collection this key can read, as an OpenAI model (``client.models.retrieve``)."""
    settings = request.app.state.pipeline.settings
    if model not in list_collections(settings.collections_dir) or not principal_of(request).can_read(model):
        error = CollectionNotFoundError(model, settings.data_dir)  # another key's is as good as absent
        error.param = "model"
        raise error
    return _model(model)


def _model(name: str) -> dict[str, Any]:
    """A collection as an OpenAI model object."""
    return {"id": name, "object": "model", "created": 0, "owned_by": "rag-service"}


# What the service's own errors name, as an OpenAI client's request names it.
_OPENAI_PARAMS = {"collection": "model", "history": "messages", "question": "messages"}
_OPENAI_WORDS = {"question": ("question is", "the last user message is"), "history": ("history has", "messages hold")}


def _in_openai_words(exc: RagError) -> str | None:
    """The error's message as the OpenAI request names its fields ("question is 2001
    characters" is "the last user message is 2001 characters"), or None: as it is."""
    rest, ours = _OPENAI_WORDS.get(exc.param or "", ("", ""))
    return ours + exc.message.removeprefix(rest) if rest and exc.message.startswith(rest) else None


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    """An OpenAI chat completion answered from the collection named by ``model``."""
    try:
        return await _chat_completions(body, request)
    except RagError as exc:  # the error may be a kept one (a damaged collection's): not changed
        return rag_error_response(exc, _OPENAI_PARAMS.get(exc.param or ""), message=_in_openai_words(exc))


async def _chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    pipe: Pipeline = request.app.state.pipeline
    principal_of(request).require_collection(body.model)
    question, history = _split(body)
    log_question(pipe.settings, body.model, question)
    answer_id = uuid.uuid4().hex
    completion_id = f"chatcmpl-{answer_id}"  # POST /v1/feedback takes it as the answer_id
    created = int(time.time())

    def keep(answer: Answer) -> None:
        answer.answer_id = answer_id
        remember(request, answer, question, history)

    if body.stream:
        prep = await pipe.prepare(question, body.model, None, history, None, _options(body), streamed=True)
        farewell = [{"data": json.dumps(SHUTTING_DOWN)}, {"data": "[DONE]"}]
        events = _chunks(pipe, prep, completion_id, created, body.model, keep)
        return answer_stream(events, farewell, request.app.state.settings.shutdown_grace_s)
    answer = await pipe.answer(question, body.model, None, history, None, _options(body))
    keep(answer)
    content = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": body.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.answer},
                "finish_reason": answer.finish_reason,
            }
        ],
        "usage": _usage(answer),
        **_extras(answer),
    }
    reason = answer.handoff_reason()  # bot frameworks read a header without parsing extensions
    return JSONResponse(content, headers={"X-RAG-Needs-Human": reason} if reason else None)


async def _chunks(
    pipe: Pipeline, prep: Prepared, completion_id: str, created: int, model: str, keep: Callable[[Answer], None]
) -> AsyncIterator[dict[str, Any]]:
    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        body = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return {"data": json.dumps(body, ensure_ascii=False)}

    yield chunk({"role": "assistant", "content": ""})
    sent = ""
    try:
        async for item in pipe.stream(prep):
            if isinstance(item, Answer):
                keep(item)
                # The final answer is authoritative. The guard releases only clauses that
                # passed, so the streamed text is the answer; ``rag.replaced`` stays for a
                # backend that streams without it (RAG_GUARD=false) and says if they differ.
                extras = _extras(item)
                extras["rag"]["answer"] = item.answer
                extras["rag"]["replaced"] = item.answer.strip() != sent.strip()
                yield chunk({}, item.finish_reason, usage=_usage(item), **extras)
            else:
                sent += item
                yield chunk({"content": item})
    except RagError as exc:
        yield {"data": json.dumps(error_body(exc.message, exc.type, None, exc.code))}
    except Exception:  # a bug mid-stream: still the one error shape, and [DONE]
        log.exception("chat completion stream failed")
        yield {"data": json.dumps(internal_error_body())}
    yield {"data": "[DONE]"}

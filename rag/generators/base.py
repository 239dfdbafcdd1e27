"""The generator extension point: one Protocol, found by name in one registry.

A backend says which prompt it wants through ``prompt_style``: ``"completion"`` (one
string, for base models and vLLM's /v1/completions), ``"chat"`` (a list of messages), or
``"none"`` (it reads the passages itself, like ``extractive``). The pipeline builds that
prompt and never looks at which backend it is talking to.

>>> class Echo:
...     name, prompt_style, can_stream, supports_prefix_cache = "echo", "none", False, False
...     async def generate(self, request): return Generation(text=request.question)
...     async def aclose(self): pass
>>> register_generator("echo", lambda settings: Echo())

A backend with ``can_stream`` also has ``stream(request, summary=None)``: an async iterator of
text pieces which, once it ends, has filled ``summary`` (a :class:`Generation`) with the
token counts and the finish reason the model server reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from ..errors import InvalidRequestError

if TYPE_CHECKING:
    from ..settings import Settings
    from ..store import RetrievedChunk

PromptStyle = Literal["completion", "chat", "none"]


@dataclass
class GenerationRequest:
    question: str
    passages: list[RetrievedChunk]
    prompt: str | list[dict[str, str]] | None = None
    max_tokens: int = 96
    stop: list[str] = field(default_factory=list)
    temperature: float | None = None  # None: the backend's configured temperature
    evidence: list[str] = field(default_factory=list)
    """The sentences that answer the question, best first (the judge's choice; may be empty)."""
    prefix_key: str | None = None
    """Names the prompt's context: requests with one key share the prompt up to the question."""


@dataclass
class Generation:
    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None


@runtime_checkable
class Generator(Protocol):
    name: str
    """Identifies the backend and its model; part of the cache scope."""
    prompt_style: PromptStyle
    can_stream: bool
    supports_prefix_cache: bool

    async def generate(self, request: GenerationRequest) -> Generation: ...

    async def aclose(self) -> None: ...


GeneratorFactory = Callable[["Settings"], Generator]
_REGISTRY: dict[str, GeneratorFactory] = {}


def register_generator(name: str, factory: GeneratorFactory) -> None:
    _REGISTRY[name] = factory


def available_generators() -> list[str]:
    return sorted(_REGISTRY)


def get_generator(name: str, settings: Settings) -> Generator:
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise InvalidRequestError(
            f"unknown backend {name!r} - choose one of: {', '.join(available_generators())}",
            param="backend",
        ) from None
    return factory(settings)


def usage(gen: Generation) -> dict[str, Any]:
    """The token counts the backend reported (none: a quote, or a backend that counts nothing)."""
    counts = {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens}
    return {k: v for k, v in counts.items() if v is not None}

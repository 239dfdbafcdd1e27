"""The wire types: what a question's answer is, as every face of the service sends it (the
REST route, the OpenAI-compatible route, streaming, jobs, the Python client).
``Answer.to_dict`` is the JSON body; fields marked internal never leave the process."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store import RetrievedChunk

SNIPPET_CHARS = 300


def jsonl_lines(text: str) -> list[str]:
    """The lines of a JSON Lines text. Only a newline ends a line: ``str.splitlines`` also
    splits at U+2028, U+2029 and U+0085, which JSON strings may hold unescaped."""
    return [line.removesuffix("\r") for line in text.split("\n")]


@dataclass
class Citation:
    id: int
    document_id: str
    source: str = field(
        metadata={"description": "The file the passage comes from, relative to the folder that was ingested."}
    )
    title: str
    text: str
    score: float
    url: str = field(
        default="",
        metadata={
            "description": "Where a customer reads the document (its page's canonical address, or the url its"
            " front matter, .jsonl or .csv entry gives); empty when none is known."
        },
    )
    page: int | None = field(
        default=None,
        metadata={
            "description": "The page of a PDF the passage begins on (from 1); null for a document without pages."
        },
    )

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> Citation:
        """A citation as another process wrote it (a cached answer, a response): fields this
        release does not know are left out, so one written by a newer release reads too."""
        return cls(**{k: fields[k] for k in cls.__dataclass_fields__ if k in fields})

    @classmethod
    def from_chunk(cls, chunk: RetrievedChunk) -> Citation:
        text = chunk.text if len(chunk.text) <= SNIPPET_CHARS else chunk.text[:SNIPPET_CHARS].rsplit(" ", 1)[0] + "…"
        return cls(
            chunk.id,
            chunk.document_id,
            chunk.source,
            chunk.title,
            text,
            round(chunk.score, 4),
            chunk.url,
            chunk.page or None,
        )


@dataclass
class CacheStatus:
    hit: bool = False
    kind: str | None = None
    similarity: float | None = None


@dataclass
class Answer:
    answer: str
    citations: list[Citation]
    cache: CacheStatus
    timings_ms: dict[str, float]
    collection: str
    backend: str
    usage: dict[str, Any] = field(default_factory=dict)
    answer_kind: str = "generated"
    """`generated` (the model's words, every clause checked), `quoted` (sentences of the documents,
    verbatim), `no_answer` ("I don't know from these documents.") or `curated` (an answer a
    person approved for this question)."""
    grounded: bool = field(default=True, metadata={"internal": True})
    """False when the guard replaced the model's answer with the quoted evidence (clients see
    it as ``needs_human: "guard_replaced"``)."""
    guard_reason: str | None = field(default=None, metadata={"internal": True})
    """Why the guard cut or replaced the model's answer (for evaluation; not sent to clients)."""
    model_answer: str | None = field(default=None, metadata={"internal": True})
    """What the model said before the guard (for evaluation; never sent to clients)."""
    answer_id: str = field(
        default_factory=lambda: uuid.uuid4().hex,
        metadata={"description": "This answer, for `POST /v1/feedback` (on the OpenAI face: the completion id)."},
    )
    needs_human: str | None = field(
        default=None,
        metadata={
            "description": "Why a person should take the conversation over: `no_answer` (the service "
            "abstained), `guard_replaced` (the model's answer failed the checks; the documents are quoted "
            "instead) or `thumbs_down`; null when the answer stands."
        },
    )
    cache_scope: str | None = field(default=None, metadata={"internal": True})
    """The response cache's scope this answer was looked up in (feedback evicts within it)."""
    finish_reason: str = field(default="stop", metadata={"internal": True})
    """OpenAI's: "length" when the answer is the model's words cut at max_tokens, else "stop"."""
    cache_ref: str | None = field(default=None, metadata={"internal": True})
    """The cache entry a semantic hit was served from (a thumbs-up is evidence for it); for a
    curated answer, ``curated:ID`` (a thumbs-down sends that one to review)."""

    def handoff_reason(self) -> str | None:
        if self.needs_human is not None:
            return self.needs_human
        if self.answer_kind == "no_answer":
            return "no_answer"
        if not self.grounded:
            return "guard_replaced"
        return None

    def cache_group(self) -> str:
        """The cited chunks: the cache's name for "the same answer" (chunk ids never repeat
        within a collection's lineage, so a changed document is a new group)."""
        return ",".join(sorted(str(c.id) for c in self.citations)) or "no-answer"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for name, spec in self.__dataclass_fields__.items():
            if spec.metadata.get("internal"):
                del out[name]
        out["needs_human"] = self.handoff_reason()
        return out


@dataclass(frozen=True)
class GenerationOptions:
    """Per-request generation parameters (the OpenAI-compatible route passes them on)."""

    max_tokens: int | None = None
    temperature: float | None = None
    stop: tuple[str, ...] = ()

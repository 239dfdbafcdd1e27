"""Prompts, built with langchain-core templates.

Order matters for speed: the fixed instructions and worked examples come first and never
change, so a server with a prefix cache (vLLM's automatic prefix caching, llama.cpp's
reuse of the previous prompt's KV state) computes them once; the retrieved context and
the question come last.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from langchain_core.messages import BaseMessage
from langchain_core.prompts import (
    ChatPromptTemplate,
    FewShotChatMessagePromptTemplate,
    FewShotPromptTemplate,
    PromptTemplate,
)

if TYPE_CHECKING:
    from .index import RetrievedChunk
    from .settings import ShotMode

NO_ANSWER = "I don't know from these documents."

INSTRUCTIONS = (
    "You are a customer-support assistant. Answer the customer's question in one or two "
    "sentences, using only the context. If the context does not contain the answer, reply "
    f"exactly: {NO_ANSWER}"
)

# Worked examples from a domain no customer's documents will share (a city library), so
# the model learns the format without copying the examples' facts into real answers.
EXAMPLES: list[dict[str, str]] = [
    {
        "context": "[1] Borrowing books\nMembers can borrow up to 8 books at a time. "
        "Books are lent for 3 weeks and can be renewed twice online.",
        "question": "How long can I keep a book?",
        "answer": "Books are lent for 3 weeks and can be renewed twice online.",
    },
    {
        "context": "[1] Library cards\nA lost library card is replaced at any front desk. "
        "Bring photo ID; the replacement costs 2 euros.",
        "question": "i lost my card what do i do",
        "answer": "Bring photo ID to any front desk; a replacement card costs 2 euros.",
    },
    {
        "context": "[1] Opening hours\nThe central library opens at 9am and closes at 8pm on weekdays.",
        "question": "Can I print documents at the library?",
        "answer": NO_ANSWER,
    },
]

SHOTS: dict[str, int] = {"zero": 0, "one": 1, "few": 3}

_COMPLETION_EXAMPLE = PromptTemplate.from_template("Context:\n{context}\nQuestion: {question}\nAnswer: {answer}")
_COMPLETION_SUFFIX = "Context:\n{context}\nQuestion: {question}\nAnswer:"
_CHAT_USER = "Context:\n{context}\n\nQuestion: {question}"

COMPLETION_STOP = ["\n"]


def format_context(passages: list[RetrievedChunk], max_chars: int = 2400) -> str:
    parts: list[str] = []
    used = 0
    for n, passage in enumerate(passages, start=1):
        text = passage.text.strip()
        if used + len(text) > max_chars and parts:
            break
        parts.append(f"[{n}] {passage.title}\n{text}")
        used += len(text)
    return "\n".join(parts)


def completion_prompt(question: str, passages: list[RetrievedChunk], shots: ShotMode = "few") -> str:
    template = FewShotPromptTemplate(
        examples=EXAMPLES[: SHOTS[shots]],
        example_prompt=_COMPLETION_EXAMPLE,
        prefix=INSTRUCTIONS,
        suffix=_COMPLETION_SUFFIX,
        example_separator="\n\n",
        input_variables=["context", "question"],
    )
    return template.format(context=format_context(passages), question=question.strip())


def chat_messages(question: str, passages: list[RetrievedChunk], shots: ShotMode = "few") -> list[dict[str, str]]:
    few_shot = FewShotChatMessagePromptTemplate(
        examples=EXAMPLES[: SHOTS[shots]],
        example_prompt=ChatPromptTemplate.from_messages([("human", _CHAT_USER), ("ai", "{answer}")]),
    )
    template = ChatPromptTemplate.from_messages([("system", INSTRUCTIONS), few_shot, ("human", _CHAT_USER)])
    messages = template.format_messages(context=format_context(passages), question=question.strip())
    return [_as_openai(m) for m in messages]


def _as_openai(message: BaseMessage) -> dict[str, str]:
    role = {"human": "user", "ai": "assistant", "system": "system"}[message.type]
    return {"role": role, "content": str(message.content)}


def prompt_version(shots: ShotMode, context_sentences: int = 0) -> str:
    """Changes whenever the instructions, examples or context do; part of the cache scope."""
    blob = json.dumps(
        [INSTRUCTIONS, EXAMPLES[: SHOTS[shots]], _COMPLETION_SUFFIX, _CHAT_USER, shots, context_sentences]
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]

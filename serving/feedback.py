"""`POST /v1/feedback`, and remembering the answers it refers to.

Every answer a route sends is remembered (:func:`remember`, off the request path: the
support store queues it) under its ``answer_id``. A thumbs-down takes the answer out of the
response cache at once (every replica that shares it: Redis, or one host's diskcache) and
blocks it from coming back to that question's neighbourhood until its documents change or an
admin lifts the block (:mod:`cache.blocks`); it also hands the conversation to a person
(:mod:`serving.handoff`). A vote on a semantic hit, either way, is evidence for the wrong-hit
estimate and the boundaries the cache learns (:mod:`cache.audit`). Feedback is kept per
collection (the tenant a key is scoped to).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import APIRouter, Request

from cache.stores import StoreUnavailable
from rag.curated import CURATED
from rag.errors import NotFoundError
from rag.pipeline import Pipeline
from rag.wire import Answer

from . import curation
from .principals import principal_of
from .schemas import FeedbackRequest, FeedbackResponse
from .support_store import AnswerRecord, Feedback, SupportStore

log = logging.getLogger("rag.serving")
router = APIRouter()
_ANOTHER_REPLICA_S = 1.0  # an answer another replica gave is written within its 0.2 s flush


def remember(request: Request, answer: Answer, question: str, conversation: list[dict[str, str]]) -> None:
    """Keep a route's answer for feedback; hand it over if it needs a person."""
    keep(request.app.state, answer, question, principal_of(request).key_id, conversation)


def keep(state: Any, answer: Answer, question: str, key_id: str | None, conversation: list[dict[str, str]]) -> None:
    """Keep ``answer`` for feedback (unless RAG_ANSWER_LOG is off) and hand it over if it needs
    a person: every answer the service gives, a route's or a job's (``state``: the app's)."""
    if state.settings.answer_log:
        state.support.record(AnswerRecord.of(answer, question, key_id, conversation))
    reason = answer.handoff_reason()
    if reason is not None:
        state.handoff.notify(
            _handoff(answer.answer_id, reason, answer.collection, question, answer.answer, conversation)
        )


def _handoff(
    answer_id: str, reason: str, collection: str, question: str, answer: str, conversation: list[dict[str, str]]
) -> dict[str, Any]:
    return {
        "reason": reason,
        "answer_id": answer_id,
        "collection": collection,
        "question": question,
        "answer": answer,
        "conversation": conversation,
    }


async def _find(store: SupportStore, answer_id: str) -> AnswerRecord | None:
    """The answer, waiting up to a flush for one another replica gave (on the event loop:
    an unknown id never holds a worker thread while it waits)."""
    deadline = time.monotonic() + _ANOTHER_REPLICA_S
    while (record := await asyncio.to_thread(store.answer, answer_id)) is None and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return record


async def _judge_hit(pipe: Pipeline, support: SupportStore, record: AnswerRecord, rating: str) -> None:
    """A vote on a semantic hit is evidence on it, both ways (the ups alone would flatter the
    estimate), counted once per answer: repeated votes, a double click included, do not move a
    collection's boundary. A first "down" after an "up" turns that answer's verdict to wrong
    without counting it again."""
    verdict = await asyncio.to_thread(support.hit_verdict, record.id, rating)
    if verdict is not None:
        await asyncio.to_thread(
            pipe.judge_hit, record.cache_ref, record.similarity, record.collection, rating == "up", verdict == "flip"
        )


async def evict_answer(
    pipe: Pipeline, support: SupportStore, curated: Any, record: AnswerRecord
) -> tuple[int, str | None]:
    """A thumbs-down's eviction: the answer out of the cache and blocked there (a copy of the
    block kept in the support store), or a disputed curated answer out of the cache; raises
    StoreUnavailable while the cache's store is away. (entries evicted, the block's id)."""
    if record.answer_kind == CURATED:
        item = await asyncio.to_thread(curated.get, (record.cache_ref or "").removeprefix("curated:"))
        evicted = await pipe.uncurate(item.collection, item.question, item.id) if item is not None else 0
        return evicted, None
    evicted, block_id = await pipe.reject_answer(
        record.question, record.answer, record.cache_group, record.cache_scope, record.collection
    )
    found = await asyncio.to_thread(pipe.cache.blocks.find, block_id) if block_id and pipe.cache else None
    if found is not None:  # for a store that loses it (serving.restore)
        await asyncio.to_thread(support.keep_block, *found)
    return evicted, block_id


async def _evict(state: Any, record: AnswerRecord) -> tuple[int, str | None]:
    """:func:`evict_answer`; while the cache's store is away (Redis down, a full disk) the vote
    is kept and handed over all the same, and the eviction waits in the support store for the
    store to come back (:mod:`serving.restore` does it; a restart loses nothing)."""
    try:
        return await evict_answer(state.pipeline, state.support, state.curated, record)
    except StoreUnavailable as exc:
        log.warning("thumbs-down on answer %s: the cache's store is away (%s); evicting it later", record.id, exc)
        await asyncio.to_thread(state.support.defer, f"evict:{record.id}")
        return 0, None


@router.post("/v1/feedback", response_model=FeedbackResponse)
async def feedback(body: FeedbackRequest, request: Request) -> Any:
    """A thumbs-up or -down on an answer, with an optional reason and corrected answer."""
    state = request.app.state
    pipe: Pipeline = state.pipeline
    principal = principal_of(request)
    answer_id = body.answer_id.removeprefix("chatcmpl-")
    record = await _find(state.support, answer_id)
    if record is None or not principal.can_read(record.collection):  # another tenant's is unknown here
        raise NotFoundError(
            f"no answer {body.answer_id!r}: send the answer_id (or completion id) of an answer this service gave",
            param="answer_id",
        )
    evicted, block_id, needs_human = 0, None, None
    curated = record.answer_kind == CURATED
    if body.rating == "down":
        # A person's answer goes back to a person. Through a public key (the widget's, which
        # anyone can send with) a vote is a customer's word, not a reviewer's: it is handed
        # over, and the approved answer is served until a person decides.
        handed_over_only = curated and principal.public
        if curated and not handed_over_only:
            why = f"thumbs-down on answer {record.id}" + (f": {body.reason}" if body.reason else "")
            await curation.dispute(state.curated, record.collection, record.cache_ref or "", why)
        if not handed_over_only:
            evicted, block_id = await _evict(state, record)
        needs_human = "thumbs_down"
        if not await asyncio.to_thread(state.support.voted_down, record.id):  # a person was told the first time
            conversation = [turn.model_dump() for turn in body.conversation] or await asyncio.to_thread(
                state.support.conversation, record.id
            )  # the vote's own, else the one the answer was given in
            event = _handoff(record.id, needs_human, record.collection, record.question, record.answer, conversation)
            state.handoff.notify({**event, "feedback": {"reason": body.reason, "correction": body.correction}})
    entry = Feedback(
        record.id, record.collection, body.rating, body.reason, body.correction, principal.key_id,
        evicted=evicted, block_id=block_id,
    )  # fmt: skip
    await asyncio.to_thread(state.support.add_feedback, entry)
    if record.cache_kind == "semantic" and not curated:
        await _judge_hit(pipe, state.support, record, body.rating)
    return {
        "answer_id": record.id,
        "rating": body.rating,
        "needs_human": needs_human,
        "evicted": evicted,
        "feedback_id": entry.id,
    }

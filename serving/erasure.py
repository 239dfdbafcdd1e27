"""Forgetting customers: an erasure request, and the retention limit.

An erasure request names answers (by id: `DELETE /v1/answers/{id}`, `rag forget --answer`)
or what a customer wrote (`rag forget --match "jane@example.com"`): each answer goes from the
answer log with the conversation before it, the votes and feedback on it and its handoffs
(:meth:`SupportStore.forget`), and the cached answers keyed by its question's text go from
the response cache; `--match` also erases the batch jobs' questions that hold the text, with
their answers (``JobStore.forget``; ``DELETE /v1/jobs/{id}`` deletes a whole job). The retention limit (RAG_RETENTION_DAYS) deletes what is older, each hour
while `rag serve` runs (:func:`keep_within_retention`) or from cron (`rag forget
--older-than`); cached answers expire by then on their own (``Settings.cache_lifetime_s``).
Not touched: curated answers and their audit (a person's text, kept as a record), a
thumbs-down's block (it holds the question it was given to; lift it: `DELETE
/v1/cache/blocks/{id}`), backups and the help desk a handoff went to.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import APIRouter, Request

from cache.semantic import SemanticCache
from rag.errors import NotFoundError
from rag.pipeline import read_question
from rag.settings import Settings

from .principals import principal_of
from .support_store import AnswerRecord, SupportStore

log = logging.getLogger("rag.serving")
router = APIRouter()
SWEEP_EVERY_S = 3600.0


def forget(cache: SemanticCache | None, support: SupportStore, records: list[AnswerRecord]) -> dict[str, int]:
    """Everything kept about ``records``' answers, the cached answers to their questions too;
    what went, by where it was. Raises StoreUnavailable while the cache's store is away
    (nothing is deleted from the answer log then: the request can be made again whole)."""
    cached = 0
    if cache is not None:
        for collection in {r.collection for r in records}:
            asked = {read_question(r.question) for r in records if r.collection == collection}
            cached += cache.forget(asked, collection)
    return {**support.forget([r.id for r in records]), "cached_answers": cached}


def expire(
    settings: Settings, cache: SemanticCache | None, support: SupportStore, jobs: Any, now: float | None = None
) -> dict[str, int]:
    """What RAG_RETENTION_DAYS no longer keeps, deleted: by table (``jobs``: finished jobs;
    ``cached_answers``: the response cache's, curated answers kept)."""
    before = (now or time.time()) - settings.retention_days * 86400
    cached = cache.expire(before) if cache is not None else 0
    return {**support.expire(before), "jobs": jobs.expire(before) if jobs is not None else 0, "cached_answers": cached}


async def keep_within_retention(
    settings: Settings, cache: SemanticCache | None, support: SupportStore, jobs: Any, stop: asyncio.Event
) -> None:
    """:func:`expire` at start and every hour until ``stop`` (RAG_RETENTION_DAYS 0: nothing)."""
    while settings.retention_days > 0:
        try:
            gone = await asyncio.to_thread(expire, settings, cache, support, jobs)
            if any(gone.values()):
                log.info("retention (%g days): deleted %s", settings.retention_days, gone)
        except Exception:  # the database away: the next hour's sweep catches up
            log.exception("retention sweep failed; tried again in an hour")
        try:
            await asyncio.wait_for(stop.wait(), SWEEP_EVERY_S)
            return
        except TimeoutError:
            pass


@router.delete("/v1/answers/{answer_id}")
async def forget_answer(request: Request, answer_id: str) -> dict[str, Any]:
    """An erasure request for one answer (admin): it goes from the answer log with its
    conversation, votes, feedback and handoffs, and the cached answers to its question's
    text go from the response cache. Curated answers, blocks and backups are not touched
    (README, Personal data)."""
    principal_of(request).require_admin()
    state = request.app.state
    record = await asyncio.to_thread(state.support.answer, answer_id)
    if record is None:
        raise NotFoundError(f"no answer {answer_id!r} in the answer log - it was forgotten or expired, or never kept")
    deleted = await asyncio.to_thread(forget, state.pipeline.cache, state.support, [record])
    log.info("erasure request: answer %s forgotten (%s)", answer_id, deleted)
    return {"answer_id": answer_id, "deleted": deleted}

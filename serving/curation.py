"""Curated answers, the admin's side: pin an approved answer to a question (through the API,
from a thumbs-down's correction, or from a file: `rag curated import`), edit it, remove it,
and review the ones whose documents changed. Every change is a new version, audited (who,
when, before, after) in the support store; the answer itself is served from the response
cache's curated scope (:mod:`rag.curated`), so every replica sharing the cache serves it.

When a collection's new version no longer holds the text a curated answer cites (the
document changed or went), the answer stops being served and is flagged ``needs_review``, not
dropped: approving it cites the documents' current text; editing it (``document_ids`` too,
for a document moved or renamed) or removing it works as always. Text that only moved (a file
re-chunked, moved or renamed, a collection rebuilt) is cited where it is now. A thumbs-down
on a curated answer sends it to review the same way (:func:`dispute`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from fastapi import APIRouter, Request

from cache.semantic import normalize_question
from cache.stores import StoreUnavailable
from rag.curated import fingerprinted, group_of, recite
from rag.errors import ConflictError, InvalidRequestError, NotFoundError
from rag.pipeline import Pipeline
from rag.privacy import mask_cards
from rag.store import CollectionIndex, check_collection_name, current_version_dir
from rag.wire import Citation

from .principals import principal_of
from .schemas import CuratedEdit, CuratedRequest, FromFeedback
from .support_store import _Postgres, _Sqlite

log = logging.getLogger("rag.serving")
router = APIRouter()
_COLUMNS = (
    "id, collection, question, answer, citations, version, status, source, review_reason, created_at, "
    "updated_at, updated_by"
)


@dataclass
class Curated:
    id: str
    collection: str
    question: str
    answer: str
    citations: list[dict[str, Any]]
    version: int
    status: str  # active, needs_review, removed
    source: str  # api, feedback, file
    review_reason: str | None
    created_at: float
    updated_at: float
    updated_by: str | None

    @classmethod
    def from_row(cls, row: Any) -> Curated:
        item = cls(*row)
        item.citations = json.loads(row[4])
        return item

    def row(self) -> tuple[Any, ...]:
        return tuple({**asdict(self), "citations": json.dumps(self.citations, ensure_ascii=False)}.values())


class CuratedStore:
    def __init__(self, sql: _Sqlite | _Postgres) -> None:
        self.sql = sql

    def get(self, curated_id: str) -> Curated | None:
        rows = self.sql.query(f"SELECT {_COLUMNS} FROM curated WHERE id = ?", (curated_id,))
        return Curated.from_row(rows[0]) if rows else None

    def items(self, collection: str | None = None, status: str | None = None) -> list[Curated]:
        terms = [(n, v) for n, v in (("collection", collection), ("status", status)) if v is not None]
        where = " WHERE " + " AND ".join(f"{n} = ?" for n, _ in terms) if terms else ""
        sql = f"SELECT {_COLUMNS} FROM curated{where} ORDER BY updated_at DESC"
        return [Curated.from_row(r) for r in self.sql.query(sql, tuple(v for _, v in terms))]

    def history(self, curated_id: str) -> list[dict[str, Any]]:
        sql = "SELECT version, at, who, action, before, after FROM curated_audit WHERE curated_id = ? ORDER BY at, version"
        return [
            {"version": v, "at": at, "who": who, "action": action, "before": _load(b), "after": _load(a)}
            for v, at, who, action, b, a in self.sql.query(sql, (curated_id,))
        ]

    def create(self, collection: str, question: str, answer: str, citations: list[dict[str, Any]], who: str | None,
               source: str) -> Curated:  # fmt: skip
        now = time.time()
        question, answer = mask_cards(question), mask_cards(answer)  # from a file, or a customer's correction
        item = Curated(uuid.uuid4().hex[:16], collection, question, answer, citations, 1, "active", source, None,
                       now, now, who)  # fmt: skip
        self.sql.apply([
            (f"INSERT INTO curated ({_COLUMNS}) VALUES ({', '.join('?' * 12)})", item.row()),
            _audit(item, who, "create", None),
        ])  # fmt: skip
        return item

    def change(self, before: Curated, who: str | None, action: str, **fields: Any) -> Curated | None:
        """A new version of ``before`` with ``fields`` changed; None if someone changed it first."""
        fields.update({k: mask_cards(v) for k, v in fields.items() if k in ("question", "answer")})
        after = Curated(**{**asdict(before), **fields, "version": before.version + 1})
        after.updated_at, after.updated_by = time.time(), who
        sets = "question = ?, answer = ?, citations = ?, version = ?, status = ?, review_reason = ?, updated_at = ?, updated_by = ?"
        params = (after.question, after.answer, json.dumps(after.citations), after.version, after.status,
                  after.review_reason, after.updated_at, who, before.id, before.version)  # fmt: skip
        changed = self.sql.apply([
            (f"UPDATE curated SET {sets} WHERE id = ? AND version = ?", params),
            _audit(after, who, action, before),
        ])  # fmt: skip
        return after if changed[0] == 1 else None

    def checked(self, item: Curated, index: CollectionIndex) -> Curated | None:
        """``item`` checked against this version of its collection, by the text it cites: text
        that moved to other chunks is cited there (a new version); text that changed or went
        flags it ``needs_review`` (None: not to be served)."""
        cited = recite(index, item.citations)
        if cited == item.citations:
            return item
        if cited is None:
            reason = (
                f"the passage it cites is not in index version {index.version}: its document changed or went, "
                "or was chunked again with other settings - approve to cite the documents as they are now"
            )
            if self.change(item, "rag-service", "flag", status="needs_review", review_reason=reason) is not None:
                log.warning("curated answer %s needs review: %s", item.id, reason)
                return None
        elif (after := self.change(item, "rag-service", "recite", citations=cited)) is not None:
            return after
        fresh = self.get(item.id)  # changed meanwhile (another replica's check, an admin): check that
        return self.checked(fresh, index) if fresh is not None and fresh.status == "active" else None


async def dispute(store: CuratedStore, collection: str, served: str, why: str) -> list[Curated]:
    """A thumbs-down on a curated answer: a customer disputes what a person approved, so it goes
    back to a person. The curated answer that was served (``served``: its cache group,
    ``curated:ID``) is flagged ``needs_review`` (audited as ``flag``); others giving the same
    text stay. Returns the ones flagged, for the caller to take out of the cache."""
    flagged = []
    for item in await asyncio.to_thread(store.items, collection, "active"):
        if group_of(item.id) == served:
            done = await asyncio.to_thread(
                store.change, item, "feedback", "flag", status="needs_review", review_reason=why
            )
            if done is not None:
                log.warning("curated answer %s needs review: %s", item.id, why)
                flagged.append(done)
    return flagged


def _load(text: str | None) -> Any:
    return json.loads(text) if text else None


def _audit(item: Curated, who: str | None, action: str, before: Curated | None) -> tuple[str, tuple[Any, ...]]:
    sql = "INSERT INTO curated_audit (id, curated_id, version, at, who, action, before, after) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    dump = json.dumps(asdict(before), ensure_ascii=False) if before is not None else None
    after = json.dumps(asdict(item), ensure_ascii=False)
    return sql, (uuid.uuid4().hex, item.id, item.version, time.time(), who, action, dump, after)


def cite_documents(index: CollectionIndex, document_ids: list[str]) -> list[dict[str, Any]]:
    """The chunks of these documents as citations (an unknown one is a 400)."""
    citations = []
    for document_id in document_ids:
        chunks = index.document_chunks(document_id, 64)
        if not chunks:
            raise InvalidRequestError(
                f"collection {index.name!r} has no document {document_id!r} - cite a document_id its answers cite",
                param="document_ids",
            )
        citations += [asdict(Citation.from_chunk(c)) for c in chunks]
    return fingerprinted(index, citations)


async def sync_curated(pipe: Pipeline, store: CuratedStore, collection: str | None = None) -> int:
    """Check every active curated answer (of ``collection``) against the version its collection
    serves (:meth:`CuratedStore.checked`), and put it in the cache where its version is not
    there yet (after a start, a new version, a cache clear, a rebuilt collection); take out
    the ones that no longer stand. Returns how many were put."""
    put, current = 0, {}  # collection -> whether this replica serves its CURRENT (read once)
    for before in await asyncio.to_thread(store.items, collection, "active"):
        try:
            index = pipe.get_index(before.collection)
            stored = await asyncio.to_thread(pipe.curated_entry, before.collection, before.question)
        except Exception as exc:  # the collection is gone or not ingested: nothing to serve it with
            log.warning("curated answer %s not served: %s", before.id, exc)
            continue
        if index.name not in current:
            current[index.name] = _is_current(index)
        if not current[index.name]:  # this replica swaps soon, and checks again then
            continue
        item = await asyncio.to_thread(store.checked, before, index)
        if item is None:
            await pipe.uncurate(before.collection, before.question, before.id)
        elif stored is None or stored.get("version") != item.version:
            put += await pipe.curate(item.collection, item.question, item.answer, item.citations, item.id, item.version)
    for waiting in await asyncio.to_thread(store.items, collection, "needs_review"):  # none left in the cache
        if await asyncio.to_thread(pipe.curated_entry, waiting.collection, waiting.question) is not None:
            await pipe.uncurate(waiting.collection, waiting.question, waiting.id)
    return put


def _is_current(index: CollectionIndex) -> bool:
    """Whether ``index`` is its collection's live version (a replica that has not swapped yet
    must not re-cite by an older one, backwards)."""
    return current_version_dir(index.version_dir.parent) == index.version_dir


async def start(pipe: Pipeline, store: CuratedStore) -> None:
    """At start-up: the curated answers into the cache (a store that is away delays them to
    the next version the replica loads; it never stops the start)."""
    try:
        put = await sync_curated(pipe, store)
    except Exception as exc:
        log.warning("curated answers not loaded at start: %s", exc)
    else:
        if put:
            log.info("%d curated answers put in the cache", put)


def _log_failure(done: Any) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.error("curated answers not checked against the new version: %s", done.exception())


def follow_versions(
    pipe: Pipeline, store: CuratedStore, loop: asyncio.AbstractEventLoop
) -> Callable[[CollectionIndex], None]:
    """Each version a replica starts serving: check its curated answers (flag the ones whose
    cited text changed) and put the rest in the cache if they are not there. Until then a
    curated answer citing a chunk the version lacks is not served (chunk ids never repeat
    within a lineage; a rebuilt collection's curated scope starts empty)."""

    def on_version(index: CollectionIndex) -> None:
        done = asyncio.run_coroutine_threadsafe(sync_curated(pipe, store, index.name), loop)
        done.add_done_callback(_log_failure)

    pipe.on_version.append(on_version)
    return on_version


def _admin(request: Request, collection: str) -> tuple[Pipeline, CuratedStore, str | None]:
    principal = principal_of(request)
    principal.require_admin()
    principal.require_collection(collection)
    return request.app.state.pipeline, request.app.state.curated, principal.key_id


def _found(store: CuratedStore, curated_id: str, request: Request) -> Curated:
    item = store.get(curated_id)
    if item is None or item.status == "removed" or not principal_of(request).can_read(item.collection):
        raise NotFoundError(f"no curated answer {curated_id!r} - `GET /v1/curated` lists them", param="curated_id")
    return item


def _check_unpinned(store: CuratedStore, collection: str, question: str, curated_id: str | None = None) -> None:
    """A question has one curated answer (the same after normalising): a second would win or
    lose at random. Checked before the write, not under a lock: two pins racing can both pass."""
    key = normalize_question(question)
    if not key:
        raise InvalidRequestError("the question has no words - give the question customers ask", param="question")
    for item in store.items(collection, "active") + store.items(collection, "needs_review"):
        if item.id != curated_id and normalize_question(item.question) == key:
            then = " and approve it (POST /v1/curated/{0}/approve)" if item.status == "needs_review" else ""
            raise ConflictError(
                f"this question already has curated answer {item.id} ({item.status}) - "
                f"change that one with PATCH /v1/curated/{item.id}{then.format(item.id)}",
                param="question",
            )


async def _in_cache(request: Request, before: Curated | None, after: Curated | None) -> None:
    """The cache follows a curated answer's change: ``before``'s entry out, ``after`` in (when
    active). While the cache's store is away the record stands, and the cache catches up when
    it is back (the work waits in the support store: :func:`serving.restore.catch_up`)."""
    pipe: Pipeline = request.app.state.pipeline
    try:
        if before is not None:
            await pipe.uncurate(before.collection, before.question, before.id)
        if after is not None and after.status == "active":
            await pipe.curate(after.collection, after.question, after.answer, after.citations, after.id, after.version)
    except StoreUnavailable as exc:
        item = after or before
        assert item is not None
        log.warning(
            "curated answer %s: the cache's store is away (%s); the cache follows when it is back", item.id, exc
        )
        support = request.app.state.support
        if before is not None:
            await asyncio.to_thread(
                support.defer, "drop:" + json.dumps([before.collection, before.question, before.id])
            )
        if after is not None:
            await asyncio.to_thread(support.defer, f"sync:{after.collection}")


async def _pin(request: Request, collection: str, question: str, answer: str, citations: list[dict[str, Any]],
               source: str) -> dict[str, Any]:  # fmt: skip
    pipe, store, who = _admin(request, collection)
    await asyncio.to_thread(_check_unpinned, store, collection, question)
    citations = fingerprinted(pipe.get_index(collection), citations)
    item = await asyncio.to_thread(store.create, collection, question, answer, citations, who, source)
    await _in_cache(request, None, item)
    return asdict(item)


@router.post("/v1/curated", status_code=201)
async def pin(body: CuratedRequest, request: Request) -> dict[str, Any]:
    """Pin an approved answer to a question (admin)."""
    collection = body.collection or request.app.state.settings.collection
    _admin(request, collection)
    index = request.app.state.pipeline.get_index(collection)
    citations = cite_documents(index, body.document_ids)
    return await _pin(request, collection, body.question, body.answer, citations, "api")


@router.post("/v1/curated/from-feedback", status_code=201)
async def pin_correction(body: FromFeedback, request: Request) -> dict[str, Any]:
    """Pin a thumbs-down's correction to the question it answered, citing what it cited (admin)."""
    principal_of(request).require_admin()  # before the lookup: a non-admin learns nothing of which ids exist
    support = request.app.state.support
    vote = await asyncio.to_thread(support.one_feedback, body.feedback_id)
    record = await asyncio.to_thread(support.answer, vote.answer_id) if vote and vote.rating == "down" else None
    if vote is None or record is None or not vote.correction:
        raise NotFoundError(
            f"no thumbs-down {body.feedback_id!r} with a correction - pin it with `POST /v1/curated` instead",
            param="feedback_id",
        )
    return await _pin(request, record.collection, record.question, vote.correction, record.citations, "feedback")


async def _new_version(
    request: Request, curated_id: str, action: str, fields: Callable[[Curated, Pipeline], dict[str, Any]]
) -> tuple[Pipeline, Curated, Curated]:
    """(the pipeline, the version before, the new version) after an admin's change."""
    store: CuratedStore = request.app.state.curated
    before = await asyncio.to_thread(_found, store, curated_id, request)
    pipe, _, who = _admin(request, before.collection)
    after = await asyncio.to_thread(store.change, before, who, action, **fields(before, pipe))
    if after is None:
        raise ConflictError(f"curated answer {curated_id} changed meanwhile - read it again", param="curated_id")
    return pipe, before, after


@router.patch("/v1/curated/{curated_id}")
async def edit(curated_id: str, body: CuratedEdit, request: Request) -> dict[str, Any]:
    """A new version: the question, the answer or both (admin)."""
    changes = {k: v for k, v in body.model_dump().items() if v is not None}
    if (document_ids := changes.pop("document_ids", None)) is not None:
        principal_of(request).require_admin()
        item = await asyncio.to_thread(_found, request.app.state.curated, curated_id, request)
        changes["citations"] = cite_documents(request.app.state.pipeline.get_index(item.collection), document_ids)
    if "question" in changes:  # to a question another curated answer holds: a 409
        principal_of(request).require_admin()
        store: CuratedStore = request.app.state.curated
        item = await asyncio.to_thread(_found, store, curated_id, request)
        await asyncio.to_thread(_check_unpinned, store, item.collection, changes["question"], item.id)
    pipe, before, after = await _new_version(request, curated_id, "edit", lambda _b, _p: changes)
    await _in_cache(request, before, after)
    return asdict(after)


@router.post("/v1/curated/{curated_id}/approve")
async def approve(curated_id: str, request: Request) -> dict[str, Any]:
    """Back in service after review: it cites its documents' current text (admin)."""

    def recited(before: Curated, pipe: Pipeline) -> dict[str, Any]:
        documents = list(dict.fromkeys(c["document_id"] for c in before.citations))
        citations = cite_documents(pipe.get_index(before.collection), documents)
        return {"status": "active", "review_reason": None, "citations": citations}

    _, _, after = await _new_version(request, curated_id, "approve", recited)
    await _in_cache(request, None, after)
    return asdict(after)


@router.delete("/v1/curated/{curated_id}")
async def remove(curated_id: str, request: Request) -> dict[str, Any]:
    """Stop serving it; the record and its history stay (admin)."""
    _, before, after = await _new_version(request, curated_id, "remove", lambda _b, _p: {"status": "removed"})
    await _in_cache(request, before, None)
    return asdict(after)


@router.get("/v1/curated")
async def list_curated(
    request: Request, collection: str | None = None, status: Literal["active", "needs_review", "removed"] | None = None
) -> dict[str, Any]:
    """The curated answers (of a collection, in a status), newest change first (admin)."""
    principal = principal_of(request)
    principal.require_admin()
    items = await asyncio.to_thread(
        request.app.state.curated.items, collection and check_collection_name(collection), status
    )
    return {"data": [asdict(i) for i in items if principal.can_read(i.collection)]}


@router.get("/v1/curated/{curated_id}/history")
async def curated_history(curated_id: str, request: Request) -> dict[str, Any]:
    """Every version: who, when, what it was before and after (admin)."""
    principal_of(request).require_admin()
    store: CuratedStore = request.app.state.curated
    item = await asyncio.to_thread(store.get, curated_id)
    if item is None or not principal_of(request).can_read(item.collection):
        raise NotFoundError(f"no curated answer {curated_id!r}", param="curated_id")
    return {"data": await asyncio.to_thread(store.history, curated_id)}

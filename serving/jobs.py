"""Asynchronous jobs: ``POST /v1/jobs`` with a list of questions returns a job id at once;
``GET /v1/jobs/{id}`` gives status, progress and, when done, the results.

Jobs and each question's result are persisted in SQLite under ``RAG_DATA_DIR/jobs.sqlite``
as they complete, so a restart loses nothing: on start-up, unfinished jobs carry on from
the questions not yet answered. A question whose backend is down is tried again, backing
off, for ``RAG_JOB_RETRY_S``; one that still fails is recorded with its error body.
Questions run through the same pipeline as ``/v1/query``, a few at a time
(``RAG_JOB_CONCURRENCY``), so vLLM batches them.

With ``RAG_DATABASE_URL`` set, jobs live in PostgreSQL (:class:`PgJobStore`) and any
replica may run one: each replica's runner takes queued jobs with ``SELECT ... FOR UPDATE
SKIP LOCKED`` (one worker a job), holds a lease it renews while it works
(``RAG_JOB_LEASE_S``), and a job whose worker died (its lease ran out) is taken again by
another. Each question's result is written only while its worker holds the lease and only
once (``result IS NULL``), so a job is never answered twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from tenacity import AsyncRetrying, retry_if_exception, wait_exponential

from cache.stores import damaged, set_aside
from rag.batch import answer_each
from rag.errors import BackendUnavailableError, NotFoundError, RagError
from rag.pipeline import Pipeline, read_question
from rag.wire import Answer

from .pg_jobs import PgJobStore, forgotten, holds, job_body, said
from .principals import principal_of
from .schemas import RequestBody, Turn

log = logging.getLogger("rag.serving")

router = APIRouter()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, created_at REAL NOT NULL, finished_at REAL,
    collection TEXT, total INTEGER NOT NULL, owner TEXT
);
CREATE TABLE IF NOT EXISTS items (
    job_id TEXT NOT NULL, position INTEGER NOT NULL, request TEXT NOT NULL, result TEXT,
    PRIMARY KEY (job_id, position)
);
"""


class JobQuestion(BaseModel):  # inside JobRequest, whose check covers it
    model_config = ConfigDict(extra="forbid")

    question: str
    id: str | None = None
    history: list[Turn] = Field(default_factory=list, max_length=1000)


class JobRequest(RequestBody):
    model_config = ConfigDict(extra="forbid")

    questions: list[JobQuestion] = Field(min_length=1, max_length=10_000)
    collection: str | None = Field(default=None, min_length=1)


class JobStore:
    """Jobs in SQLite under RAG_DATA_DIR: one host."""

    shared = False

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._open(path)
        except sqlite3.DatabaseError as exc:
            if not damaged(exc):  # locked, full, read-only: the file is sound
                raise
            # Jobs are a batch's progress and results, not records to keep: a damaged file is set
            # aside and the store starts empty, rather than the service not at all.
            self._db.close()
            set_aside(path, "job store", exc)
            self._open(path)
        self._lock = threading.Lock()

    def _open(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA secure_delete=ON")  # an expired job's questions are overwritten
        self._db.executescript(_SCHEMA)
        if "owner" not in {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}:
            self._db.execute("ALTER TABLE jobs ADD COLUMN owner TEXT")  # a store from before API keys

    def create(self, body: JobRequest, owner: str | None = None) -> str:
        job_id = f"job-{uuid.uuid4().hex[:16]}"
        with self._lock, self._db:  # committed, or rolled back on an error (never left open)
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO jobs (id, status, created_at, collection, total, owner) VALUES (?, 'queued', ?, ?, ?, ?)",
                (job_id, time.time(), body.collection, len(body.questions), owner),
            )
            self._db.executemany(
                "INSERT INTO items (job_id, position, request) VALUES (?, ?, ?)",
                [(job_id, i, q.model_dump_json()) for i, q in enumerate(body.questions)],
            )
        return job_id

    def pending(self, job_id: str) -> list[tuple[int, dict[str, Any]]]:
        rows = self._db.execute(
            "SELECT position, request FROM items WHERE job_id = ? AND result IS NULL ORDER BY position", (job_id,)
        )
        return [(int(p), json.loads(r)) for p, r in rows]

    def unfinished(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT id FROM jobs WHERE status IN ('queued', 'running')")]

    def record(self, job_id: str, position: int, result: dict[str, Any]) -> bool:
        """``result`` kept, once; False when the question was erased or its job deleted."""
        with self._lock:
            return bool(
                self._db.execute(  # an erased question's result is set: it stays erased
                    "UPDATE items SET result = ? WHERE job_id = ? AND position = ? AND result IS NULL",
                    (json.dumps(result, ensure_ascii=False), job_id, position),
                ).rowcount
            )

    def still_asked(self, job_id: str, position: int) -> bool:
        """Whether the question still waits for its answer (not erased, its job not deleted)."""
        sql = "SELECT 1 FROM items WHERE job_id = ? AND position = ? AND result IS NULL"
        return self._db.execute(sql, (job_id, position)).fetchone() is not None

    def set_status(self, job_id: str, status: str) -> None:
        with self._lock:
            finished = time.time() if status == "done" else None
            self._db.execute("UPDATE jobs SET status = ?, finished_at = ? WHERE id = ?", (status, finished, job_id))

    def get(self, job_id: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT id, status, created_at, finished_at, collection, total, owner FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        if row is None:
            return None
        results = [json.loads(r) for (r,) in self._db.execute(
            "SELECT result FROM items WHERE job_id = ? AND result IS NOT NULL ORDER BY position", (job_id,)
        )]  # fmt: skip
        return job_body(row, results)

    def expire(self, before: float) -> int:
        """The retention limit: jobs finished before ``before`` (a time.time()), with their
        questions and answers, deleted; how many jobs."""
        finished = "SELECT id FROM jobs WHERE status = 'done' AND finished_at < ?"
        with self._lock:
            with self._db:  # committed, or rolled back on an error (never left open)
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(f"DELETE FROM items WHERE job_id IN ({finished})", (before,))
                gone = self._db.execute(
                    "DELETE FROM jobs WHERE status = 'done' AND finished_at < ?", (before,)
                ).rowcount
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()  # nor left in the WAL
        return int(gone)

    def finished_before(self, before: float) -> int:
        """How many jobs :meth:`expire` would delete."""
        sql = "SELECT count(*) FROM jobs WHERE status = 'done' AND finished_at < ?"
        return int(self._db.execute(sql, (before,)).fetchone()[0])

    def delete(self, job_id: str) -> bool:
        """A job with its questions and results, gone (overwritten, and out of the WAL); whether
        it was there."""
        with self._lock:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("DELETE FROM items WHERE job_id = ?", (job_id,))
                gone = self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return bool(gone)

    def holding(self, text: str, collection: str | None = None) -> dict[str, list[int]]:
        """The jobs (id: positions) with a question, conversation or answer holding ``text``
        (in ``collection``'s jobs, or every job)."""
        found: dict[str, list[int]] = {}
        rows = self._db.execute(
            "SELECT i.job_id, i.position, i.request, i.result FROM items i JOIN jobs j ON j.id = i.job_id "
            "WHERE ? IS NULL OR j.collection = ? ORDER BY i.job_id, i.position",
            (collection, collection),
        )
        for job_id, position, request, result in rows:
            if holds(text, json.loads(request), said(json.loads(result) if result else None)):
                found.setdefault(job_id, []).append(int(position))
        return found

    def forget(self, text: str, collection: str | None = None) -> dict[str, list[int]]:
        """Every question of a job that holds ``text``, with its answer, erased
        (:func:`forgotten`: the job's results stay in order); which ones."""
        with self._lock:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")  # found and erased with no write between
                found = self.holding(text, collection)
                for job_id, positions in found.items():
                    for position in positions:
                        (request,) = self._db.execute(
                            "SELECT request FROM items WHERE job_id = ? AND position = ?", (job_id, position)
                        ).fetchone()
                        erased, result = forgotten(json.loads(request), position)
                        self._db.execute(
                            "UPDATE items SET request = ?, result = ? WHERE job_id = ? AND position = ?",
                            (json.dumps(erased), json.dumps(result), job_id, position),
                        )
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return found

    def close(self) -> None:
        with self._lock:  # not under a sweep or a write still in its thread
            self._db.close()


class JobRunner:
    """Runs jobs in the service's event loop: the ones this replica accepted (SQLite; resumed at
    start-up), or, with a shared store, whichever job is next (:meth:`take_jobs`)."""

    def __init__(
        self,
        store: JobStore | PgJobStore,
        pipeline: Pipeline,
        concurrency: int,
        keep: Callable[[Answer, str, str | None, list[dict[str, str]]], None] | None = None,
        retry_s: float = 300.0,
    ) -> None:
        self.store = store
        self.pipeline = pipeline
        self.keep = keep  # each answer, its question, the job's owner and history: for feedback
        self.retry_s = retry_s
        self._down_since: float | None = None  # when the backend's outage began, as jobs saw it
        self._gate = asyncio.Semaphore(concurrency)  # shared by every job: the service's limit
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: dict[str, asyncio.Task[None]] = {}  # job id: the task running it here
        self._wake = asyncio.Event()

    def _outage_s(self) -> float:
        return 0.0 if self._down_since is None else time.monotonic() - self._down_since

    def _spawn(self, run: Awaitable[None], job_id: str | None = None) -> None:
        task = asyncio.ensure_future(run)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if job_id is not None:
            self._running[job_id] = task
            task.add_done_callback(lambda t: self._running.get(job_id) is t and self._running.pop(job_id))

    def stop(self, job_id: str) -> None:
        """The job no longer runs here (it was deleted): its questions not yet answered are not."""
        task = self._running.pop(job_id, None)
        if task is not None:
            task.cancel()

    def start(self, job_id: str) -> None:
        if self.store.shared:
            self._wake.set()  # the taker picks it up (here, or on another replica first)
        else:
            self._spawn(self._run(job_id), job_id)

    def resume(self) -> None:
        if self.store.shared:
            self._spawn(self.take_jobs())
        else:
            for job_id in self.store.unfinished():
                self._spawn(self._run(job_id), job_id)

    async def take_jobs(self, idle_s: float = 0.5) -> None:
        """With a shared store: take the next job whose lease is free, run it, repeat."""
        assert isinstance(self.store, PgJobStore)
        store = self.store
        while True:
            try:
                job_id = await asyncio.to_thread(store.take) if len(self._tasks) <= 2 else None
            except RagError as exc:  # the database is away: try again shortly
                log.warning("cannot take jobs: %s", exc.message)
                job_id = None
            if job_id is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), idle_s)
                continue
            self._spawn(self._run_leased(job_id), job_id)

    async def _run_leased(self, job_id: str) -> None:
        """Run a job while renewing its lease; stop if the lease is lost."""
        assert isinstance(self.store, PgJobStore)
        store = self.store
        run = asyncio.ensure_future(self._run(job_id))
        try:
            while not run.done():
                await asyncio.wait([run], timeout=store.lease_s / 3)
                if not run.done():
                    try:
                        held = await asyncio.to_thread(store.renew, job_id)
                    except RagError:
                        held = True  # the database is away; the lease may still hold: carry on
                    if not held:
                        run.cancel()
        finally:
            run.cancel()  # shutting down (this task cancelled): the job stops with it; its lease lapses
        with contextlib.suppress(asyncio.CancelledError, RagError):
            await run

    async def _run(self, job_id: str) -> None:
        job = await asyncio.to_thread(self.store.get, job_id)
        collection, owner = (job["collection"], job.get("owner")) if job else (None, None)
        if not self.store.shared:
            self.store.set_status(job_id, "running")

        # Each answer is kept (the answer log, a handoff) only once its result is written: a
        # question erased (rag forget) or a job deleted meanwhile, on any worker, is not.
        given: dict[int, tuple[Answer, str, list[dict[str, str]]]] = {}

        async def answer(item: dict[str, Any]) -> dict[str, Any]:
            position = item["position"]
            try:
                asked = await asyncio.to_thread(self.store.still_asked, job_id, position)
            except RagError:  # the database away: answer it; its result is written only if still asked
                asked = True
            if not asked:
                return {"error": {"code": "forgotten"}}  # not written: the store holds what it holds
            history = item["history"] or []
            # A job is batch work, its caller not waiting on the line: a backend that is down for a
            # while (vLLM restarting; an error that says when to try again) is waited out, backing
            # off, for one RAG_JOB_RETRY_S in all: past it, every question fails at once.
            retrying = AsyncRetrying(
                retry=retry_if_exception(
                    lambda exc: isinstance(exc, BackendUnavailableError) and exc.retry_after_s is not None
                ),
                stop=lambda _: self._outage_s() > self.retry_s,
                wait=wait_exponential(multiplier=0.5, max=15.0),
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    try:
                        answer = await self.pipeline.answer(item["question"], collection, history=history or None)
                    except BackendUnavailableError as exc:
                        if exc.retry_after_s is not None and self._down_since is None:
                            self._down_since = time.monotonic()
                        raise
                    self._down_since = None
            given[position] = (answer, item["question"], history)
            body = answer.to_dict()
            return {k: body[k] for k in ("answer", "citations", "cache", "answer_id", "needs_human")}

        pending = await asyncio.to_thread(self.store.pending, job_id)
        items = [(p, {**item, "id": item.get("id") or str(p), "position": p}) for p, item in pending]

        async def record(position: int, result: dict[str, Any]) -> None:
            written = await asyncio.to_thread(self.store.record, job_id, position, result)  # a database: off the loop
            answered = given.pop(position, None)
            if answered is None:
                return
            answer, question, history = answered
            if written and self.keep is not None:
                self.keep(answer, question, owner, history)
            elif not written and self.pipeline.cache is not None:  # erased while it was answered
                await asyncio.to_thread(self.pipeline.cache.forget, {read_question(question)}, collection)

        await answer_each(items, answer, self._gate, record)
        await asyncio.to_thread(self.store.set_status, job_id, "done")

    async def aclose(self) -> None:
        for task in list(self._tasks):  # unfinished work stays in the store for the next start
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.store.close()


@router.post("/v1/jobs", status_code=202)
async def create_job(body: JobRequest, request: Request) -> dict[str, Any]:
    """Queue questions; returns the job id at once. Poll ``GET /v1/jobs/{id}``."""
    runner: JobRunner = request.app.state.jobs
    pipe: Pipeline = request.app.state.pipeline
    principal = principal_of(request)
    collection = principal.collection_for(body.collection, pipe.settings.collection)
    principal.require_private("batch jobs (one request, up to 10,000 questions)")
    principal.require_collection(collection)
    await pipe.index_for(collection)  # an unknown collection is a 404 now, not later
    resolved = body.model_copy(update={"collection": collection})  # run where it was checked, on any replica
    job_id = await asyncio.to_thread(runner.store.create, resolved, principal.key_id)
    runner.start(job_id)
    return {"id": job_id, "status": "queued", "progress": {"total": len(body.questions), "done": 0, "failed": 0}}


async def _owned_job(request: Request, job_id: str) -> dict[str, Any]:
    """The job, when the caller's key created it or is an admin key; another key's job is as
    good as absent (404), as one that never was."""
    job = await asyncio.to_thread(request.app.state.jobs.store.get, job_id)
    principal = principal_of(request)
    if job is None or (job.pop("owner") != principal.key_id and not principal.admin):
        raise NotFoundError(f"no job {job_id!r}: the id comes from POST /v1/jobs", param="job_id")
    return job  # type: ignore[no-any-return]


@router.get("/v1/jobs/{job_id}")
async def get_job(job_id: str, request: Request) -> dict[str, Any]:
    """Status, progress and, once done, every question's result in order."""
    return await _owned_job(request, job_id)


@router.delete("/v1/jobs/{job_id}")
async def delete_job(job_id: str, request: Request) -> dict[str, Any]:
    """A job with its questions and results deleted (its owner's key, or an admin key); one still
    running stops (here at once; on another worker or replica at its next question, which finds
    itself gone). Its answers stay in the answer log, as every answer does."""
    await _owned_job(request, job_id)
    runner: JobRunner = request.app.state.jobs
    runner.stop(job_id)
    await asyncio.to_thread(runner.store.delete, job_id)
    log.info("job %s deleted", job_id)
    return {"id": job_id, "deleted": True}

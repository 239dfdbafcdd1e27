"""Asynchronous jobs: ``POST /v1/jobs`` with a list of questions returns a job id at once;
``GET /v1/jobs/{id}`` gives status, progress and, when done, the results.

Jobs and each question's result are persisted in SQLite under ``RAG_DATA_DIR/jobs.sqlite``
as they complete, so a restart loses nothing: on start-up, unfinished jobs carry on from
the questions not yet answered. A question that fails is recorded with its error body.
Questions run through the same pipeline as ``/v1/query``, a few at a time
(``RAG_JOB_CONCURRENCY``), so vLLM batches them.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from rag.batch import answer_each
from rag.errors import NotFoundError
from rag.pipeline import Pipeline

from .principals import principal_of

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


class JobQuestion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str
    id: str | None = None
    history: list[dict[str, str]] = Field(default_factory=list, max_length=1000)


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    questions: list[JobQuestion] = Field(min_length=1, max_length=10_000)
    collection: str | None = None


class JobStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        if "owner" not in {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}:
            self._db.execute("ALTER TABLE jobs ADD COLUMN owner TEXT")  # a store from before API keys
        self._lock = threading.Lock()

    def create(self, body: JobRequest, owner: str | None = None) -> str:
        job_id = f"job-{uuid.uuid4().hex[:16]}"
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO jobs (id, status, created_at, collection, total, owner) VALUES (?, 'queued', ?, ?, ?, ?)",
                (job_id, time.time(), body.collection, len(body.questions), owner),
            )
            self._db.executemany(
                "INSERT INTO items (job_id, position, request) VALUES (?, ?, ?)",
                [(job_id, i, q.model_dump_json()) for i, q in enumerate(body.questions)],
            )
            self._db.execute("COMMIT")
        return job_id

    def pending(self, job_id: str) -> list[tuple[int, dict[str, Any]]]:
        rows = self._db.execute(
            "SELECT position, request FROM items WHERE job_id = ? AND result IS NULL ORDER BY position", (job_id,)
        )
        return [(int(p), json.loads(r)) for p, r in rows]

    def unfinished(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT id FROM jobs WHERE status IN ('queued', 'running')")]

    def record(self, job_id: str, position: int, result: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE items SET result = ? WHERE job_id = ? AND position = ?",
                (json.dumps(result, ensure_ascii=False), job_id, position),
            )

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
        failed = sum(1 for r in results if "error" in r)
        job = {
            "id": row[0],
            "status": row[1],
            "created_at": row[2],
            "finished_at": row[3],
            "collection": row[4],
            "progress": {"total": row[5], "done": len(results), "failed": failed},
            "owner": row[6],
        }
        if row[1] == "done":
            job["results"] = results
        return job

    def close(self) -> None:
        self._db.close()


class JobRunner:
    """Runs jobs in the service's event loop; resumes unfinished ones at start-up."""

    def __init__(self, store: JobStore, pipeline: Pipeline, concurrency: int) -> None:
        self.store = store
        self.pipeline = pipeline
        self._gate = asyncio.Semaphore(concurrency)  # shared by every job: the service's limit
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, job_id: str) -> None:
        task = asyncio.create_task(self._run(job_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def resume(self) -> None:
        for job_id in self.store.unfinished():
            self.start(job_id)

    async def _run(self, job_id: str) -> None:
        job = self.store.get(job_id)
        collection = job["collection"] if job else None
        self.store.set_status(job_id, "running")

        async def answer(item: dict[str, Any]) -> dict[str, Any]:
            body = (await self.pipeline.answer(item["question"], collection, history=item["history"] or None)).to_dict()
            return {k: body[k] for k in ("answer", "citations", "cache")}

        items = [(p, {**item, "id": item.get("id") or str(p)}) for p, item in self.store.pending(job_id)]
        await answer_each(items, answer, self._gate, lambda p, result: self.store.record(job_id, p, result))
        self.store.set_status(job_id, "done")

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
    collection = body.collection or pipe.settings.collection
    principal = principal_of(request)
    principal.require_collection(collection)
    pipe.get_index(collection)  # an unknown collection is a 404 now, not later
    job_id = runner.store.create(body, owner=principal.key_id)
    runner.start(job_id)
    return {"id": job_id, "status": "queued", "progress": {"total": len(body.questions), "done": 0, "failed": 0}}


@router.get("/v1/jobs/{job_id}")
async def get_job(job_id: str, request: Request) -> dict[str, Any]:
    """Status, progress and, once done, every question's result in order."""
    job = request.app.state.jobs.store.get(job_id)
    principal = principal_of(request)
    # Another key's job is as good as absent (admin keys see every job).
    if job is not None and job.pop("owner") != principal.key_id and not principal.admin:
        job = None
    if job is None:
        raise NotFoundError(f"no job {job_id!r}: the id comes from POST /v1/jobs", param="job_id")
    return job  # type: ignore[no-any-return]

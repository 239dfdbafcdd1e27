"""Jobs in PostgreSQL (``RAG_DATABASE_URL``): any replica takes the next one, exactly one
worker holds it at a time, and a job whose worker died is taken again. How the runner uses
it: :class:`serving.jobs.JobRunner`; the schema: :mod:`serving.database`."""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any

from psycopg.types.json import Jsonb

from rag.errors import error_body

from .database import Database

if TYPE_CHECKING:
    from .jobs import JobRequest

# The oldest job that is queued, or running under a lease that ran out (its worker died),
# locked for this transaction only; other replicas skip it rather than wait.
_TAKE = """
UPDATE jobs SET status = 'running', worker = %(worker)s, attempts = attempts + 1,
                lease_until = now() + make_interval(secs => %(lease)s)
WHERE id = (
    SELECT id FROM jobs
    WHERE status = 'queued' OR (status = 'running' AND lease_until < now())
    ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED
)
RETURNING id
"""


def job_body(row: Any, results: list[dict[str, Any]]) -> dict[str, Any]:
    """GET /v1/jobs/{id}'s body (plus ``owner``) from a job's row (id, status, created_at,
    finished_at, collection, total, owner) and its results so far, in order: both stores'."""
    job: dict[str, Any] = {
        "id": row[0],
        "status": row[1],
        "created_at": row[2],
        "finished_at": row[3],
        "collection": row[4],
        "progress": {"total": row[5], "done": len(results), "failed": sum(1 for r in results if "error" in r)},
        "owner": row[6],
    }
    if row[1] == "done":
        job["results"] = results
    return job


def holds(text: str, *values: Any) -> bool:
    """Whether any string inside ``values`` (a question's request and result, as JSON) holds
    ``text``, in any case: what an erasure request searches jobs for."""
    needle = text.lower()

    def strings(value: Any) -> Any:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)

    return any(needle in s.lower() for v in values for s in strings(v))


def said(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """What of a result an erasure searches: the question and the answer given, not the cited
    passages (the documents' words) nor the metadata."""
    return None if result is None else {k: result.get(k) for k in ("question", "answer")}


def forgotten(request: dict[str, Any], position: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A question of a job, and its result, once an erasure request has reached it: the words
    gone, the caller's id kept (the job's results stay in order), the result a failure that
    says why. Its result is set even while it waits, so no worker answers it afterwards."""
    request = {"question": "", "id": request.get("id"), "history": []}
    message = "this question was erased at the customer's request (rag forget), with its answer"
    result = {
        "id": request["id"] or str(position),
        "question": "",
        **error_body(message, "invalid_request_error", None, "forgotten"),
    }
    return request, result


class PgJobStore:
    """The job store the runner shares with every replica. Writes about a job are made only
    while this worker holds its lease, and each question's result only once."""

    shared = True

    def __init__(self, database: Database, lease_s: float = 30.0) -> None:
        self.db = database
        self.lease_s = lease_s
        # This runner, for as long as the process lives: which host and process holds a job.
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"

    def create(self, body: JobRequest, owner: str | None = None) -> str:
        job_id = f"job-{uuid.uuid4().hex[:16]}"

        def insert(conn: Any) -> None:
            with conn.transaction():
                conn.execute(
                    "INSERT INTO jobs (id, status, created_at, collection, total, owner) "
                    "VALUES (%s, 'queued', %s, %s, %s, %s)",
                    (job_id, time.time(), body.collection, len(body.questions), owner),
                )
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO job_items (job_id, position, request) VALUES (%s, %s, %s)",
                        [(job_id, i, Jsonb(q.model_dump())) for i, q in enumerate(body.questions)],
                    )

        self.db.run(insert)
        return job_id

    def take(self) -> str | None:
        """The next job for this worker (now leased to it), or None."""
        row = self.db.run(lambda c: c.execute(_TAKE, {"worker": self.worker, "lease": self.lease_s}).fetchone())
        return None if row is None else str(row[0])

    def renew(self, job_id: str) -> bool:
        """Extend this worker's lease; False when it has lost the job (its lease ran out and
        another worker took it)."""
        sql = (
            "UPDATE jobs SET lease_until = now() + make_interval(secs => %s) "
            "WHERE id = %s AND worker = %s AND status = 'running'"
        )
        return bool(self.db.run(lambda c: c.execute(sql, (self.lease_s, job_id, self.worker)).rowcount))

    def pending(self, job_id: str) -> list[tuple[int, dict[str, Any]]]:
        sql = "SELECT position, request FROM job_items WHERE job_id = %s AND result IS NULL ORDER BY position"
        return [(int(p), dict(r)) for p, r in self.db.run(lambda c: c.execute(sql, (job_id,)).fetchall())]

    def unfinished(self) -> list[str]:
        sql = "SELECT id FROM jobs WHERE status IN ('queued', 'running')"
        return [r[0] for r in self.db.run(lambda c: c.execute(sql).fetchall())]

    def record(self, job_id: str, position: int, result: dict[str, Any]) -> bool:
        """As :meth:`serving.jobs.JobStore.record` (and only while this worker holds the job)."""
        sql = (
            "UPDATE job_items SET result = %s WHERE job_id = %s AND position = %s AND result IS NULL "
            "AND EXISTS (SELECT 1 FROM jobs WHERE id = %s AND worker = %s AND status = 'running')"
        )
        return bool(
            self.db.run(lambda c: c.execute(sql, (Jsonb(result), job_id, position, job_id, self.worker)).rowcount)
        )

    def still_asked(self, job_id: str, position: int) -> bool:
        """As :meth:`serving.jobs.JobStore.still_asked`."""
        sql = "SELECT 1 FROM job_items WHERE job_id = %s AND position = %s AND result IS NULL"
        return bool(self.db.run(lambda c: c.execute(sql, (job_id, position)).fetchall()))

    def set_status(self, job_id: str, status: str) -> None:
        finished = time.time() if status == "done" else None
        sql = "UPDATE jobs SET status = %s, finished_at = %s, lease_until = NULL WHERE id = %s AND worker = %s"
        self.db.run(lambda c: c.execute(sql, (status, finished, job_id, self.worker)))

    def get(self, job_id: str) -> dict[str, Any] | None:
        def read(conn: Any) -> tuple[Any, list[Any]]:
            row = conn.execute(
                "SELECT id, status, created_at, finished_at, collection, total, owner FROM jobs WHERE id = %s",
                (job_id,),
            ).fetchone()
            results = conn.execute(
                "SELECT result FROM job_items WHERE job_id = %s AND result IS NOT NULL ORDER BY position", (job_id,)
            ).fetchall()
            return row, [r[0] for r in results]

        row, results = self.db.run(read)
        return None if row is None else job_body(row, results)

    def expire(self, before: float) -> int:
        """As :meth:`serving.jobs.JobStore.expire`."""
        finished = "SELECT id FROM jobs WHERE status = 'done' AND finished_at < %s"

        def run(conn: Any) -> int:
            with conn.transaction():
                conn.execute(f"DELETE FROM job_items WHERE job_id IN ({finished})", (before,))
                return int(
                    conn.execute("DELETE FROM jobs WHERE status = 'done' AND finished_at < %s", (before,)).rowcount
                )

        return int(self.db.run(run))

    def finished_before(self, before: float) -> int:
        """As :meth:`serving.jobs.JobStore.finished_before`."""
        sql = "SELECT count(*) FROM jobs WHERE status = 'done' AND finished_at < %s"
        rows = self.db.run(lambda c: c.execute(sql, (before,)).fetchall())
        return int(rows[0][0])

    def delete(self, job_id: str) -> bool:
        """A job with its questions and results, gone (its worker, if any, loses its lease and
        stops); whether it was there."""

        def run(conn: Any) -> bool:
            with conn.transaction():  # the items go with the job (ON DELETE CASCADE)
                return bool(conn.execute("DELETE FROM jobs WHERE id = %s", (job_id,)).rowcount)

        return bool(self.db.run(run))

    def holding(self, text: str, collection: str | None = None) -> dict[str, list[int]]:
        """As :meth:`serving.jobs.JobStore.holding`."""
        # The JSON's text is matched: the needle as JSON writes it (a quote as \", a backslash doubled).
        pattern = "%" + re.sub(r"([\\%_])", r"\\\1", json.dumps(text, ensure_ascii=False)[1:-1]) + "%"
        sql = (
            "SELECT i.job_id, i.position, i.request, i.result FROM job_items i JOIN jobs j ON j.id = i.job_id "
            "WHERE (i.request::text ILIKE %(p)s OR COALESCE(i.result::text, '') ILIKE %(p)s) "
            "AND (%(c)s::text IS NULL OR j.collection = %(c)s) ORDER BY i.job_id, i.position"
        )
        found: dict[str, list[int]] = {}
        rows = self.db.run(lambda c: c.execute(sql, {"p": pattern, "c": collection}).fetchall())
        for job_id, position, request, result in rows:
            if holds(text, request, said(result)):  # as the SQLite store reads it (ILIKE read the JSON's text)
                found.setdefault(job_id, []).append(int(position))
        return found

    def forget(self, text: str, collection: str | None = None) -> dict[str, list[int]]:
        """As :meth:`serving.jobs.JobStore.forget`."""
        found = self.holding(text, collection)

        def run(conn: Any) -> None:
            with conn.transaction():
                for job_id, positions in found.items():
                    for position in positions:
                        row = conn.execute(
                            "SELECT request FROM job_items WHERE job_id = %s AND position = %s", (job_id, position)
                        ).fetchone()
                        if row is not None:
                            request, result = forgotten(dict(row[0]), position)
                            conn.execute(
                                "UPDATE job_items SET request = %s, result = %s WHERE job_id = %s AND position = %s",
                                (Jsonb(request), Jsonb(result), job_id, position),
                            )

        self.db.run(run)
        return found

    def close(self) -> None:
        return None  # the database is the app's, closed with it

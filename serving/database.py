"""PostgreSQL for the durable state every replica shares (``RAG_DATABASE_URL``): API keys,
jobs, and the support loop's answers and feedback. The schema lives here, as numbered migrations that each replica runs at start-up (one
at a time, under an advisory lock; each in its own transaction, recorded in
``schema_migrations``). Add a migration by appending to :data:`MIGRATIONS`; never edit one
that has shipped.

A database that cannot be reached is :class:`rag.errors.DatabaseUnavailableError` (503 in the
one error shape), never a 500.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from rag.errors import DatabaseUnavailableError

log = logging.getLogger("rag.serving")
T = TypeVar("T")
_LOCK_ID = 0x7261675F6462  # "rag_db": the advisory lock migrations run under

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE keys (
            id TEXT PRIMARY KEY, name TEXT, hash TEXT NOT NULL, collections JSONB NOT NULL,
            admin BOOLEAN NOT NULL, created_at DOUBLE PRECISION NOT NULL, revoked_at DOUBLE PRECISION
        );
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY, status TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
            finished_at DOUBLE PRECISION, collection TEXT, total INTEGER NOT NULL, owner TEXT,
            worker TEXT, lease_until TIMESTAMPTZ, attempts INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX jobs_waiting ON jobs (created_at) WHERE status IN ('queued', 'running');
        CREATE TABLE job_items (
            job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE, position INTEGER NOT NULL,
            request JSONB NOT NULL, result JSONB, PRIMARY KEY (job_id, position)
        );
        """,
    ),
    (
        2,
        """
        CREATE TABLE answers (
            id TEXT PRIMARY KEY, created_at DOUBLE PRECISION NOT NULL, collection TEXT NOT NULL, key_id TEXT,
            question TEXT NOT NULL, answer TEXT NOT NULL, answer_kind TEXT NOT NULL, cache_kind TEXT,
            similarity DOUBLE PRECISION, cache_ref TEXT, cache_scope TEXT, cache_group TEXT NOT NULL,
            latency_ms DOUBLE PRECISION NOT NULL, needs_human TEXT, citations TEXT NOT NULL
        );
        CREATE INDEX answers_stats ON answers (collection, created_at) INCLUDE (answer_kind, cache_kind, latency_ms, id);
        CREATE INDEX answers_unanswered ON answers (collection, answer_kind, created_at) INCLUDE (question);
        CREATE TABLE feedback (
            id TEXT PRIMARY KEY, answer_id TEXT NOT NULL, collection TEXT NOT NULL, rating TEXT NOT NULL,
            reason TEXT, correction TEXT, key_id TEXT, created_at DOUBLE PRECISION NOT NULL, evicted INTEGER,
            block_id TEXT
        );
        CREATE INDEX feedback_by_day ON feedback (collection, created_at);
        CREATE INDEX feedback_of_answer ON feedback (answer_id);
        """,
    ),
    (
        3,
        """
        CREATE TABLE curated (
            id TEXT PRIMARY KEY, collection TEXT NOT NULL, question TEXT NOT NULL, answer TEXT NOT NULL,
            citations TEXT NOT NULL, version INTEGER NOT NULL, status TEXT NOT NULL, source TEXT NOT NULL,
            review_reason TEXT, created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
            updated_by TEXT
        );
        CREATE INDEX curated_of_collection ON curated (collection, status);
        CREATE TABLE curated_audit (
            id TEXT PRIMARY KEY, curated_id TEXT NOT NULL, version INTEGER NOT NULL, at DOUBLE PRECISION NOT NULL,
            who TEXT, action TEXT NOT NULL, before TEXT, after TEXT
        );
        CREATE INDEX curated_audit_of ON curated_audit (curated_id, at);
        """,
    ),
    (
        4,
        """
        CREATE TABLE hit_verdicts (answer_id TEXT PRIMARY KEY, verdict TEXT NOT NULL);
        """,
    ),
    (
        5,
        """
        CREATE TABLE handoffs (
            id TEXT PRIMARY KEY, created_at DOUBLE PRECISION NOT NULL, payload TEXT NOT NULL, owner TEXT,
            lease_until DOUBLE PRECISION NOT NULL, given_up TEXT
        );
        CREATE INDEX handoffs_waiting ON handoffs (lease_until) WHERE given_up IS NULL;
        """,
    ),
    (
        6,
        """
        CREATE TABLE answer_history (answer_id TEXT PRIMARY KEY, turns TEXT NOT NULL);
        CREATE TABLE cache_blocks (id TEXT PRIMARY KEY, scope_key TEXT NOT NULL, block TEXT NOT NULL);
        CREATE TABLE pending_cache_work (key TEXT PRIMARY KEY, created_at DOUBLE PRECISION NOT NULL);
        """,
    ),
    (7, "ALTER TABLE keys ADD COLUMN public BOOLEAN NOT NULL DEFAULT FALSE;"),
]


class Database:
    """A small connection pool on one PostgreSQL database, migrated on first use."""

    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        self.url = url
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=8,
            open=False,
            timeout=timeout_s,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(timeout_s))},
            check=ConnectionPool.check_connection,
            reconnect_timeout=0,  # keep trying while the database is away; requests get a 503
        )
        self._migrated = False
        self.fail_fast_s = 1.0  # after a failure, fail at once for this long rather than wait again
        self._down_until = 0.0

    def open(self) -> Database:
        self.pool.open(wait=False)
        return self

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; an unreachable database is a 503 that says which."""
        if time.monotonic() < self._down_until:
            raise DatabaseUnavailableError(
                f"the database (RAG_DATABASE_URL) was unreachable less than {self.fail_fast_s:g} s ago"
            )
        try:
            with self.pool.connection() as conn:
                if not self._migrated:
                    migrate(conn)
                    self._migrated = True
                yield conn
        except (psycopg.OperationalError, psycopg.errors.AdminShutdown) as exc:
            self._down_until = time.monotonic() + self.fail_fast_s
            raise DatabaseUnavailableError(
                f"the database (RAG_DATABASE_URL) is unreachable: {_first_line(exc)}"
            ) from exc
        except Exception as exc:
            if type(exc).__name__ == "PoolTimeout":
                self._down_until = time.monotonic() + self.fail_fast_s
                raise DatabaseUnavailableError(f"the database (RAG_DATABASE_URL) is unreachable: {exc}") from exc
            raise

    def run(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        with self.connection() as conn:
            return fn(conn)

    def ping(self) -> None:
        self.run(lambda conn: conn.execute("SELECT 1"))

    def close(self) -> None:
        self.pool.close()


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def migrate(conn: psycopg.Connection[Any]) -> list[int]:
    """Run the migrations this database has not had, in order; returns their numbers."""
    done: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for version, sql in MIGRATIONS:
            if version in applied:
                continue
            conn.execute(sql)  # type: ignore[arg-type]
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            done.append(version)
    if done:
        log.info("database migrated to version %d", done[-1])
    return done

"""The support loop's records: every answer the service gave (the question, what it said and
from where, how fast, whether it wants a person) and the feedback people gave on them.

SQLite in ``RAG_DATA_DIR/support.sqlite`` by default; PostgreSQL with ``RAG_DATABASE_URL``
(every replica writes the same tables; their schema is migration 2 in
:mod:`serving.database`). Answers are written off the request path: queued, and written by
a thread in one transaction every 0.2 s (:meth:`SupportStore.flush` writes them now). Feedback is
written before its response is sent.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from cache.stores import damaged
from rag.errors import StoreDamagedError

if TYPE_CHECKING:
    from rag.wire import Answer

    from .database import Database

log = logging.getLogger("rag.serving")
SUPPORT_FILE = "support.sqlite"

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    id TEXT PRIMARY KEY, created_at REAL NOT NULL, collection TEXT NOT NULL, key_id TEXT,
    question TEXT NOT NULL, answer TEXT NOT NULL, answer_kind TEXT NOT NULL, cache_kind TEXT,
    similarity REAL, cache_ref TEXT, cache_scope TEXT, cache_group TEXT NOT NULL,
    latency_ms REAL NOT NULL, needs_human TEXT, citations TEXT NOT NULL
);
-- The report reads these without touching the rows (covering indexes).
CREATE INDEX IF NOT EXISTS answers_stats ON answers (collection, created_at, answer_kind, cache_kind, latency_ms, id);
CREATE INDEX IF NOT EXISTS answers_unanswered ON answers (collection, answer_kind, created_at, question);
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY, answer_id TEXT NOT NULL, collection TEXT NOT NULL, rating TEXT NOT NULL,
    reason TEXT, correction TEXT, key_id TEXT, created_at REAL NOT NULL, evicted INTEGER, block_id TEXT
);
CREATE INDEX IF NOT EXISTS feedback_by_day ON feedback (collection, created_at);
CREATE INDEX IF NOT EXISTS feedback_of_answer ON feedback (answer_id);
CREATE TABLE IF NOT EXISTS curated (
    id TEXT PRIMARY KEY, collection TEXT NOT NULL, question TEXT NOT NULL, answer TEXT NOT NULL,
    citations TEXT NOT NULL, version INTEGER NOT NULL, status TEXT NOT NULL, source TEXT NOT NULL,
    review_reason TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL, updated_by TEXT
);
CREATE INDEX IF NOT EXISTS curated_of_collection ON curated (collection, status);
CREATE TABLE IF NOT EXISTS curated_audit (
    id TEXT PRIMARY KEY, curated_id TEXT NOT NULL, version INTEGER NOT NULL, at REAL NOT NULL, who TEXT,
    action TEXT NOT NULL, before TEXT, after TEXT
);
CREATE INDEX IF NOT EXISTS curated_audit_of ON curated_audit (curated_id, at);
CREATE TABLE IF NOT EXISTS hit_verdicts (answer_id TEXT PRIMARY KEY, verdict TEXT NOT NULL);
-- A copy of each thumbs-down's cache block, to put back into a cache store that lost it.
CREATE TABLE IF NOT EXISTS cache_blocks (id TEXT PRIMARY KEY, scope_key TEXT NOT NULL, block TEXT NOT NULL);
-- Cache work waiting for the cache's store to come back (serving/restore.py): a thumbs-down's
-- eviction, a curated answer's change.
CREATE TABLE IF NOT EXISTS pending_cache_work (key TEXT PRIMARY KEY, created_at REAL NOT NULL);
-- The conversation before an answer (its history), for the handoff of a later thumbs-down.
CREATE TABLE IF NOT EXISTS answer_history (answer_id TEXT PRIMARY KEY, turns TEXT NOT NULL);
-- The handoffs not delivered yet (serving/handoff.py's Outbox); a delivered one is deleted.
CREATE TABLE IF NOT EXISTS handoffs (
    id TEXT PRIMARY KEY, created_at REAL NOT NULL, payload TEXT NOT NULL, owner TEXT,
    lease_until REAL NOT NULL, given_up TEXT
);
CREATE INDEX IF NOT EXISTS handoffs_waiting ON handoffs (lease_until) WHERE given_up IS NULL;
"""

_ANSWER_COLUMNS = (
    "id, created_at, collection, key_id, question, answer, answer_kind, cache_kind, similarity, "
    "cache_ref, cache_scope, cache_group, latency_ms, needs_human, citations"
)
_FEEDBACK_COLUMNS = "id, answer_id, collection, rating, reason, correction, key_id, created_at, evicted, block_id"


@dataclass
class AnswerRecord:
    id: str
    created_at: float
    collection: str
    key_id: str | None
    question: str
    answer: str
    answer_kind: str
    cache_kind: str | None
    similarity: float | None
    cache_ref: str | None
    cache_scope: str | None
    cache_group: str
    latency_ms: float
    needs_human: str | None
    citations: list[dict[str, Any]]
    conversation: list[dict[str, str]] = field(default_factory=list)  # kept beside (answer_history)

    @classmethod
    def of(
        cls, answer: Answer, question: str, key_id: str | None, conversation: list[dict[str, str]] | None = None
    ) -> AnswerRecord:
        return cls(
            answer.answer_id, time.time(), answer.collection, key_id, question, answer.answer, answer.answer_kind,
            answer.cache.kind, answer.cache.similarity, answer.cache_ref, answer.cache_scope, answer.cache_group(),
            float(answer.timings_ms.get("total", 0.0)), answer.handoff_reason(),
            [asdict(c) for c in answer.citations], conversation or [],
        )  # fmt: skip

    def row(self) -> tuple[Any, ...]:
        values = asdict(self)
        values["citations"] = json.dumps(self.citations, ensure_ascii=False)
        del values["conversation"]
        return tuple(values.values())

    def history_row(self) -> tuple[Any, ...] | None:
        return (self.id, json.dumps(self.conversation, ensure_ascii=False)) if self.conversation else None

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> AnswerRecord:
        record = cls(*row)
        record.citations = json.loads(row[-1]) if isinstance(row[-1], str) else row[-1]
        return record


@dataclass
class Feedback:
    answer_id: str
    collection: str
    rating: str
    reason: str | None
    correction: str | None
    key_id: str | None
    created_at: float = field(default_factory=time.time)
    evicted: int | None = None
    block_id: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def row(self) -> tuple[Any, ...]:
        return (
            self.id, self.answer_id, self.collection, self.rating, self.reason, self.correction, self.key_id,
            self.created_at, self.evicted, self.block_id,
        )  # fmt: skip


def _chain(execute: Callable[[str, tuple[Any, ...]], int], statements: list[tuple[str, tuple[Any, ...]]]) -> list[int]:
    """Run ``statements`` in order while each changes a row; the rows each changed (0 for the rest)."""
    changed: list[int] = []
    for sql, params in statements:
        changed.append(execute(sql, params) if not changed or changed[-1] > 0 else 0)
    return changed


class _Sqlite:
    def __init__(self, path: Path, timeout_s: float = 5.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, timeout=timeout_s, check_same_thread=False, isolation_level=None)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at each checkpoint, never torn
            self._conn.execute("PRAGMA secure_delete=ON")  # a forgotten customer's words are overwritten
            # LOWER as Python's (SQLite's folds ASCII only): "MÜLLER" is found by "müller".
            self._conn.create_function("lower", 1, lambda s: s.lower() if isinstance(s, str) else s, deterministic=True)
            self._conn.executescript(SQLITE_SCHEMA)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            if not damaged(exc):  # locked, full, read-only: the file is sound
                raise
            raise StoreDamagedError(
                f"{path.name} in the data dir is damaged ({exc}) - put it back from a `rag backup` copy (it holds "
                "the answers given, their feedback and the curated answers), or move it aside to start without them"
            ) from None
        self._lock = threading.Lock()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def write(self, sql: str, rows: list[tuple[Any, ...]], *more: tuple[str, list[tuple[Any, ...]]]) -> None:
        """``rows`` into ``sql`` (and each of ``more``'s), in one transaction."""
        with self._lock, self._conn:
            self._conn.execute("BEGIN")
            for statement, values in ((sql, rows), *more):
                if values:
                    self._conn.executemany(statement, values)

    def apply(self, statements: list[tuple[str, tuple[Any, ...]]]) -> list[int]:
        """Statements in one transaction, each only if the one before changed a row (an
        UPDATE that lost a race writes no audit row); the rows each changed."""
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            return _chain(lambda sql, params: int(self._conn.execute(sql, params).rowcount), statements)

    def run_all(self, statements: list[tuple[str, Sequence[Any]]]) -> list[int]:
        """Statements in one transaction, all of them; the rows each changed."""
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            return [int(self._conn.execute(sql, params).rowcount) for sql, params in statements]

    def checkpoint(self) -> None:
        """What was deleted out of the write-ahead log too (secure_delete zeroed it in the file)."""
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def close(self) -> None:
        # Under the lock: a worker thread still in a query (a background check cancelled at
        # shutdown keeps its thread) gets "closed database", never a connection freed under it
        # (a segfault, on one CI run).
        with self._lock:
            self._conn.close()


class _Postgres:
    def __init__(self, database: Database) -> None:
        self.db = database

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.db.run(lambda c: c.execute(sql.replace("?", "%s"), params).fetchall())  # type: ignore[arg-type]

    def write(self, sql: str, rows: list[tuple[Any, ...]], *more: tuple[str, list[tuple[Any, ...]]]) -> None:
        """As :meth:`_Sqlite.write`."""

        def run(conn: Any) -> None:
            with conn.transaction():
                for statement, values in ((sql, rows), *more):
                    if values:
                        conn.cursor().executemany(statement.replace("?", "%s"), values)

        self.db.run(run)

    def apply(self, statements: list[tuple[str, tuple[Any, ...]]]) -> list[int]:
        """As :meth:`_Sqlite.apply`."""

        def run(conn: Any) -> list[int]:
            with conn.transaction():
                return _chain(
                    lambda sql, params: int(conn.execute(sql.replace("?", "%s"), params).rowcount), statements
                )

        return self.db.run(run)

    def run_all(self, statements: list[tuple[str, Sequence[Any]]]) -> list[int]:
        """As :meth:`_Sqlite.run_all`."""

        def run(conn: Any) -> list[int]:
            with conn.transaction():
                return [int(conn.execute(sql.replace("?", "%s"), params).rowcount) for sql, params in statements]

        return self.db.run(run)

    def checkpoint(self) -> None:
        return None  # PostgreSQL's own VACUUM reclaims deleted rows

    def close(self) -> None:
        return None  # the app closes the database it shares


# What a database says of one row's contents, never of its own state.
_ROW_ERRORS = (sqlite3.DataError, sqlite3.IntegrityError, psycopg.DataError, psycopg.IntegrityError)
MAX_UNWRITTEN = 100_000  # answers held in memory while the database is away (~1 KB each)


class SupportStore:
    def __init__(self, sql: _Sqlite | _Postgres, flush_s: float = 0.2) -> None:
        self.sql = sql
        self._pending: queue.SimpleQueue[AnswerRecord] = queue.SimpleQueue()
        self._unwritten: list[AnswerRecord] = []  # taken from the queue, kept until written
        self._write_lock = threading.Lock()
        self._closing = threading.Event()
        self._flush_s = flush_s
        self.failing_since: float | None = None
        """When (time.monotonic) writing the answers began to fail, while it fails: `/readyz`."""
        self._writer = threading.Thread(target=self._write_loop, name="rag-support-writer", daemon=True)
        self._writer.start()

    def record(self, answer: AnswerRecord) -> None:
        """Queue an answer for writing (never waits on the database)."""
        self._pending.put(answer)

    def flush(self) -> None:
        """Write the queued answers. If the database fails, they stay for the next try (the
        insert ignores ids already written); past MAX_UNWRITTEN the oldest are given up."""
        with self._write_lock:
            while not self._pending.empty():
                self._unwritten.append(self._pending.get_nowait())
            if len(self._unwritten) > MAX_UNWRITTEN:
                log.error(
                    "support store: %d answers dropped, the database is away", len(self._unwritten) - MAX_UNWRITTEN
                )
                del self._unwritten[:-MAX_UNWRITTEN]
            if self._unwritten:
                self._write_unwritten()

    def _write_unwritten(self) -> None:
        """One batch. If the database refuses a row for its contents (a value it cannot store),
        one row at a time: a row it will never take is logged and given up, so that it cannot
        hold back every answer after it. Any other failure (away, read-only, a migration not
        run yet) keeps them all for the next try."""
        try:
            self._write(self._unwritten)
        except _ROW_ERRORS:
            for done, record in enumerate(list(self._unwritten)):
                try:
                    self._write([record])
                except _ROW_ERRORS:
                    log.exception("support store: answer %s cannot be written, given up", record.id)
                except Exception:
                    del self._unwritten[:done]  # the rest wait for the next try
                    raise
        self._unwritten.clear()

    def _write(self, records: list[AnswerRecord]) -> None:
        sql = f"INSERT INTO answers ({_ANSWER_COLUMNS}) VALUES ({', '.join('?' * 15)}) ON CONFLICT DO NOTHING"
        histories = [row for r in records if (row := r.history_row()) is not None]
        history_sql = "INSERT INTO answer_history (answer_id, turns) VALUES (?, ?) ON CONFLICT DO NOTHING"
        self.sql.write(sql, [r.row() for r in records], (history_sql, histories))  # one transaction

    def keep_block(self, scope_key: str, block: dict[str, Any]) -> None:
        """A copy of a cache block (cache.blocks), for a store that loses it."""
        sql = "INSERT INTO cache_blocks (id, scope_key, block) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
        self.sql.write(sql, [(block["id"], scope_key, json.dumps(block))])

    def defer(self, key: str) -> None:
        """Cache work to do when the cache's store is back (``evict:ANSWER``, ``sync:COLLECTION``,
        ``drop:[collection, question, curated id]``: :func:`serving.restore.catch_up`)."""
        sql = "INSERT INTO pending_cache_work (key, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING"
        self.sql.write(sql, [(key, time.time())])

    def deferred(self) -> list[str]:
        return [row[0] for row in self.sql.query("SELECT key FROM pending_cache_work ORDER BY created_at")]

    def done(self, key: str) -> None:
        self.sql.write("DELETE FROM pending_cache_work WHERE key = ?", [(key,)])

    def lift_block(self, block_id: str) -> None:
        self.sql.write("DELETE FROM cache_blocks WHERE id = ?", [(block_id,)])
        self.sql.checkpoint()  # the block holds a customer's question: gone from the WAL too

    def rekey_block(self, block_id: str, scope_key: str) -> None:
        self.sql.write("UPDATE cache_blocks SET scope_key = ? WHERE id = ?", [(scope_key, block_id)])

    def forget(self, answer_ids: Sequence[str]) -> dict[str, int]:
        """Everything kept about these answers (an erasure request): the answer log's rows,
        the conversation before each, the votes and feedback on them, their handoffs waiting or
        given up. The rows deleted, by table."""
        self.flush()  # an answer still queued would be written after
        counts = dict.fromkeys(("answers", "answer_history", "hit_verdicts", "feedback", "handoffs"), 0)
        ids = list(answer_ids)
        for chunk in (ids[n : n + 200] for n in range(0, len(ids), 200)):
            for table, n in self._delete_answers(chunk).items():
                counts[table] += n
        self.sql.checkpoint()
        return counts

    def _delete_answers(self, ids: Sequence[str]) -> dict[str, int]:
        """These answers and what hangs on them (conversation, votes, feedback, handoffs: a
        handoff's id is ANSWER-REASON), in one transaction."""
        marks = ", ".join("?" * len(ids))
        tables = ("answer_history", "hit_verdicts", "feedback", "handoffs", "answers")
        changed = self.sql.run_all([
            (f"DELETE FROM answer_history WHERE answer_id IN ({marks})", ids),
            (f"DELETE FROM hit_verdicts WHERE answer_id IN ({marks})", ids),
            (f"DELETE FROM feedback WHERE answer_id IN ({marks})", ids),
            (f"DELETE FROM handoffs WHERE {' OR '.join(['id LIKE ?'] * len(ids))}", [f"{i}-%" for i in ids]),
            (f"DELETE FROM answers WHERE id IN ({marks})", ids),
        ])  # fmt: skip
        return dict(zip(tables, changed, strict=True))

    def answers_holding(self, text: str, collection: str | None = None) -> list[AnswerRecord]:
        """The answers whose question, conversation or feedback holds ``text`` (any case): a
        customer's name, e-mail address or order number, for an erasure request."""
        self.flush()
        pattern = "%" + re.sub(r"([\\%_])", r"\\\1", text.lower()) + "%"  # the text itself, not a LIKE pattern
        like = "LIKE ? ESCAPE '\\'"
        feedback = "LOWER(COALESCE(reason, '') || ' ' || COALESCE(correction, ''))"
        where = (
            f"(LOWER(a.question) {like} OR a.id IN (SELECT answer_id FROM answer_history WHERE LOWER(turns) {like})"
            f" OR a.id IN (SELECT answer_id FROM feedback WHERE {feedback} {like}))"
        )
        params: list[Any] = [pattern] * 3
        if collection is not None:
            where += " AND a.collection = ?"
            params.append(collection)
        columns = ", ".join(f"a.{c.strip()}" for c in _ANSWER_COLUMNS.split(","))
        sql = f"SELECT {columns} FROM answers a WHERE {where} ORDER BY a.created_at"
        return [AnswerRecord.from_row(row) for row in self.sql.query(sql, params)]

    def expire(self, before: float, batch: int = 1000) -> dict[str, int]:
        """The retention limit: answers, their conversations, votes and feedback, and given-up
        handoffs, older than ``before`` (a time.time()) deleted, ``batch`` answers a transaction
        (months of them at once would hold the database's write lock past other writers'
        patience). The rows deleted, by table."""
        counts = dict.fromkeys(("answers", "answer_history", "hit_verdicts", "feedback", "handoffs"), 0)
        old = f"SELECT id FROM answers WHERE created_at < ? LIMIT {int(batch)}"
        while True:
            ids = [row[0] for row in self.sql.query(old, (before,))]
            if not ids:
                break
            for table, n in self._delete_answers(ids).items():
                counts[table] += n
        tail = self.sql.run_all([
            ("DELETE FROM feedback WHERE created_at < ?", (before,)),
            ("DELETE FROM handoffs WHERE given_up IS NOT NULL AND created_at < ?", (before,)),
        ])  # fmt: skip
        counts["feedback"] += tail[0]
        counts["handoffs"] += tail[1]
        self.sql.checkpoint()
        return counts

    def older(self, before: float) -> dict[str, int]:
        """What :meth:`expire` would delete, counted: the answers, the feedback (older, or on an
        answer that goes) and the given-up handoffs older (an answer's own go with it)."""
        self.flush()
        old = "SELECT id FROM answers WHERE created_at < ?"
        counts = {}
        for name, where, params in (
            ("answers", "answers WHERE created_at < ?", (before,)),
            ("feedback", f"feedback WHERE created_at < ? OR answer_id IN ({old})", (before, before)),
            ("handoffs", "handoffs WHERE given_up IS NOT NULL AND created_at < ?", (before,)),
        ):
            counts[name] = int(self.sql.query(f"SELECT count(*) FROM {where}", params)[0][0])
        return counts

    def voted_down_scopes(self) -> list[str]:
        """The cache scopes of the answers voted down (a block's scope, made then or later)."""
        sql = (
            "SELECT DISTINCT a.cache_scope FROM feedback f JOIN answers a ON a.id = f.answer_id "
            "WHERE f.rating = 'down' AND a.cache_scope IS NOT NULL"
        )
        return [scope for (scope,) in self.sql.query(sql)]

    def blocks(self) -> list[tuple[str, dict[str, Any]]]:
        return [
            (skey, json.loads(block)) for skey, block in self.sql.query("SELECT scope_key, block FROM cache_blocks")
        ]

    def conversation(self, answer_id: str) -> list[dict[str, str]]:
        """The conversation before the answer (its history), as the route was given it."""
        rows = self.sql.query("SELECT turns FROM answer_history WHERE answer_id = ?", (answer_id,))
        return list(json.loads(rows[0][0])) if rows else []

    def _write_loop(self) -> None:
        said_at = 0.0
        while not self._closing.wait(self._flush_s):
            try:
                self.flush()
            except Exception as exc:  # the database is away, a full disk: the answers wait in memory
                now = time.monotonic()
                if self.failing_since is None:  # the first time with its traceback, then a line a minute
                    self.failing_since = said_at = now
                    log.exception("support store: answers not written yet")
                elif now - said_at >= 60:
                    said_at = now
                    log.error("support store: %d answers still not written after %.0f s (%s)",
                              self.unwritten(), now - self.failing_since, exc)  # fmt: skip
                continue
            if self.failing_since is not None:
                log.warning("support store: writing again after %.0f s", time.monotonic() - self.failing_since)
                self.failing_since = None

    def unwritten(self) -> int:
        """Answers held in memory, not yet written (the database away, a full disk)."""
        with self._write_lock:
            return len(self._unwritten) + self._pending.qsize()

    def answer(self, answer_id: str) -> AnswerRecord | None:
        try:
            self.flush()  # an answer this replica gave a moment ago
        except Exception:  # a full disk, the database away: the rows already written are still read
            log.debug("support store: answers not written yet", exc_info=True)
            with self._write_lock:  # and one held in memory until it can be
                held = next((r for r in reversed(self._unwritten) if r.id == answer_id), None)
            if held is not None:
                return held
        rows = self.sql.query(f"SELECT {_ANSWER_COLUMNS} FROM answers WHERE id = ?", (answer_id,))
        return AnswerRecord.from_row(rows[0]) if rows else None

    def add_feedback(self, feedback: Feedback) -> None:
        self.sql.write(f"INSERT INTO feedback ({_FEEDBACK_COLUMNS}) VALUES ({', '.join('?' * 10)})", [feedback.row()])

    def hit_verdict(self, answer_id: str, rating: str) -> str | None:
        """What a vote on a cache hit adds to the evidence, decided in one statement each, so
        that votes at once (a double click, two replicas) agree: "first" (the answer's first
        vote), "flip" (its first "down" after an "up") or None (nothing new)."""
        first = "INSERT INTO hit_verdicts (answer_id, verdict) VALUES (?, ?) ON CONFLICT DO NOTHING"
        if self.sql.apply([(first, (answer_id, rating))])[0]:
            return "first"
        flip = "UPDATE hit_verdicts SET verdict = 'down' WHERE answer_id = ? AND verdict = 'up'"
        return "flip" if rating == "down" and self.sql.apply([(flip, (answer_id,))])[0] else None

    def voted_down(self, answer_id: str) -> bool:
        """Whether the answer has had a thumbs-down already (its handoff went then)."""
        return bool(
            self.sql.query("SELECT 1 FROM feedback WHERE answer_id = ? AND rating = 'down' LIMIT 1", (answer_id,))
        )

    def one_feedback(self, feedback_id: str) -> Feedback | None:
        rows = self.sql.query(f"SELECT {_FEEDBACK_COLUMNS} FROM feedback WHERE id = ?", (feedback_id,))
        return _feedback_of(rows[0]) if rows else None

    def feedback(self, collection: str | None = None, rating: str | None = None, limit: int = 100) -> list[Feedback]:
        where, params = _where(collection=collection, rating=rating)
        sql = f"SELECT {_FEEDBACK_COLUMNS} FROM feedback{where} ORDER BY created_at DESC LIMIT {int(limit)}"
        return [_feedback_of(row) for row in self.sql.query(sql, params)]

    def close(self) -> None:
        self._closing.set()
        self._writer.join(timeout=5)
        self.flush()
        self.sql.close()


def _feedback_of(row: Sequence[Any]) -> Feedback:
    entry = Feedback(*row[1:])
    entry.id = row[0]
    return entry


def _where(**equal: Any) -> tuple[str, list[Any]]:
    terms = [(name, value) for name, value in equal.items() if value is not None]
    if not terms:
        return "", []
    return " WHERE " + " AND ".join(f"{name} = ?" for name, _ in terms), [value for _, value in terms]


def open_support_store(data_dir: Path, database: Database | None) -> SupportStore:
    return SupportStore(_Postgres(database) if database is not None else _Sqlite(data_dir / SUPPORT_FILE))

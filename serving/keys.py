"""API keys: ``rag keys create --collections a,b [--admin]`` prints a key once; only its SHA-256
is kept (in ``RAG_DATA_DIR/keys.sqlite``). Keys are 256-bit random tokens, so a fast hash is
enough: there is nothing to brute-force. A key is ``rk_<id>_<secret>``: the id finds its row,
the hash of the whole key must match it (compared in constant time). Who a key makes the
caller: :mod:`serving.principals`.

With ``RAG_DATABASE_URL`` set, keys live in PostgreSQL instead (:class:`PgKeyStore`), so a
key created or revoked on one replica is seen by all (:func:`open_key_store` picks)."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from rag.errors import (
    InvalidRequestError,
)

from .principals import ALL, Principal

if TYPE_CHECKING:
    from rag.settings import Settings

    from .database import Database

KEYS_FILE = "keys.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY, name TEXT, hash TEXT NOT NULL, collections TEXT NOT NULL,
    admin INTEGER NOT NULL, created_at REAL NOT NULL, revoked_at REAL, public INTEGER NOT NULL DEFAULT 0
);
"""


@dataclass(frozen=True)
class KeyInfo:
    id: str
    name: str | None
    collections: list[str]
    admin: bool
    created_at: float
    revoked_at: float | None
    public: bool = False


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _new_key(collections: list[str], admin: bool, name: str | None, public: bool) -> tuple[str, KeyInfo, str]:
    """A new key, its record and the digest to store."""
    if not collections and not admin:
        raise InvalidRequestError("a key needs --collections (names, or '*' for all) or --admin")
    if admin and public:
        raise InvalidRequestError("a public key (one in a web page) cannot be an admin key - leave out --admin")
    key_id = secrets.token_hex(4)
    key = f"rk_{key_id}_{secrets.token_urlsafe(32)}"
    stored = [ALL] if admin or ALL in collections else sorted(set(collections))
    return key, KeyInfo(key_id, name, stored, admin, time.time(), None, public), _digest(key)


def _principal(key: str, row: tuple[str, list[str], bool, bool] | None) -> Principal | None:
    """The caller a key makes, given its row (hash, collections, admin, public), or None."""
    if row is None or not hmac.compare_digest(row[0], _digest(key)):
        return None
    collections = None if ALL in row[1] else frozenset(row[1])
    return Principal(key.split("_", 2)[1], collections, bool(row[2]), bool(row[3]))


def _key_id(key: str) -> str | None:
    parts = key.split("_", 2)
    return parts[1] if len(parts) == 3 and parts[0] == "rk" else None


class KeyStoreLike(Protocol):
    def create(
        self, collections: list[str], admin: bool = False, name: str | None = None, public: bool = False
    ) -> tuple[str, KeyInfo]: ...
    def revoke(self, key_id: str) -> bool: ...
    def list(self) -> list[KeyInfo]: ...
    def active(self) -> int: ...
    def created(self) -> int:
        """Keys ever created, revoked ones included: any means keys are required."""
        ...

    def lookup(self, key: str) -> Principal | None: ...
    def close(self) -> None: ...


def open_key_store(settings: Settings, database: Database | None = None) -> KeyStoreLike:
    """PostgreSQL where RAG_DATABASE_URL names one, else SQLite in RAG_DATA_DIR."""
    if settings.database_url:
        from .database import Database

        if database is None:
            return PgKeyStore(Database(settings.database_url).open(), owns=True)
        return PgKeyStore(database)
    return KeyStore(settings.data_dir)


class KeyStore:
    """API keys in SQLite: shared by every worker process and by the `rag keys` command."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / KEYS_FILE
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _conn(self, create: bool = False) -> sqlite3.Connection | None:
        if self._db is None:
            if not self.path.exists() and not create:
                return None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            if "public" not in {row[1] for row in db.execute("PRAGMA table_info(keys)")}:  # a store from before
                try:
                    db.execute("ALTER TABLE keys ADD COLUMN public INTEGER NOT NULL DEFAULT 0")
                except sqlite3.OperationalError as exc:  # another process added it first
                    if "duplicate column" not in str(exc):
                        raise
            self._db = db
        return self._db

    def create(
        self, collections: list[str], admin: bool = False, name: str | None = None, public: bool = False
    ) -> tuple[str, KeyInfo]:
        """A new key: returns it (shown once, never stored) and its record."""
        key, info, digest = _new_key(collections, admin, name, public)
        db = self._conn(create=True)
        assert db is not None
        with self._lock:
            db.execute(
                "INSERT INTO keys (id, name, hash, collections, admin, created_at, public) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (info.id, name, digest, json.dumps(info.collections), int(admin), info.created_at, int(public)),
            )
        return key, info

    def revoke(self, key_id: str) -> bool:
        db = self._conn()
        if db is None:
            return False
        with self._lock:
            cur = db.execute(
                "UPDATE keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (time.time(), key_id)
            )
        return cur.rowcount > 0

    def list(self) -> list[KeyInfo]:
        db = self._conn()
        if db is None:
            return []
        sql = "SELECT id, name, collections, admin, created_at, revoked_at, public FROM keys ORDER BY created_at"
        return [KeyInfo(r[0], r[1], json.loads(r[2]), bool(r[3]), r[4], r[5], bool(r[6])) for r in db.execute(sql)]

    def active(self) -> int:
        db = self._conn()
        if db is None:
            return 0
        return int(db.execute("SELECT COUNT(*) FROM keys WHERE revoked_at IS NULL").fetchone()[0])

    def created(self) -> int:
        db = self._conn()
        return 0 if db is None else int(db.execute("SELECT COUNT(*) FROM keys").fetchone()[0])

    def lookup(self, key: str) -> Principal | None:
        key_id, db = _key_id(key), self._conn()
        if db is None or key_id is None:
            return None
        sql = "SELECT hash, collections, admin, public FROM keys WHERE id = ? AND revoked_at IS NULL"
        found = db.execute(sql, (key_id,)).fetchone()
        return _principal(key, None if found is None else (found[0], json.loads(found[1]), found[2], found[3]))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class PgKeyStore:
    """API keys in PostgreSQL (``RAG_DATABASE_URL``): one set of keys for every replica."""

    def __init__(self, database: Database, owns: bool = False) -> None:
        self.db = database
        self._owns = owns  # closed with the store (the CLI's), or by whoever shares it (the app)

    def create(
        self, collections: list[str], admin: bool = False, name: str | None = None, public: bool = False
    ) -> tuple[str, KeyInfo]:
        from psycopg.types.json import Jsonb

        key, info, digest = _new_key(collections, admin, name, public)
        sql = "INSERT INTO keys (id, name, hash, collections, admin, created_at, public) VALUES (%s, %s, %s, %s, %s, %s, %s)"
        self.db.run(
            lambda c: c.execute(sql, (info.id, name, digest, Jsonb(info.collections), admin, info.created_at, public))
        )
        return key, info

    def revoke(self, key_id: str) -> bool:
        sql = "UPDATE keys SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL"
        return bool(self.db.run(lambda c: c.execute(sql, (time.time(), key_id)).rowcount) > 0)

    def list(self) -> list[KeyInfo]:
        sql = "SELECT id, name, collections, admin, created_at, revoked_at, public FROM keys ORDER BY created_at"
        return [KeyInfo(*row) for row in self.db.run(lambda c: c.execute(sql).fetchall())]

    def active(self) -> int:
        row = self.db.run(lambda c: c.execute("SELECT COUNT(*) FROM keys WHERE revoked_at IS NULL").fetchone())
        return int(row[0]) if row else 0

    def created(self) -> int:
        row = self.db.run(lambda c: c.execute("SELECT COUNT(*) FROM keys").fetchone())
        return int(row[0]) if row else 0

    def lookup(self, key: str) -> Principal | None:
        key_id = _key_id(key)
        if key_id is None:
            return None
        sql = "SELECT hash, collections, admin, public FROM keys WHERE id = %s AND revoked_at IS NULL"
        return _principal(key, self.db.run(lambda c: c.execute(sql, (key_id,)).fetchone()))

    def close(self) -> None:
        if self._owns:
            self.db.close()

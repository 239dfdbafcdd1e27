"""API keys: ``rag keys create --collections a,b [--admin]`` prints a key once; only its SHA-256
is kept (in ``RAG_DATA_DIR/keys.sqlite``). Keys are 256-bit random tokens, so a fast hash is
enough: there is nothing to brute-force. A key is ``rk_<id>_<secret>``: the id finds its row,
the hash of the whole key must match it (compared in constant time). Who a key makes the
caller: :mod:`serving.principals`."""

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

from rag.errors import (
    InvalidRequestError,
)

from .principals import ALL, Principal

KEYS_FILE = "keys.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY, name TEXT, hash TEXT NOT NULL, collections TEXT NOT NULL,
    admin INTEGER NOT NULL, created_at REAL NOT NULL, revoked_at REAL
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


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


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
            self._db = db
        return self._db

    def create(self, collections: list[str], admin: bool = False, name: str | None = None) -> tuple[str, KeyInfo]:
        """A new key: returns it (shown once, never stored) and its record."""
        if not collections and not admin:
            raise InvalidRequestError("a key needs --collections (names, or '*' for all) or --admin")
        key_id = secrets.token_hex(4)
        key = f"rk_{key_id}_{secrets.token_urlsafe(32)}"
        stored = [ALL] if admin or ALL in collections else sorted(set(collections))
        info = KeyInfo(key_id, name, stored, admin, time.time(), None)
        db = self._conn(create=True)
        assert db is not None
        with self._lock:
            db.execute(
                "INSERT INTO keys (id, name, hash, collections, admin, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (key_id, name, _digest(key), json.dumps(stored), int(admin), info.created_at),
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
        rows = db.execute("SELECT id, name, collections, admin, created_at, revoked_at FROM keys ORDER BY created_at")
        return [KeyInfo(r[0], r[1], json.loads(r[2]), bool(r[3]), r[4], r[5]) for r in rows]

    def active(self) -> int:
        db = self._conn()
        if db is None:
            return 0
        return int(db.execute("SELECT COUNT(*) FROM keys WHERE revoked_at IS NULL").fetchone()[0])

    def lookup(self, key: str) -> Principal | None:
        parts = key.split("_", 2)
        db = self._conn()
        if db is None or len(parts) != 3 or parts[0] != "rk":
            return None
        row = db.execute(
            "SELECT hash, collections, admin FROM keys WHERE id = ? AND revoked_at IS NULL", (parts[1],)
        ).fetchone()
        if row is None or not hmac.compare_digest(row[0], _digest(key)):
            return None
        collections = json.loads(row[1])
        return Principal(parts[1], None if ALL in collections else frozenset(collections), bool(row[2]))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

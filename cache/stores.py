"""Where the response cache keeps its entries: the store interface, and the embedded default.

The cache's policy (thresholds, margin, guards, verifier, audits: :mod:`cache.semantic`)
never touches storage directly; it asks an :class:`EntryStore` for

- the entry stored under a normalised question (the exact tier),
- the entries nearest a vector in one scope (the semantic tier),
- a counters store that never evicts (sequence numbers, audit evidence),
- a claim on a question, so that concurrent identical misses make one generation.

Two stores implement it: :class:`LocalStore` here (diskcache on local disk, one FAISS index a
scope in each process; the default, for one host) and :class:`cache.redis_store.RedisStore`
(``RAG_REDIS_URL``: every replica shares one cache, the KNN runs in Redis's query engine).

An entry is a dict: ``question``, ``vector`` (float32 bytes), ``payload``, ``created_at``,
``tag`` (the collection), ``group`` (entries with the same group give the same answer).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import pickle
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import diskcache
import numpy as np

log = logging.getLogger("rag.cache")


class StoreUnavailable(Exception):
    """The store cannot be reached now (a Redis that is down or restarting; a local disk that
    is full, read-only or locked): the cache treats the lookup as a miss and the write as
    skipped, and tries again later."""


DAMAGE = (sqlite3.DatabaseError, pickle.UnpicklingError, UnicodeDecodeError, EOFError)


def damaged(exc: BaseException) -> bool:
    """Whether ``exc`` says a file's bytes are not what was written (SQLite's own "malformed",
    "not a database"; a stored value that no longer unpickles), not that the file is busy,
    full or read-only (OperationalError) or that a query was wrong (IntegrityError, ...)."""
    if isinstance(exc, sqlite3.DatabaseError):
        return type(exc) is sqlite3.DatabaseError
    return isinstance(exc, (pickle.UnpicklingError, UnicodeDecodeError, EOFError))


def set_aside(path: Path, what: str, error: BaseException) -> None:
    """A damaged file or folder (with a SQLite file's ``-wal`` and ``-shm``) renamed to
    ``NAME.corrupt-TIME`` beside it, for a post-mortem; the caller starts an empty one."""
    aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    log.warning("%s at %s is unreadable (%s); moved to %s and started empty", what, path, error, aside)
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{path}{suffix}").exists():
            Path(f"{path}{suffix}").rename(f"{aside}{suffix}")


def _local(method: Callable[..., Any]) -> Callable[..., Any]:
    """A diskcache call that cannot write or read now (SQLite's OperationalError, or an
    OSError: the disk is full or read-only, the file is locked) as :class:`StoreUnavailable`: misses and
    skipped writes, as for a Redis that is away, never a 500 for every question."""

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except (sqlite3.OperationalError, OSError) as exc:  # OSError: a large value's own file
            raise StoreUnavailable(f"the response cache on local disk: {exc}") from exc
        except DAMAGE as exc:  # damaged past what opening it reads (a page; a stored value)
            if not damaged(exc):
                raise
            raise StoreUnavailable(
                f"the response cache on local disk is damaged ({exc}) - `rag cache clear` sets its file aside "
                "and starts it empty (blocks kept)"
            ) from exc

    return call


class Counters(Protocol):
    """A key-value store that never evicts (diskcache's API): audit evidence, sequence numbers."""

    def transact(self) -> AbstractContextManager[Any]: ...
    def incr(self, key: str, delta: int = 1) -> int: ...
    def get(self, key: str, default: Any = None) -> Any: ...
    def set(self, key: str, value: Any) -> Any: ...
    def delete(self, key: str) -> Any: ...
    def iterkeys(self) -> Iterator[Any]: ...
    def update(self, key: str, change: Callable[[Any], Any], default: Any = None) -> Any:
        """Set ``key`` to ``change(its value)`` atomically, against every other writer (hosts
        included); returns the new value."""
        ...


KEPT_ON_CLEAR = ("blocks:", "block:", "audit:", "store:")
"""Counters that outlive ``clear``: the answers people blocked (:mod:`cache.blocks`), each
collection's wrong-hit evidence (:mod:`cache.audit`) and the store's identity. Clearing
answers is not lifting a block; sequence numbers and per-entry boundaries go with the entries."""


class LocalCounters(diskcache.Cache):  # type: ignore[misc]
    """diskcache as :class:`Counters`: its transaction is one SQLite write lock, across processes."""

    get = _local(diskcache.Cache.get)
    set = _local(diskcache.Cache.set)
    incr = _local(diskcache.Cache.incr)
    delete = _local(diskcache.Cache.delete)

    @_local
    def update(self, key: str, change: Callable[[Any], Any], default: Any = None) -> Any:
        with self.transact():
            value = change(self.get(key, default))
            self.set(key, value)
        return value


class EntryStore(Protocol):
    @property
    def counters(self) -> Counters: ...

    @property
    def shared(self) -> bool:
        """True when other hosts see the same entries (claims then span hosts)."""

    def find_exact(self, skey: str, normalized: str) -> tuple[int, dict[str, Any]] | None:
        """The entry stored under this normalised question in this scope, with its number."""

    def near(self, skey: str, query: np.ndarray, k: int, floor: float) -> list[tuple[int, dict[str, Any]]] | None:
        """Up to ``k`` entries nearest ``query`` (unit vector) in this scope, nearest first; a
        store may leave out those its index scores below ``floor``. None when the scope holds
        nothing."""

    def add(self, skey: str, normalized: str, entry: dict[str, Any], ttl_s: float | None) -> int:
        """(``ttl_s`` below 0: no expiry.) Store an entry; returns its number."""

    def remove(self, skey: str, seq: int) -> bool:
        """Drop one entry now (its exact-text key then finds nothing); False if it was gone."""
        ...

    def remove_where(self, doomed: Callable[[dict[str, Any]], bool]) -> int:
        """Remove every entry, in any scope, that ``doomed`` says should go; how many went."""
        ...

    def checkpoint(self) -> None:
        """What was removed out of any log the store keeps of it (SQLite's WAL)."""
        ...

    def count_by_tag(self) -> dict[str, int]: ...
    def clear(self, tag: str | None = None) -> int: ...
    def volume(self) -> int: ...

    def claim(self, key: str, ttl_s: float) -> bool:
        """Take the right to answer this question (True), or learn that another host holds it."""

    def claimed(self, key: str) -> bool: ...
    def renew(self, key: str) -> None: ...
    def release(self, key: str) -> None: ...
    def close(self) -> None: ...


def scope_key(scope: str) -> str:
    return hashlib.sha256(scope.encode()).hexdigest()[:24]


class _ScopeIndex:
    def __init__(self, dimension: int) -> None:
        import faiss

        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))
        self.seen = 0  # highest sequence number looked at
        self.pending: set[int] = set()  # numbers taken whose entry was not there yet
        self.epoch: object = None  # changes when the cache is cleared: numbering restarts


class LocalStore:
    """diskcache on local disk, shared by every worker process on the host.

    Each process keeps one in-memory FAISS index per scope and catches up with entries other
    processes added by reading a per-scope sequence counter that diskcache increments
    atomically: no index files to lock or merge. Counters live in a store that never evicts.
    """

    shared = False

    def __init__(self, directory: Path | str, dimension: int, size_limit_bytes: int = 512 * 2**20) -> None:
        self.dimension = dimension
        directory = Path(directory)
        try:
            self._open(directory, size_limit_bytes)
        except (sqlite3.OperationalError, OSError) as exc:  # a full or read-only disk: the files are sound
            raise StoreUnavailable(
                f"cannot open the response cache at {directory} ({exc}) - free disk space, or make "
                "RAG_DATA_DIR writable"
            ) from exc
        except sqlite3.DatabaseError as exc:
            # A corrupted cache costs answers already paid for, never the service.
            set_aside(directory, "response cache", exc)
            self._open(directory, size_limit_bytes)
        self._directory, self._size_limit = directory, size_limit_bytes
        self._scopes: dict[str, _ScopeIndex] = {}
        self._lock = threading.Lock()

    def _open(self, directory: Path, size_limit_bytes: int) -> None:
        self._open_entries(directory, size_limit_bytes)
        self.counters: Counters = LocalCounters(
            str(directory / "counters"), eviction_policy="none", sqlite_secure_delete=1
        )
        self.counters.get("epoch")  # reads the database: a corrupted file fails here, not later

    @_local
    def find_exact(self, skey: str, normalized: str) -> tuple[int, dict[str, Any]] | None:
        seq = self._store.get(f"x:{skey}:{normalized}")
        entry = self._store.get(f"e:{skey}:{seq}") if seq is not None else None
        return None if entry is None else (int(seq), entry)

    @_local
    def near(self, skey: str, query: np.ndarray, k: int, floor: float) -> list[tuple[int, dict[str, Any]]] | None:
        found: list[tuple[int, dict[str, Any]]] = []
        for _ in range(4):  # entries gone since this process indexed them leave its index, then search again
            with self._lock:
                sindex = self._sync(skey)
                if sindex.index.ntotal == 0:
                    return None
                scores, ids = sindex.index.search(query.reshape(1, -1), min(k, sindex.index.ntotal))
            found, gone = [], []
            for score, seq in zip(scores[0], ids[0], strict=True):
                if seq < 0 or score < floor:  # too far to matter: not read from disk
                    break
                entry = self._store.get(f"e:{skey}:{int(seq)}")
                if entry is None:  # removed, evicted or expired
                    gone.append(int(seq))
                else:
                    found.append((int(seq), entry))
            if not gone:
                break
            with self._lock:
                sindex.index.remove_ids(np.asarray(gone, dtype=np.int64))  # type: ignore[arg-type]  # faiss takes ids too
        return found

    @_local
    def add(self, skey: str, normalized: str, entry: dict[str, Any], ttl_s: float | None) -> int:
        ttl_s = None if ttl_s is not None and ttl_s < 0 else ttl_s  # < 0: kept until removed
        seq = int(self.counters.incr(f"seq:{skey}"))
        # The exact-text key holds the customer's words: the entry names it, to go with it.
        self._store.set(f"e:{skey}:{seq}", {**entry, "exact_key": f"x:{skey}:{normalized}"}, expire=ttl_s)
        self._store.set(f"x:{skey}:{normalized}", seq, expire=ttl_s)
        return seq

    @_local
    def remove(self, skey: str, seq: int) -> bool:
        return self._remove(f"e:{skey}:{seq}", seq)  # the search skips a missing entry

    @_local
    def remove_where(self, doomed: Callable[[dict[str, Any]], bool]) -> int:
        """Every entry ``doomed`` says should go, in any scope, with its exact-text key (an
        erasure request, the retention limit): a scan of the entries."""
        removed = 0
        for key, entry in list(self._entries()):
            if doomed(entry) and self._remove(key, int(key.rsplit(":", 1)[1])):
                removed += 1
        return removed

    @_local
    def checkpoint(self) -> None:
        self._checkpoint()

    def _remove(self, key: str, seq: int) -> bool:
        """The entry and its exact-text key (unless a newer answer to that text took it)."""
        with self._store.transact():
            entry = self._store.get(key)
            removed = bool(self._store.delete(key))
            exact = entry.get("exact_key") if isinstance(entry, dict) else None
            if exact and self._store.get(exact) == seq:
                self._store.delete(exact)
        return removed

    def _sync(self, skey: str) -> _ScopeIndex:
        sindex = self._scopes.get(skey)
        latest = int(self.counters.get(f"seq:{skey}", 0))
        epoch = self.counters.get("epoch")
        if sindex is None or sindex.epoch != epoch:  # new here, or the cache was cleared since
            sindex = self._scopes[skey] = _ScopeIndex(self.dimension)
            sindex.epoch = epoch
        # A number taken by another process whose entry is not written yet is retried later.
        wanted = sorted(sindex.pending) + list(range(sindex.seen + 1, latest + 1))
        ids, vectors = [], []
        for seq in wanted:
            entry = self._store.get(f"e:{skey}:{seq}")
            if entry is None:
                sindex.pending.add(seq)
            else:
                sindex.pending.discard(seq)
                ids.append(seq)
                vectors.append(np.frombuffer(entry["vector"], dtype=np.float32))
        if len(sindex.pending) > 64:  # long-missing numbers were evicted, not late
            sindex.pending = set(sorted(sindex.pending)[-64:])
        if ids:
            sindex.index.add_with_ids(np.vstack(vectors), np.asarray(ids, dtype=np.int64))
        sindex.seen = max(sindex.seen, latest)
        return sindex

    def _entries(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for key in self._store.iterkeys():
            if str(key).startswith("e:"):
                entry = self._store.get(key)
                if entry is not None:
                    yield str(key), entry

    @_local
    def count_by_tag(self) -> dict[str, int]:
        by_tag: dict[str, int] = {}
        for _, entry in self._entries():
            by_tag[str(entry.get("tag"))] = by_tag.get(str(entry.get("tag")), 0) + 1
        return by_tag

    @_local
    def clear(self, tag: str | None = None) -> int:
        with self._lock:
            if tag is None:
                try:
                    count = sum(1 for _ in self._entries())
                    self._store.clear()
                except DAMAGE as exc:
                    if not damaged(exc):  # locked, full: the file is sound
                        raise
                    count = self._set_entries_aside(exc)
                # The rest go in place, in one transaction: blocks and evidence are never away,
                # not even for a moment another process could add a block or store a blocked answer in.
                with self.counters.transact():
                    for key in list(self.counters.iterkeys()):
                        if not str(key).startswith(KEPT_ON_CLEAR):
                            self.counters.delete(key)
                    self.counters.set("epoch", uuid.uuid4().hex)
                self._scopes.clear()
                self._checkpoint()
                return count
            doomed = [key for key, entry in self._entries() if entry.get("tag") == tag]
            for key in doomed:
                self._remove(key, int(key.rsplit(":", 1)[1]))
            self._checkpoint()
            return len(doomed)

    def _checkpoint(self) -> None:
        """Deleted questions out of the write-ahead logs too (secure_delete zeroes them in the
        database files), not left there until SQLite's next checkpoint: the entries', and the
        counters' (a lifted block's question)."""
        for cache in (self._store, self.counters):
            cache._sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()  # type: ignore[union-attr]  # noqa: SLF001 - diskcache's connection

    def _set_entries_aside(self, error: Exception) -> int:
        """The answers' file, damaged past reading, set aside (for a post-mortem) and started
        empty; the counters (blocks, evidence) are another file and stay. Returns 0: how many
        answers it held cannot be read."""
        self._store.close()
        set_aside(self._directory / "entries", "response cache", error)
        self._open_entries(self._directory, self._size_limit)
        return 0

    def _open_entries(self, directory: Path, size_limit_bytes: int) -> None:
        self._store = diskcache.Cache(
            str(directory / "entries"),
            size_limit=size_limit_bytes,
            eviction_policy="least-recently-used",
            sqlite_secure_delete=1,  # a removed answer's question is overwritten, not left in a free page
        )

    @_local
    def volume(self) -> int:
        return int(self._store.volume())

    def claim(self, key: str, ttl_s: float) -> bool:
        return True  # one host: the pipeline's in-process single flight is enough

    def claimed(self, key: str) -> bool:
        return False

    def renew(self, key: str) -> None:
        return None

    def release(self, key: str) -> None:
        return None

    def close(self) -> None:
        self._store.close()
        self.counters.close()  # type: ignore[attr-defined]

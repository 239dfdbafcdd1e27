"""The response cache on Redis (``RAG_REDIS_URL``): every replica shares one cache.

Redis 8 (its query engine is built in), Redis Stack, or Valkey with the search module:
the near-duplicate search is a KNN query in Redis itself (``FT.SEARCH ... =>[KNN k @vector
$v]`` over an HNSW index, filtered to the scope), so no replica keeps an index of its own.

Keys, under ``RAG_REDIS_PREFIX`` (``rag:cache:``):

- ``e:{dim}:{scope}:{n}``: an entry, a hash (question, vector, payload as JSON, tag, group,
  scope); it always has a TTL (``RAG_CACHE_TTL_S``, or 30 days unset), so a server with
  ``maxmemory-policy volatile-lru`` evicts entries and nothing else;
- ``x:{scope}:{sha1 of the normalised question}``: the entry's number, for the exact tier;
- ``n:...``: counters that never expire (entry numbers, audit evidence);
- ``claim:...``: who is answering a question now (redis-py's lock: a token and a TTL), so
  concurrent identical misses on different hosts make one generation.

A Redis that is down or restarting raises :class:`cache.stores.StoreUnavailable` within
``RAG_REDIS_TIMEOUT_S``; for the next second the store does not try again (each request
would otherwise wait out the timeout), then it reconnects by itself. A restarted Redis
without persistence has lost the search index: it is made again on the first query.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import LockError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .stores import KEPT_ON_CLEAR, StoreUnavailable

T = TypeVar("T")
DEFAULT_TTL_S = 30 * 86400
RETRY_AFTER_S = 1.0
_TAG_SPECIAL = set(",.<>{}[]\"':;!@#$%^&*()-+=~|/\\ ")


def _tag(value: str) -> str:
    """A TAG value as a query term: every punctuation character escaped."""
    return "".join(f"\\{c}" if c in _TAG_SPECIAL else c for c in value)


def _rows(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """FT.SEARCH / FT.AGGREGATE rows as (key, fields), from a RESP3 map or a RESP2 array."""
    if isinstance(reply, dict):
        return [(row.get(b"id", b""), row.get(b"extra_attributes", {})) for row in reply.get(b"results", [])]
    if not reply:
        return []
    body = reply[1:]
    if body and not isinstance(body[0], list):  # SEARCH: key, fields, key, fields...
        if len(body) > 1 and isinstance(body[1], list):
            return [
                (key, dict(zip(flat[::2], flat[1::2], strict=True)))
                for key, flat in zip(body[::2], body[1::2], strict=True)
            ]
        return [(key, {}) for key in body]  # NOCONTENT
    return [(b"", dict(zip(flat[::2], flat[1::2], strict=True))) for flat in body]  # AGGREGATE


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


class _Guarded:
    """Calls into Redis that fail fast while it is down, and say so as StoreUnavailable."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._down_until = 0.0
        self.failures = 0  # how many times Redis was found away: a restart may have lost state

    def call(self, fn: Callable[[], T]) -> T:
        if time.monotonic() < self._down_until:
            raise StoreUnavailable("Redis was unreachable less than a second ago")
        try:
            return fn()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self._down_until = time.monotonic() + RETRY_AFTER_S
            self.failures += 1
            raise StoreUnavailable(f"Redis unreachable: {exc}") from exc


class RedisCounters:
    """The counters store (diskcache's calls that :mod:`cache.audit` makes) on Redis: values as
    JSON, no TTL. Each call is atomic on its own, and ``update`` is an optimistic transaction.
    ``transact`` holds a Redis lock, as diskcache's holds SQLite's write lock: the writers that
    take it (an audit's counts and the boundary worked out from them) run one at a time across
    replicas, while readers go on (a lookup may see half of one audit's evidence)."""

    LOCK_KEY = "audit:lock"  # kept on clear, like the evidence it guards
    LOCK_TIMEOUT_S = 10.0  # a replica that dies holding it holds it no longer than this

    def __init__(self, guarded: _Guarded, prefix: str) -> None:
        self._g = guarded
        self._r = guarded.client
        self.prefix = prefix

    @contextmanager
    def transact(self) -> Iterator[None]:
        lock = self._r.lock(self.prefix + self.LOCK_KEY, timeout=self.LOCK_TIMEOUT_S)
        if not self._g.call(lambda: lock.acquire(blocking_timeout=self.LOCK_TIMEOUT_S)):
            raise StoreUnavailable(f"the Redis lock {self.LOCK_KEY} was held for over {self.LOCK_TIMEOUT_S:g} s")
        try:
            yield
        finally:
            try:
                self._g.call(lock.release)
            except (LockError, StoreUnavailable):
                pass  # it expired (the work took too long) or Redis went away: nothing to release

    def incr(self, key: str, delta: int = 1) -> int:
        return int(self._g.call(lambda: self._r.incrby(self.prefix + key, delta)))

    def get(self, key: str, default: Any = None) -> Any:
        value = self._g.call(lambda: self._r.get(self.prefix + key))
        return default if value is None else json.loads(value)  # type: ignore[arg-type]

    def set(self, key: str, value: Any) -> None:
        self._g.call(lambda: self._r.set(self.prefix + key, json.dumps(value)))

    def delete(self, key: str) -> None:
        self._g.call(lambda: self._r.delete(self.prefix + key))

    def update(self, key: str, change: Callable[[Any], Any], default: Any = None) -> Any:
        """WATCH, read, MULTI, write: redis-py runs it again if another writer got in between."""
        name = self.prefix + key

        def attempt(pipe: Any) -> Any:
            raw = pipe.get(name)
            value = change(default if raw is None else json.loads(raw))
            pipe.multi()
            pipe.set(name, json.dumps(value))
            return value

        return self._g.call(lambda: self._r.transaction(attempt, name, value_from_callable=True))

    def iterkeys(self) -> Iterator[str]:
        keys = self._g.call(lambda: list(self._r.scan_iter(match=self.prefix + "*", count=1000)))
        return (k.decode()[len(self.prefix) :] for k in keys)

    def clear(self) -> None:
        for key in list(self.iterkeys()):
            self.delete(key)


class RedisStore:
    """An :class:`cache.stores.EntryStore` on Redis with the search module."""

    shared = True

    def __init__(
        self,
        url: str,
        dimension: int,
        prefix: str = "rag:cache:",
        timeout_s: float = 0.5,
        default_ttl_s: float | None = None,
    ) -> None:
        self.url = url
        self.dimension = dimension
        self.prefix = prefix
        self.default_ttl_s = default_ttl_s or DEFAULT_TTL_S
        client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=30
        )
        self._g = _Guarded(client)
        self._r = client
        self.counters = RedisCounters(self._g, prefix + "n:")
        self.index_name = f"{prefix}idx:{dimension}"
        self._entry_prefix = f"{prefix}e:{dimension}:"
        self._locks: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._indexed_at = -1  # the failure count when the index was last made sure of

    # -- the search index ---------------------------------------------------------------
    def _create_index(self) -> None:
        try:
            self._r.execute_command(
                "FT.CREATE", self.index_name, "ON", "HASH", "PREFIX", 1, self._entry_prefix,
                "SCHEMA", "scope", "TAG", "tag", "TAG", "vector", "VECTOR", "HNSW", 6,
                "TYPE", "FLOAT32", "DIM", self.dimension, "DISTANCE_METRIC", "COSINE",
            )  # fmt: skip
        except ResponseError as exc:
            if "already exists" not in str(exc):
                raise

    def _search(self, *args: Any) -> Any:
        """FT.SEARCH, making the index first where Redis has none (first use, or a restart)."""

        def run() -> Any:
            try:
                return self._r.execute_command("FT.SEARCH", self.index_name, *args)
            except ResponseError as exc:
                if "no such index" not in str(exc).lower() and "unknown index" not in str(exc).lower():
                    raise
                self._create_index()
                return self._r.execute_command("FT.SEARCH", self.index_name, *args)

        return self._g.call(run)

    def check(self) -> None:
        """Fail now, with what to do, if this Redis has no vector search (at start-up)."""
        try:
            self._g.call(self._create_index)
        except ResponseError as exc:
            raise StoreUnavailable(
                f"Redis at {_host_of(self.url)} has no vector search ({exc}): use Redis 8, Redis Stack, or Valkey "
                "with the search module loaded (README, 'Redis and PostgreSQL')"
            ) from exc

    # -- entries -------------------------------------------------------------------------
    @staticmethod
    def _entry(fields: dict[bytes, bytes]) -> dict[str, Any]:
        tag = fields.get(b"tag")
        group = fields.get(b"group")
        return {
            "question": fields[b"question"].decode(),
            "vector": fields[b"vector"],
            "payload": json.loads(fields[b"payload"]),
            "created_at": float(fields.get(b"created_at", b"0")),
            "tag": tag.decode() if tag else None,
            "group": group.decode() if group else None,
        }

    def find_exact(self, skey: str, normalized: str) -> tuple[int, dict[str, Any]] | None:
        def run() -> tuple[int, dict[str, Any]] | None:
            seq = self._r.get(f"{self.prefix}x:{skey}:{_digest(normalized)}")
            if seq is None:
                return None
            fields = self._r.hgetall(f"{self._entry_prefix}{skey}:{int(seq)}")  # type: ignore[arg-type]
            return (int(seq), self._entry(fields)) if fields else None  # type: ignore[arg-type]

        return self._g.call(run)

    def near(self, skey: str, query: np.ndarray, k: int, floor: float) -> list[tuple[int, dict[str, Any]]] | None:
        """The KNN query returns the entries with the hit: one round trip whatever ``floor``."""
        blob = np.asarray(query, dtype=np.float32).tobytes()
        reply = self._search(
            f"(@scope:{{{_tag(skey)}}})=>[KNN {k} @vector $v AS dist]",
            "PARAMS", 2, "v", blob, "SORTBY", "dist", "ASC", "LIMIT", 0, k,
            "RETURN", 6, "question", "vector", "payload", "tag", "group", "created_at", "DIALECT", 2,
        )  # fmt: skip
        rows = _rows(reply)
        if not rows:
            return None
        return [
            (int(key.rsplit(b":", 1)[1]), self._entry(fields))
            for key, fields in rows
            if b"question" in fields  # expired between the search and the read otherwise
        ]

    def add(self, skey: str, normalized: str, entry: dict[str, Any], ttl_s: float | None) -> int:
        ttl = None if ttl_s is not None and ttl_s < 0 else int(ttl_s or self.default_ttl_s) or 1  # < 0: kept

        def run() -> int:
            # The index exists before its first entry: one made over existing keys indexes
            # them in the background, and a lookup meanwhile would miss them.
            if self._indexed_at != self._g.failures:
                self._create_index()
                self._indexed_at = self._g.failures
            seq = int(self._r.incr(f"{self.prefix}n:seq:{skey}"))
            key = f"{self._entry_prefix}{skey}:{seq}"
            fields = {
                "question": entry["question"],
                "vector": entry["vector"],
                "payload": json.dumps(entry["payload"], ensure_ascii=False),
                "created_at": entry["created_at"],
                "scope": skey,
                **{name: entry[name] for name in ("tag", "group") if entry.get(name)},
            }
            with self._r.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
                if ttl is not None:
                    pipe.expire(key, ttl)
                pipe.set(f"{self.prefix}x:{skey}:{_digest(normalized)}", seq, ex=ttl)
                pipe.execute()
            return seq

        return self._g.call(run)

    def remove(self, skey: str, seq: int) -> bool:
        """Deleting the hash takes it out of the search index at once, on every replica."""
        return bool(self._g.call(lambda: self._r.delete(f"{self._entry_prefix}{skey}:{int(seq)}")))

    def remove_where(self, doomed: Callable[[dict[str, Any]], bool]) -> int:
        """Every entry ``doomed`` says should go, in any scope (an erasure request, the
        retention limit): a scan of the entries' hashes."""

        def run() -> int:
            removed = 0
            for key in self._r.scan_iter(match=f"{self._entry_prefix}*", count=500):
                fields: dict[bytes, bytes] = self._r.hgetall(key)  # type: ignore[assignment]  # bytes: no decoding
                if b"question" in fields and doomed(self._entry(fields)):
                    removed += int(self._r.delete(key))
            return removed

        return self._g.call(run)

    def checkpoint(self) -> None:
        return None  # Redis keeps no log of what was deleted (an RDB or AOF file is its operator's)

    def count_by_tag(self) -> dict[str, int]:
        def run() -> Any:
            try:
                return self._r.execute_command(
                    "FT.AGGREGATE", self.index_name, "*", "GROUPBY", 1, "@tag", "REDUCE", "COUNT", 0, "AS", "n"
                )
            except ResponseError:
                return []  # no index yet: nothing stored

        counts: dict[str, int] = {}
        for _, fields in _rows(self._g.call(run)):
            tag = fields.get(b"tag")
            counts[tag.decode() if tag else "None"] = int(fields[b"n"])
        return counts

    def clear(self, tag: str | None = None) -> int:
        if tag is None:
            count = sum(self.count_by_tag().values())

            kept = tuple(f"{self.counters.prefix}{name}".encode() for name in KEPT_ON_CLEAR)

            def drop_all() -> None:
                for key in self._r.scan_iter(match=self.prefix + "*", count=1000):
                    if not key.startswith(kept):
                        self._r.delete(key)

            self._g.call(drop_all)
            return count
        count = 0
        while True:  # the exact-text key then points at a number that holds nothing: a miss
            reply = self._search(f"@tag:{{{_tag(tag)}}}", "NOCONTENT", "LIMIT", 0, 1000)
            keys = [key for key, _ in _rows(reply)]
            if not keys:
                return count
            self._delete(keys)
            count += len(keys)

    def _delete(self, keys: list[bytes]) -> None:
        self._g.call(lambda: self._r.delete(*keys))

    def volume(self) -> int:
        """Bytes the Redis server holds (all of it: the cache shares it with anything else)."""
        return int(self._g.call(lambda: self._r.info("memory"))["used_memory"])

    # -- claims: one generation for concurrent identical misses on any host --------------
    def claim(self, key: str, ttl_s: float) -> bool:
        # Not thread-local: the claim is renewed and released from other threads than took it.
        lock = self._r.lock(f"{self.prefix}claim:{_digest(key)}", timeout=ttl_s, blocking=False, thread_local=False)
        if not self._g.call(lock.acquire):
            return False
        with self._lock:
            self._locks[key] = lock
        return True

    def claimed(self, key: str) -> bool:
        return bool(self._g.call(lambda: self._r.exists(f"{self.prefix}claim:{_digest(key)}")))

    def renew(self, key: str) -> None:
        with self._lock:
            lock = self._locks.get(key)
        if lock is not None:
            try:
                self._g.call(lock.reacquire)
            except redis.exceptions.LockError:
                pass  # it lapsed: another host may be answering too, which costs a generation, no more

    def release(self, key: str) -> None:
        with self._lock:
            lock = self._locks.pop(key, None)
        if lock is not None:
            try:
                self._g.call(lock.release)
            except redis.exceptions.LockError:
                pass  # it outlived its TTL; someone else may hold it now

    def close(self) -> None:
        self._r.close()


def _host_of(url: str) -> str:
    """Where ``url`` points, for a message: never its password."""
    try:
        parts = urlsplit(url)
        return f"{parts.hostname}:{parts.port or 6379}"
    except ValueError:
        return "RAG_REDIS_URL"

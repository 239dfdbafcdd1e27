"""A semantic response cache: diskcache holds the entries, FAISS finds near duplicates.

Entries live in diskcache, so they survive restarts and are shared by every worker process
on the host. Each entry belongs to a *scope* (the caller's choice; the pipeline uses
collection + index version + prompt version + generator), and a lookup only ever sees its
own scope: re-ingesting a collection changes the scope, so answers built on old content
are never served again.

Each process keeps one in-memory FAISS index per scope and catches up with entries other
processes added by reading a per-scope sequence counter that diskcache increments
atomically: no index files to lock or merge. Counters live in a store that never evicts,
and every hit is checked against the entry it returns (same normalised question for an
exact hit, stored vector still above the threshold for a semantic one), so an evicted or
replaced entry can cost a miss but never serve another question's answer.

>>> cache = SemanticCache(tmp_path, dimension=384, threshold=0.9)      # doctest: +SKIP
>>> cache.put("scope", "How do I reset my password?", vector, {"answer": "..."})
>>> cache.get_exact("scope", "how do I reset my password")           # no embedding needed
>>> cache.get_similar("scope", other_vector)                          # near duplicates
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
import threading
import time
import unicodedata
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diskcache
import numpy as np

from .audit import HitEvidence
from .guards import conflict
from .verifier import Verifier

log = logging.getLogger("rag.cache")
_SPACE_RE = re.compile(r"\s+")
_EDGE_PUNCT_RE = re.compile(r"^[\s\"'¿¡]+|[\s?!.。？！\"']+$")


def normalize_question(text: str) -> str:
    """Case, width, spacing and trailing punctuation do not change a question."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _SPACE_RE.sub(" ", text)
    return _EDGE_PUNCT_RE.sub("", text)


@dataclass(frozen=True)
class CacheHit:
    kind: str  # "exact" or "semantic"
    similarity: float
    question: str
    payload: dict[str, Any]
    ref: str = ""  # the entry, for :meth:`SemanticCache.learn`
    tag: str | None = None


class _ScopeIndex:
    def __init__(self, dimension: int) -> None:
        import faiss

        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))
        self.seen = 0  # highest sequence number looked at
        self.pending: set[int] = set()  # numbers taken whose entry was not there yet
        self.epoch: object = None  # changes when the cache is cleared: numbering restarts


class SemanticCache:
    def __init__(
        self,
        directory: Path | str,
        dimension: int,
        threshold: float = 0.9,
        size_limit_bytes: int = 512 * 2**20,
        ttl_s: float | None = None,
        guards: bool = True,
        margin: float = 0.0,
        verifier: Verifier | None = None,
        confirmed_threshold: float | None = None,
        confirmed_margin: float | None = None,
        max_wrong_rate: float | Callable[[str | None], float] = 0.01,
    ) -> None:
        self.dimension = dimension
        self.guards = guards
        self.margin = margin
        # Candidates the caller confirms with evidence of its own (``confirm``) may sit lower.
        self.confirmed_threshold = threshold if confirmed_threshold is None else min(confirmed_threshold, threshold)
        self.confirmed_margin = margin if confirmed_margin is None else min(confirmed_margin, margin)
        self.verifier = verifier
        self.threshold = threshold
        self.ttl_s = ttl_s
        directory = Path(directory)
        try:
            self._open(directory, size_limit_bytes)
        except sqlite3.DatabaseError as exc:
            # A corrupted cache costs answers already paid for, never the service: set the
            # files aside (for a post-mortem) and start empty.
            aside = directory.with_name(f"{directory.name}.corrupt-{int(time.time())}")
            log.warning("response cache at %s is unreadable (%s); moved to %s and started empty", directory, exc, aside)
            directory.rename(aside)
            self._open(directory, size_limit_bytes)
        bound = max_wrong_rate if callable(max_wrong_rate) else lambda _tag: float(max_wrong_rate)
        self.evidence = HitEvidence(self._counters, bound)
        self._scopes: dict[str, _ScopeIndex] = {}
        self.lookups: Counter[str] = Counter()  # exact / semantic hits, misses, rejected by checks
        self._lock = threading.Lock()

    def _open(self, directory: Path, size_limit_bytes: int) -> None:
        self._store = diskcache.Cache(
            str(directory / "entries"), size_limit=size_limit_bytes, eviction_policy="least-recently-used"
        )
        self._counters = diskcache.Cache(str(directory / "counters"), eviction_policy="none")
        self._counters.get("epoch")  # reads the database: a corrupted file fails here, not later

    @staticmethod
    def _scope_key(scope: str) -> str:
        return hashlib.sha256(scope.encode()).hexdigest()[:24]

    def get_exact(
        self, scope: str, question: str, accept: Callable[[dict[str, Any]], bool] | None = None
    ) -> CacheHit | None:
        skey = self._scope_key(scope)
        normalized = normalize_question(question)
        seq = self._store.get(f"x:{skey}:{normalized}")
        entry = self._store.get(f"e:{skey}:{seq}") if seq is not None else None
        if entry is None or normalize_question(entry["question"]) != normalized:
            return None
        if accept is not None and not accept(entry["payload"]):
            self.lookups["exact_rejected"] += 1
            return None
        self.lookups["exact_hits"] += 1
        return CacheHit("exact", 1.0, entry["question"], entry["payload"])

    def get_similar(
        self,
        scope: str,
        vector: np.ndarray,
        question: str | None = None,
        accept: Callable[[dict[str, Any]], bool] | None = None,
        confirm: Callable[[dict[str, Any]], bool] | None = None,
    ) -> CacheHit | None:
        """The nearest cached question at or above the threshold that passes the checks.

        - margin: the candidate must beat every cached entry with another answer (another
          ``group``) by ``margin`` in cosine: a question that sits between two cached
          questions with different answers is ambiguous, and misses;
        - ``confirm``: the caller's independent evidence that the payload answers this
          question (the pipeline's: an FAQ entry that the dense and the lexical search both
          find first). A confirmed candidate needs only ``confirmed_threshold`` and
          ``confirmed_margin``;
        - with ``question``, the near-miss guards (negation, numbers, opposite actions,
          names) compare it with the candidate;
        - the verifier (request classifier or pair network), when one is calibrated, must
          judge the two the same request;
        - ``accept`` is the caller's own check on the payload (the pipeline's: does this
          question still retrieve the answer's sources?).
        """
        floor = self.threshold if confirm is None else self.confirmed_threshold
        least_margin = self.margin if confirm is None else self.confirmed_margin
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        near = self._near(self._scope_key(scope), query, floor - self.margin)
        if near is None:
            return None  # nothing cached in this scope: not counted as a lookup
        for similarity, seq, entry in near:
            if similarity < floor:
                break
            group = entry.get("group") or f"#{seq}"
            rival = max((s for s, q, e in near if (e.get("group") or f"#{q}") != group), default=-1.0)
            if similarity - rival < least_margin:
                self.lookups["rejected_as_ambiguous"] += 1
                break  # every later candidate is closer still to a rival
            ref = f"{self._scope_key(scope)}:{seq}"
            needs_confirmation = similarity < self.threshold or similarity - rival < self.margin
            rejected = self._within_boundaries(ref, entry.get("tag"), similarity) or self._rejection(
                query[0], entry, question, accept, confirm if needs_confirmation else None
            )
            if rejected is not None:
                self.lookups[rejected] += 1
                continue
            self.lookups["semantic_hits"] += 1
            return CacheHit("semantic", similarity, entry["question"], entry["payload"], ref, entry.get("tag"))
        self.lookups["misses"] += 1
        return None

    def _within_boundaries(self, ref: str, tag: str | None, similarity: float) -> str | None:
        """The boundaries audits have learnt (:mod:`cache.audit`): the entry's own, and its
        collection's once that is over its bound. The lookup counter when outside, or None."""
        for floor in (self.evidence.entry_floor(ref), self.evidence.collection_floor(tag)):
            if floor is not None and similarity <= floor:
                return "rejected_by_evidence"
        return None

    def learn(self, hit: CacheHit, agreed: bool) -> None:
        """Evidence on a served semantic hit: whether the answer the question gets afresh
        agrees with the cached one (the pipeline's audit, ``Generating._audit``)."""
        if hit.kind == "semantic" and hit.ref:
            self.evidence.record(hit.tag, hit.ref, hit.similarity, agreed)

    def _near(self, skey: str, query: np.ndarray, floor: float) -> list[tuple[float, int, dict[str, Any]]] | None:
        """Entries that could be a hit, or a rival close enough to make a hit ambiguous: (cosine
        with the stored vector, sequence number, entry), nearest first; None for an empty scope."""
        with self._lock:
            sindex = self._sync(skey)
            if sindex.index.ntotal == 0:
                return None
            scores, ids = sindex.index.search(query, min(8, sindex.index.ntotal))
        near: list[tuple[float, int, dict[str, Any]]] = []
        for score, seq in zip(scores[0], ids[0], strict=True):
            if seq < 0 or score < floor:
                break
            entry = self._store.get(f"e:{skey}:{int(seq)}")
            if entry is None:  # evicted or expired
                continue
            stored = np.frombuffer(entry["vector"], dtype=np.float32)
            near.append((float(stored @ query[0]), int(seq), entry))  # the number may hold another entry now
        near.sort(key=lambda item: -item[0])
        return near

    def _rejection(
        self,
        query: np.ndarray,
        entry: dict[str, Any],
        question: str | None,
        accept: Callable[[dict[str, Any]], bool] | None,
        confirm: Callable[[dict[str, Any]], bool] | None,
    ) -> str | None:
        """The lookup counter that names why this candidate is not a hit, or None for a hit.
        ``confirm`` is given only when the candidate is below the plain threshold or margin."""
        if confirm is not None and not confirm(entry["payload"]):
            return "rejected_unconfirmed"
        if self.guards and question is not None and conflict(question, entry["question"]):
            return "rejected_by_guards"
        if self.verifier is not None and not self.verifier.accepts(
            query, np.frombuffer(entry["vector"], dtype=np.float32)
        ):
            return "rejected_by_verifier"
        if accept is not None and not accept(entry["payload"]):
            return "rejected_by_checks"
        return None

    def put(
        self,
        scope: str,
        question: str,
        vector: np.ndarray,
        payload: dict[str, Any],
        tag: str | None = None,
        group: str | None = None,
    ) -> None:
        """Store an answer. ``tag`` (the pipeline passes the collection) lets ``clear`` drop a
        subset; entries with the same ``group`` give the same answer (the pipeline passes the
        cited chunks), so they are not rivals for the margin check."""
        skey = self._scope_key(scope)
        vec = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vec.shape[0] != self.dimension:
            raise ValueError(f"vector has {vec.shape[0]} dimensions, the cache holds {self.dimension}")
        seq = self._counters.incr(f"seq:{skey}")
        entry = {
            "question": question,
            "vector": vec.tobytes(),
            "payload": payload,
            "created_at": time.time(),
            "tag": tag,
            "group": group,
        }
        self._store.set(f"e:{skey}:{seq}", entry, expire=self.ttl_s)
        self._store.set(f"x:{skey}:{normalize_question(question)}", seq, expire=self.ttl_s)

    def _sync(self, skey: str) -> _ScopeIndex:
        sindex = self._scopes.get(skey)
        latest = int(self._counters.get(f"seq:{skey}", 0))
        epoch = self._counters.get("epoch")
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

    def __len__(self) -> int:
        """Entries on disk: a scan of every key, for stats, never for a lookup."""
        return sum(1 for key in self._store.iterkeys() if str(key).startswith("e:"))

    def __bool__(self) -> bool:
        # An open cache is a cache, even an empty one; without this, ``if cache:`` would
        # call ``__len__`` and scan every key on every request (it did, in the pipeline).
        return True

    def stats(self) -> dict[str, Any]:
        """Entries on disk (all processes) and this process's lookups since it started."""
        by_tag: dict[str, int] = {}
        for key in self._store.iterkeys():
            if str(key).startswith("e:"):
                entry = self._store.get(key)
                if entry is not None:
                    by_tag[str(entry.get("tag"))] = by_tag.get(str(entry.get("tag")), 0) + 1
        return {
            "wrong_hits": {tag: self.evidence.estimate(tag) for tag in sorted(set(by_tag) | self.evidence.tags())},
            "entries": sum(by_tag.values()),
            "entries_by_collection": by_tag,
            "bytes": int(self._store.volume()),
            "threshold": self.threshold,
            "margin": self.margin,
            "confirmed_threshold": self.confirmed_threshold,
            "confirmed_margin": self.confirmed_margin,
            "verifier": self.verifier is not None,
            "ttl_s": self.ttl_s,
            "lookups": dict(self.lookups),
        }

    def clear(self, tag: str | None = None) -> int:
        """Drop every entry, or only those stored with ``tag``; returns how many went."""
        with self._lock:
            if tag is None:
                count = len(self)
                self._store.clear()
                self._counters.clear()
                self._counters.set("epoch", uuid.uuid4().hex)
                self._scopes.clear()
                return count
            count = 0
            for key in list(self._store.iterkeys()):
                if str(key).startswith("e:"):
                    entry = self._store.get(key)
                    if entry is not None and entry.get("tag") == tag:
                        # The exact-text key points at a number that now holds nothing: a miss.
                        self._store.delete(key)
                        count += 1
            return count

    def close(self) -> None:
        self._store.close()
        self._counters.close()

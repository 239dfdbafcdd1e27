"""A semantic response cache: the policy on top of an entry store (:mod:`cache.stores`).

Entries live in a store: diskcache on local disk by default (they survive restarts and are
shared by every worker process on the host), or Redis (``RAG_REDIS_URL``: shared by every
replica). Each entry belongs to a *scope* (the caller's choice; the pipeline uses
collection + index version + prompt version + generator), and a lookup only ever sees its
own scope: re-ingesting a collection changes the scope, so answers built on old content
are never served again.

Every hit is checked against the entry it returns (same normalised question for an exact
hit, stored vector still above the threshold for a semantic one), so an evicted or replaced
entry can cost a miss but never serve another question's answer. A store that cannot be
reached costs a miss (counted as ``store_errors``), never a failed request.

>>> cache = SemanticCache(tmp_path, dimension=384, threshold=0.9)      # doctest: +SKIP
>>> cache.put("scope", "How do I reset my password?", vector, {"answer": "..."})
>>> cache.get_exact("scope", "how do I reset my password")           # no embedding needed
>>> cache.get_similar("scope", other_vector)                          # near duplicates
"""

from __future__ import annotations

import logging
import re
import threading
import time
import unicodedata
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .audit import HitEvidence
from .blocks import Blocks
from .guards import conflict
from .stores import EntryStore, LocalStore, StoreUnavailable, scope_key
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
    vector: np.ndarray | None = None  # the stored question's


PINNED = "curated"
"""The first field of the scope of answers a person pinned (:mod:`rag.curated`): the same in
every release of the code, unlike the answers the code makes."""


class SemanticCache:
    def __init__(
        self,
        directory: Path | str | EntryStore,
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
        release: str = "",
    ) -> None:
        self.dimension = dimension
        # Answers are never shared across releases of the code that makes them (a new one may
        # answer better); blocks are: an answer people rejected stays rejected after an upgrade.
        self.code_release = release
        self.guards = guards
        self.margin = margin
        # Candidates the caller confirms with evidence of its own (``confirm``) may sit lower.
        self.confirmed_threshold = threshold if confirmed_threshold is None else min(confirmed_threshold, threshold)
        self.confirmed_margin = margin if confirmed_margin is None else min(confirmed_margin, margin)
        self.verifier = verifier
        self.threshold = threshold
        self.ttl_s = ttl_s
        # A path: the embedded store on local disk; or a store of its own (Redis).
        if isinstance(directory, (str, Path)):
            self.store: EntryStore = LocalStore(directory, dimension, size_limit_bytes)
        else:
            self.store = directory
        bound = max_wrong_rate if callable(max_wrong_rate) else lambda _tag: float(max_wrong_rate)
        self.evidence = HitEvidence(self.store.counters, bound)
        self.blocks = Blocks(self.store.counters, self.confirmed_threshold)
        self.lookups: Counter[str] = Counter()  # exact / semantic hits, misses, rejected by checks
        self._lookups_lock = threading.Lock()  # counted from the store's threads and the event loop
        self.count_hooks: list[Callable[[str], None]] = []  # told each outcome (metrics)
        self.failing_since: float | None = None
        """When (time.monotonic) storing answers began to fail, while it fails: `/readyz`."""

    def count(self, outcome: str) -> None:
        """One more lookup of ``outcome`` (this process's stats; and the hooks, a metric's)."""
        with self._lookups_lock:
            self.lookups[outcome] += 1
        for hook in self.count_hooks:
            hook(outcome)

    def _scope_key(self, scope: str) -> str:
        """Where ``scope``'s entries are (this release's; a person's pinned answers, every release's)."""
        per_release = self.code_release and not scope.startswith(f"{PINNED}|")
        return scope_key(f"{scope}|{self.code_release}" if per_release else scope)

    @staticmethod
    def blocks_key(scope: str) -> str:
        """Where ``scope``'s blocks are (every release's)."""
        return scope_key(scope)

    def get_exact(
        self, scope: str, question: str, accept: Callable[[dict[str, Any]], bool] | None = None
    ) -> CacheHit | None:
        normalized = normalize_question(question)
        try:
            found = self.store.find_exact(self._scope_key(scope), normalized)
        except StoreUnavailable as exc:
            self._unavailable(exc)
            return None
        entry = found[1] if found is not None else None
        if entry is None or normalize_question(entry["question"]) != normalized:
            return None
        if self._blocked(self.blocks_key(scope), entry):
            self.count("rejected_as_blocked")
            return None
        if accept is not None and not accept(entry["payload"]):
            self.count("exact_rejected")
            return None
        self.count("exact_hits")
        vector = np.frombuffer(entry["vector"], dtype=np.float32)
        return CacheHit("exact", 1.0, entry["question"], entry["payload"], vector=vector)

    def get_similar(
        self,
        scope: str,
        vector: np.ndarray,
        question: str | None = None,
        accept: Callable[[dict[str, Any]], bool] | None = None,
        confirm: Callable[[dict[str, Any]], bool] | None = None,
        current: Callable[[dict[str, Any]], bool] | None = None,
    ) -> CacheHit | None:
        """The nearest cached question at or above the threshold that passes the checks.

        - ``current``: is the payload still valid (its documents unchanged)? An entry that is
          not is neither a candidate nor a rival: after a re-ingest the question's old answer
          and its new one must not make each other ambiguous;

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
        try:
            query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
            return self._similar(scope, query, question, accept, confirm, current)
        except StoreUnavailable as exc:
            self._unavailable(exc)
            return None

    def _similar(
        self,
        scope: str,
        query: np.ndarray,
        question: str | None,
        accept: Callable[[dict[str, Any]], bool] | None,
        confirm: Callable[[dict[str, Any]], bool] | None,
        current: Callable[[dict[str, Any]], bool] | None = None,
    ) -> CacheHit | None:
        floor = self.threshold if confirm is None else self.confirmed_threshold
        least_margin = self.margin if confirm is None else self.confirmed_margin
        near = self._near(self._scope_key(scope), query, floor - self.margin)
        if near is None:
            return None  # nothing cached in this scope: not counted as a lookup
        if current is not None:
            near = [item for item in near if current(item[2]["payload"])]
        for similarity, seq, entry in near:
            if similarity < floor:
                break
            group = entry.get("group") or f"#{seq}"
            rival = max((s for s, q, e in near if (e.get("group") or f"#{q}") != group), default=-1.0)
            if similarity - rival < least_margin:
                self.count("rejected_as_ambiguous")
                break  # every later candidate is closer still to a rival
            ref = f"{self._scope_key(scope)}:{seq}"
            needs_confirmation = similarity < self.threshold or similarity - rival < self.margin
            rejected = (
                self._within_boundaries(ref, entry.get("tag"), similarity)
                or ("rejected_as_blocked" if self._blocked(self.blocks_key(scope), entry) else None)
                or self._rejection(query[0], entry, question, accept, confirm if needs_confirmation else None)
            )
            if rejected is not None:
                self.count(rejected)
                continue
            self.count("semantic_hits")
            return CacheHit("semantic", similarity, entry["question"], entry["payload"], ref, entry.get("tag"))
        self.count("misses")
        return None

    def _within_boundaries(self, ref: str, tag: str | None, similarity: float) -> str | None:
        """The boundaries audits have learnt (:mod:`cache.audit`): the entry's own, and its
        collection's once that is over its bound. The lookup counter when outside, or None."""
        for floor in (self.evidence.entry_floor(ref), self.evidence.collection_floor(tag)):
            if floor is not None and similarity <= floor:
                return "rejected_by_evidence"
        return None

    def learn(self, hit: CacheHit, agreed: bool, recount: bool = False) -> None:
        """Evidence on a served semantic hit: whether the answer the question gets afresh
        agrees with the cached one (the pipeline's audit, ``Generating._audit``). ``recount``:
        the hit was counted already (as right), and is now found wrong."""
        if hit.kind == "semantic" and hit.ref:
            try:
                self.evidence.record(hit.tag, hit.ref, hit.similarity, agreed, recount=recount)
            except StoreUnavailable as exc:
                log.warning("response cache store unavailable, audit not recorded: %s", exc)

    def _blocked(self, skey: str, entry: dict[str, Any]) -> bool:
        vector = np.frombuffer(entry["vector"], dtype=np.float32)
        return (
            self.blocks.matching(skey, vector, str(entry["payload"].get("answer")), str(entry.get("group"))) is not None
        )

    def reject(
        self, scope: str, question: str, vector: np.ndarray, answer: str, group: str, tag: str | None = None
    ) -> tuple[int, str]:
        """A thumbs-down on ``answer`` (citing ``group``) given to ``question``: every entry in
        the scope that gives it goes now (the same answer word for word, or to a question in
        this one's neighbourhood), and it is blocked from coming back (:mod:`cache.blocks`).
        Returns (entries evicted, the block's id)."""
        bkey = self.blocks_key(scope)
        vec = np.asarray(vector, dtype=np.float32).reshape(-1)
        block_id = self.blocks.add(bkey, question, vec, answer, group, tag)
        match = self.blocks.matcher(bkey)

        def doomed(entry: dict[str, Any]) -> bool:
            stored = np.frombuffer(entry["vector"], dtype=np.float32)
            return match(stored, str(entry["payload"].get("answer")), str(entry.get("group"))) is not None

        return self._remove_where(self._scope_key(scope), question, vec, doomed), block_id

    def drop(self, scope: str, question: str, vector: np.ndarray, group: str) -> int:
        """Remove the entries of ``group`` stored for this question or near it (a curated
        answer edited or removed); returns how many went."""
        vec = np.asarray(vector, dtype=np.float32).reshape(-1)
        return self._remove_where(self._scope_key(scope), question, vec, lambda entry: entry.get("group") == group)

    def forget(self, questions: set[str], tag: str | None) -> int:
        """Every entry stored for one of these questions' texts, in any scope of collection
        ``tag`` (an erasure request: the customer's words go with the answers given to them;
        an earlier release's scopes too); how many went."""
        asked = {normalize_question(q) for q in questions}
        removed = self.store.remove_where(lambda e: e.get("tag") == tag and normalize_question(e["question"]) in asked)
        self.store.checkpoint()
        return removed

    def drop_stale(self, tag: str, current: Callable[[dict[str, Any]], bool]) -> int:
        """Entries of collection ``tag`` whose payload ``current`` says the live index no longer
        stands behind (a re-ingest changed or removed a passage they cite; an "I don't know"
        given on an earlier version), curated answers aside (a person reviews those): removed
        now instead of refused at every lookup until they age out; how many went."""
        removed = self.store.remove_where(
            lambda e: e.get("tag") == tag and "curated_id" not in e["payload"] and not current(e["payload"])
        )
        self.store.checkpoint()
        return removed

    def expire(self, before: float) -> int:
        """Entries stored before ``before`` (a time.time()) removed, curated answers kept (the
        retention limit: entries stored before it was set have no lifetime that ends)."""
        removed = self.store.remove_where(
            lambda e: e.get("created_at", before) < before and "curated_id" not in e["payload"]
        )
        self.store.checkpoint()
        return removed

    def _remove_where(self, skey: str, question: str, vec: np.ndarray, doomed: Callable[[dict[str, Any]], bool]) -> int:
        # The neighbourhood: the 64 nearest entries (a block also covers the same answer to
        # any question, checked again at each admission and hit).
        found = list(self.store.near(skey, vec, 64, 0.0) or [])
        exact = self.store.find_exact(skey, normalize_question(question))
        removed = 0
        for seq, entry in found + ([exact] if exact is not None else []):
            if doomed(entry) and self.store.remove(skey, seq):
                removed += 1
        return removed

    def _near(self, skey: str, query: np.ndarray, floor: float) -> list[tuple[float, int, dict[str, Any]]] | None:
        """Entries that could be a hit, or a rival close enough to make a hit ambiguous: (cosine
        with the stored vector, sequence number, entry), nearest first; None for an empty scope."""
        found = self.store.near(skey, query[0], 8, floor)
        if found is None:
            return None
        near = []
        for seq, entry in found:
            stored = np.frombuffer(entry["vector"], dtype=np.float32)
            similarity = float(stored @ query[0])  # the number may hold another entry now
            if similarity >= floor:
                near.append((similarity, seq, entry))
        near.sort(key=lambda item: -item[0])
        return near

    def _unavailable(self, exc: Exception) -> None:
        self.count("store_errors")
        log.warning("response cache store unavailable, answering as a miss: %s", exc)
        return None

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
        keep: bool = False,
    ) -> None:
        """Store an answer (``keep``: no TTL, as a curated answer). ``tag`` (the pipeline passes the collection) lets ``clear`` drop a
        subset; entries with the same ``group`` give the same answer (the pipeline passes the
        cited chunks), so they are not rivals for the margin check."""
        vec = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vec.shape[0] != self.dimension:
            raise ValueError(f"vector has {vec.shape[0]} dimensions, the cache holds {self.dimension}")
        try:
            if self.blocks.matching(self.blocks_key(scope), vec, str(payload.get("answer")), str(group)):
                self.count("not_stored_blocked")  # people rejected this answer here
                return
        except StoreUnavailable:
            pass  # the add below reports it
        entry = {
            "question": question,
            "vector": vec.tobytes(),
            "payload": payload,
            "created_at": time.time(),
            "tag": tag,
            "group": group,
        }
        try:
            # An earlier entry for this question with another answer stays, as a rival: its
            # rewordings are ambiguous (after a re-ingest a stale one is no rival: ``current``).
            self.store.add(self._scope_key(scope), normalize_question(question), entry, -1.0 if keep else self.ttl_s)
        except StoreUnavailable as exc:
            self.count("store_errors")
            self.failing_since = self.failing_since or time.monotonic()
            log.warning("response cache store unavailable, answer not stored: %s", exc)
        else:
            self.failing_since = None

    def identity(self) -> str:
        """The store's identity: made when its state began, kept across clears, so a new one
        says the store lost everything (a Redis restarted without persistence or flushed, a
        cache set aside as corrupt): what is kept elsewhere must be put back."""
        made = uuid.uuid4().hex
        return str(self.store.counters.update("store:id", lambda known: known or made, None))

    def __len__(self) -> int:
        """Entries in the store: a scan, for stats, never for a lookup."""
        return sum(self.store.count_by_tag().values())

    def __bool__(self) -> bool:
        # An open cache is a cache, even an empty one; without this, ``if cache:`` would
        # call ``__len__`` and scan every key on every request (it did, in the pipeline).
        return True

    def stats(self) -> dict[str, Any]:
        """Entries on disk (all processes) and this process's lookups since it started."""
        by_tag = self.store.count_by_tag()  # raises StoreUnavailable: the caller's 503
        wrong_hits = {tag: self.evidence.estimate(tag) for tag in sorted(set(by_tag) | self.evidence.tags())}
        volume = self.store.volume()
        return {
            "store": type(self.store).__name__,
            "wrong_hits": wrong_hits,
            "entries": sum(by_tag.values()),
            "entries_by_collection": by_tag,
            "bytes": volume,
            "threshold": self.threshold,
            "margin": self.margin,
            "confirmed_threshold": self.confirmed_threshold,
            "confirmed_margin": self.confirmed_margin,
            "verifier": self.verifier is not None,
            "ttl_s": self.ttl_s,
            "lookups": self.lookups_now(),
        }

    def lookups_now(self) -> dict[str, int]:
        """This process's lookups by outcome, since it started."""
        with self._lookups_lock:
            return dict(self.lookups)

    def clear(self, tag: str | None = None) -> int:
        """Drop every entry, or only those stored with ``tag``; returns how many went."""
        return self.store.clear(tag)

    def claim(self, scope: str, question: str, ttl_s: float = 60.0) -> bool:
        """The right to answer this question for every host sharing the store (True), or
        False when another host is answering it now (:meth:`claimed` says until when)."""
        try:
            return self.store.claim(self._claim_key(scope, question), ttl_s)
        except StoreUnavailable:
            return True  # nobody to share with: answer it here

    def claimed(self, scope: str, question: str) -> bool:
        try:
            return self.store.claimed(self._claim_key(scope, question))
        except StoreUnavailable:
            return False

    def renew(self, scope: str, question: str) -> None:
        """Keep this host's claim while it is still answering (its TTL starts again)."""
        try:
            self.store.renew(self._claim_key(scope, question))
        except StoreUnavailable:
            pass

    def release(self, scope: str, question: str) -> None:
        try:
            self.store.release(self._claim_key(scope, question))
        except StoreUnavailable:
            pass

    @property
    def shared(self) -> bool:
        """Whether other hosts see this cache (a claim then means something across hosts)."""
        return self.store.shared

    def _claim_key(self, scope: str, question: str) -> str:
        return f"{self._scope_key(scope)}:{normalize_question(question)}"

    def close(self) -> None:
        self.store.close()

"""Retrieval, the query path's search stage: which collection version is live, what to search
with (the entity a conversation names, or the turn a follow-up follows), hybrid search, and
the optional reranker. :class:`rag.pipeline.Pipeline` is one.

Versions are followed off the request path. A request reads ``CURRENT`` and, if an ingest
(here, or on another host writing the shared folder) has switched it, wakes the watcher and
is answered from the version already loaded. The watcher (a thread; it also polls every
``RAG_INDEX_POLL_S``, for replicas no request reaches) loads the new version beside the old
one, searches it once so its pages are in, and swaps it in under a lock. The old version
serves the requests that hold it and is freed after the last (never a third copy held).
A version that fails to load is logged, reported in ``/readyz`` and not tried again; the old
one keeps serving until ``CURRENT`` moves on."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .conversation import new_topic, refers_back, standalone
from .embedder import Embedder
from .errors import CollectionDamagedError
from .rerank import RerankerUnavailable, load_reranker
from .settings import Settings
from .store import (
    CURRENT_FILE,
    CollectionIndex,
    RetrievedChunk,
    SearchResult,
    collection_dir,
    current_version_dir,
)

_CHAINED_TURNS = 3  # user turns a chain of follow-ups reaches back (the embedder reads 256 tokens)

log = logging.getLogger("rag.pipeline")


class Retrieval:
    def __init__(self, settings: Settings, embedder: Embedder) -> None:
        self.settings = settings
        self.embedder = embedder
        self.reranker = load_reranker(settings.reranker, settings)
        self.rerank_failures = 0  # requests that kept the hybrid order because the reranker failed
        self._indexes: dict[str, CollectionIndex] = {}
        self._index_lock = threading.Lock()
        self.swap_errors: dict[str, tuple[Path, str]] = {}  # collection -> (version, why it did not load)
        self._damaged: dict[str, tuple[tuple[Any, ...], CollectionDamagedError]] = {}  # its files then, the error
        self._refresh_lock = threading.Lock()
        self._watch = threading.Event()  # set: look now
        self._closing = threading.Event()
        self._watcher: threading.Thread | None = None
        # Called with each version this replica starts serving (the first load, each swap).
        self.on_version: list[Callable[[CollectionIndex], None]] = []

    def get_index(self, collection: str) -> CollectionIndex:
        """The version of a collection this replica serves. Only the first request loads it; a
        newer version is loaded by the watcher, beside this one, while this one answers."""
        loaded = self._indexes.get(collection)
        if loaded is not None:
            if self._live(collection) != loaded.version_dir:
                self._watch.set()
            return loaded
        failed = self._damaged.get(collection)
        if failed is not None and failed[0] == self._files_now(collection):
            raise failed[1]  # the same damaged files: not read and hashed again for each request
        with self._index_lock:
            loaded = self._indexes.get(collection)
            if loaded is None:
                seen = self._files_now(collection)
                try:
                    loaded = self._indexes[collection] = self._load(collection)
                except CollectionDamagedError as exc:
                    self._damaged[collection] = (seen, exc)
                    raise
                self._damaged.pop(collection, None)
                self._start_watcher()
                self._announce(loaded)
            return loaded

    def _files_now(self, collection: str) -> tuple[Any, ...]:
        """What a damaged verdict holds for: CURRENT, and the live version's files as they are
        now (a restore or a rebuild changes one)."""
        cdir = collection_dir(self.settings.collections_dir, collection)
        paths = [cdir / CURRENT_FILE, *(p for p in sorted(cdir.glob("v[0-9]*/*")) if p.is_file())]
        out: list[tuple[Any, ...]] = []
        for path in paths:
            try:
                st = path.stat()
                out.append((path.name, st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append((path.name, None))
        return tuple(out)

    async def index_for(self, collection: str) -> CollectionIndex:
        """:meth:`get_index` from the event loop: a first load (a FAISS file, seconds for a big
        collection) in a worker thread, so the other requests go on meanwhile."""
        if collection in self._indexes:
            return self.get_index(collection)
        return await asyncio.to_thread(self.get_index, collection)

    def refresh(self) -> list[str]:
        """Swap in every loaded collection's newer version now (what the watcher does each
        poll); returns the collections swapped."""
        swapped = []
        with self._refresh_lock:  # one load at a time (the watcher, or a caller)
            for name, loaded in list(self._indexes.items()):
                if self._swap(name, loaded):
                    swapped.append(name)
        return swapped  # the old versions go with the last requests that hold them

    def _swap(self, name: str, loaded: CollectionIndex) -> bool:
        live = self._live(name)
        if live == loaded.version_dir:
            self.swap_errors.pop(name, None)  # CURRENT came back to the version serving
        if live is None or live == loaded.version_dir or self.swap_errors.get(name, (None,))[0] == live:
            return False
        started = time.perf_counter()
        try:
            fresh = self._load(name)
            fresh.warm()
        except Exception as exc:  # a bad version never takes down the one serving
            self.swap_errors[name] = (live, str(exc))
            log.error(
                "collection %r: version %s did not load, still serving %s: %s", name, live.name, loaded.version, exc
            )
            return False
        with self._index_lock:
            self._indexes[name] = fresh
        self.swap_errors.pop(name, None)
        self._announce(fresh)
        log.info(
            "collection %r now serves version %s (was %s), loaded in %.0f ms",
            name,
            fresh.version,
            loaded.version,
            (time.perf_counter() - started) * 1000,
        )
        return True

    def _announce(self, index: CollectionIndex) -> None:
        for callback in list(self.on_version):
            try:
                callback(index)
            except Exception:  # a listener's failure never costs the version
                log.exception("collection %r version %s: a listener failed", index.name, index.version)

    def close_indexes(self) -> None:
        self._closing.set()
        self._watch.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=10)
        for index in self._indexes.values():
            index.close()

    def _live(self, collection: str) -> Path | None:
        return current_version_dir(collection_dir(self.settings.collections_dir, collection))

    def _load(self, collection: str) -> CollectionIndex:
        return CollectionIndex.load(
            self.settings.collections_dir, collection, model=self.embedder.name, dimension=self.embedder.dimension
        )

    def _start_watcher(self) -> None:
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._follow_versions, name="rag-index-watcher", daemon=True)
            self._watcher.start()

    def _follow_versions(self) -> None:
        while not self._closing.is_set():
            self._watch.wait(self.settings.index_poll_s)
            self._watch.clear()
            if self._closing.is_set():
                return
            try:
                self.refresh()
            except Exception:  # never let the watcher die: the next poll tries again
                log.exception("index version watcher")

    def plan_search(
        self,
        index: CollectionIndex,
        question: str,
        history: list[dict[str, str]] | None,
        filters: dict[str, Any] | None,
    ) -> tuple[str, dict[str, Any] | None]:
        """What to search with: the caller's filters, else the entity the question or its
        conversation names; a follow-up naming none is searched with the turn it follows, a
        question of a topic of its own alone (:func:`rag.conversation.refers_back`)."""
        leans = refers_back(question)
        if not filters and self.settings.entity_filter:
            # The conversation's entity carries over ("is there free wifi?" in a talk about one
            # hotel), but not to a question that says it starts another topic ("Thanks.
            # Different question: how old must I be for an e-bike?" after a turn about one dock).
            fresh = not leans and new_topic(question)
            entity = standalone(question, None if fresh else history, index.titles()).entity
            filters = {"title": entity} if entity else None
        if not filters and leans and (pasted := self.with_turn_before(question, history)):
            return pasted, None
        return question, filters

    @staticmethod
    def with_turn_before(question: str, history: list[dict[str, str]] | None) -> str | None:
        """The question after the user turn it follows (None: no turn before). A follow-up
        that points back is searched with it; one that does not, only if alone it finds no
        answer ("how do I check the balance?" after "do gift cards expire?"). A turn before
        that is a follow-up itself brings the one it follows ("Does it cover sun fading?"
        after "And on lamps?" after "How long is the warranty on furniture?"), up to
        ``_CHAINED_TURNS`` turns."""
        earlier = [t["content"] for t in reversed(history or []) if t.get("role") == "user" and t.get("content")]
        kept: list[str] = []
        for turn in earlier[:_CHAINED_TURNS]:
            kept.insert(0, turn)
            if not refers_back(turn):
                break
        return "\n".join([*kept, question]) if kept else None

    def retrieve(
        self, index: CollectionIndex, vector: np.ndarray, text: str, k: int, filters: dict[str, Any] | None = None
    ) -> list[RetrievedChunk]:
        """Hybrid search (``RAG_RETRIEVAL_MODE``) within ``filters``, then the reranker if one
        is configured (it sees a wider pool and keeps the best ``k``)."""
        return self.retrieve_detailed(index, vector, text, k, filters).chunks

    def retrieve_detailed(
        self, index: CollectionIndex, vector: np.ndarray, text: str, k: int, filters: dict[str, Any] | None = None
    ) -> SearchResult:
        """:meth:`retrieve`, with the first chunk of the dense and of the lexical ranking."""
        mode = self.settings.retrieval_mode
        if self.reranker is None:
            return index.search_detailed(vector, k, text, filters, mode)
        found = index.search_detailed(vector, max(k, self.settings.rerank_pool), text, filters, mode)
        try:
            ranked = list(self.reranker.rerank(text, found.chunks))
        except RerankerUnavailable as exc:  # the reranking is lost, not the answer
            self.rerank_failures += 1
            log.warning("reranker unavailable, keeping the hybrid order: %s", exc)
            ranked = list(found.chunks)
        return replace(found, chunks=ranked[:k])

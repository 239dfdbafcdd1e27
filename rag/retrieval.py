"""Retrieval, the query path's search stage: which collection version is live, what to search
with (the entity a conversation names, or the turn a follow-up follows), hybrid search, and
the optional reranker. :class:`rag.pipeline.Pipeline` is one."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import Any

import numpy as np

from .conversation import standalone
from .embedder import Embedder
from .rerank import RerankerUnavailable, load_reranker
from .settings import Settings
from .store import CollectionIndex, RetrievedChunk, SearchResult, collection_dir, current_version_dir

log = logging.getLogger("rag.pipeline")


class Retrieval:
    def __init__(self, settings: Settings, embedder: Embedder) -> None:
        self.settings = settings
        self.embedder = embedder
        self.reranker = load_reranker(settings.reranker, settings)
        self.rerank_failures = 0  # requests that kept the hybrid order because the reranker failed
        self._indexes: dict[str, CollectionIndex] = {}
        self._index_lock = threading.Lock()

    def get_index(self, collection: str) -> CollectionIndex:
        """The live version of a collection, reloaded when an ingest run has switched it."""
        with self._index_lock:
            loaded = self._indexes.get(collection)
            live = current_version_dir(collection_dir(self.settings.collections_dir, collection))
            if loaded is not None and loaded.version_dir == live:
                return loaded
            index = CollectionIndex.load(
                self.settings.collections_dir, collection, model=self.embedder.name, dimension=self.embedder.dimension
            )
            self._indexes[collection] = index
            return index

    def plan_search(
        self,
        index: CollectionIndex,
        question: str,
        history: list[dict[str, str]] | None,
        filters: dict[str, Any] | None,
    ) -> tuple[str, dict[str, Any] | None]:
        """What to search with: the caller's filters, else the entity the question or its
        conversation names; a follow-up naming none is searched with the turn it follows."""
        if not filters and self.settings.entity_filter:
            entity = standalone(question, history, index.titles()).entity
            filters = {"title": entity} if entity else None
        if not filters and history:
            previous = next((t["content"] for t in reversed(history) if t.get("role") == "user"), "")
            if previous:
                return f"{previous}\n{question}", None
        return question, filters

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

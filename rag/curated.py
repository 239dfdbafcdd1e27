"""Curated answers: an answer a person approved for a question, served first to that
question and its rewordings.

They live in the response cache's own store, in a scope of their own per collection lineage
(so they survive re-ingests and are shared by every replica that shares the cache), kept
without a TTL. Looking one up is the cache's lookup: the same threshold, margin, guards,
verifier and learned boundaries, so a curated answer reaches the rewordings a cached one
would, and no further. A curated answer stands while every chunk it cites is unchanged; one
citing nothing stands until it is removed. Each citation keeps a fingerprint of its chunk's
whole text (its ``text`` is a snippet), so a new version of the collection is checked by
content (:func:`recite`), not by chunk ids: a rebuilt collection numbers its chunks anew.
The record of who pinned what (and each edit) is the serving layer's
(:mod:`serving.curation`); this module stores and finds them, and checks their citations.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from cache import PINNED

from .embedder import embed_async, question_text
from .store import CollectionIndex, RetrievedChunk
from .wire import Citation

if TYPE_CHECKING:
    from cache import CacheHit, SemanticCache

    from .embedder import Embedder

CURATED = "curated"  # the answer kind


def curated_scope(index: CollectionIndex) -> str:
    return f"{PINNED}|{index.name}|{index.lineage}"  # the same in every release


def curated_valid(index: CollectionIndex) -> Callable[[dict[str, Any]], bool]:
    """A curated answer stands while every chunk it cites is unchanged."""

    def accept(payload: dict[str, Any]) -> bool:
        cited = [int(c["id"]) for c in payload.get("citations", [])]
        return not cited or index.has_chunks(cited)

    return accept


def _fingerprint(chunk: RetrievedChunk) -> str:
    return hashlib.sha256(chunk.text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _holds(cited: dict[str, Any], chunk: RetrievedChunk) -> bool:
    """Whether ``chunk`` has the text ``cited`` was made from (by its snippet, for citations
    kept before fingerprints)."""
    if "fingerprint" in cited:
        return bool(cited["fingerprint"] == _fingerprint(chunk))
    return Citation.from_chunk(chunk).text == cited.get("text")


def fingerprinted(index: CollectionIndex, citations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Citations as a curated answer keeps them: each with its chunk's fingerprint (a chunk
    this version no longer holds keeps none, and is checked by its snippet)."""
    held = index.chunks([int(c["id"]) for c in citations]) if citations else {}
    return [
        {**cited, "fingerprint": _fingerprint(held[int(cited["id"])])} if int(cited["id"]) in held else cited
        for cited in citations
    ]


def recite(index: CollectionIndex, citations: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The citations as this version holds them, or None when the text of one is gone. Each
    stands where its chunk still has the same text; one whose chunk changed id (another part of
    its file edited, a collection rebuilt) moves to the chunk of its document with its text,
    and to another document's only when its own is gone (moved or renamed): a document that
    changed is not answered from a stale copy elsewhere."""
    held = index.chunks([int(c["id"]) for c in citations]) if citations else {}
    now = []
    for cited in citations:
        chunk = held.get(int(cited["id"]))
        if chunk is not None and chunk.document_id == cited["document_id"] and _holds(cited, chunk):
            now.append(cited)
            continue
        if "fingerprint" not in cited:  # kept before fingerprints: its snippet shows only the start
            return None
        prefix = str(cited.get("text", "")).removesuffix("…")
        here = bool(index.document_chunks(cited["document_id"], 1))  # its document is still here: it changed
        found = index.chunks_starting(prefix, cited["document_id"])
        moved = next(
            (c for c in found if _holds(cited, c) and (c.document_id == cited["document_id"] or not here)), None
        )
        if moved is None:
            return None
        now.append(
            {**asdict(Citation.from_chunk(moved)), "score": cited.get("score", 1.0), "fingerprint": _fingerprint(moved)}
        )
    return now


def group_of(curated_id: str) -> str:
    return f"{CURATED}:{curated_id}"


class Curating:
    """The pipeline's side of curated answers: put one in the cache, take one out."""

    cache: SemanticCache | None
    embedder: Embedder

    def get_index(self, collection: str) -> CollectionIndex:
        raise NotImplementedError

    async def _question_vector(self, question: str) -> Any:
        return (await embed_async(self.embedder, [question_text(self.embedder, question)]))[0]

    async def curate(
        self,
        collection: str,
        question: str,
        answer: str,
        citations: list[dict[str, Any]],
        curated_id: str,
        version: int,
    ) -> bool:
        """Serve ``answer`` to ``question`` and its rewordings (in place of any earlier version
        of this curated answer). False without a response cache (nothing to serve it from)."""
        if self.cache is None:
            return False
        index = self.get_index(collection)
        vector = await self._question_vector(question)
        payload = {
            "answer": answer,
            "answer_kind": CURATED,
            "citations": [{k: v for k, v in c.items() if k != "fingerprint"} for c in citations],  # as answers cite
            "curated_id": curated_id,
            "version": version,
            "index_version": index.version,
        }
        scope = curated_scope(index)
        await asyncio.to_thread(self.cache.drop, scope, question, vector, group_of(curated_id))
        await asyncio.to_thread(
            self.cache.put, scope, question, vector, payload, collection, group_of(curated_id), True
        )
        return True

    async def uncurate(self, collection: str, question: str, curated_id: str) -> int:
        """Stop serving a curated answer; returns the entries removed."""
        if self.cache is None:
            return 0
        vector = await self._question_vector(question)
        scope = curated_scope(self.get_index(collection))
        return await asyncio.to_thread(self.cache.drop, scope, question, vector, group_of(curated_id))

    def curated_exact(self, index: CollectionIndex, question: str) -> CacheHit | None:
        """The curated answer pinned to exactly this question (normalised), if it still stands."""
        if self.cache is None:
            return None
        return self.cache.get_exact(curated_scope(index), question, accept=curated_valid(index))

    def curated_entry(self, collection: str, question: str) -> dict[str, Any] | None:
        """The curated answer stored for exactly this question (its payload), if any."""
        if self.cache is None:
            return None
        hit = self.cache.get_exact(curated_scope(self.get_index(collection)), question)
        return hit.payload if hit is not None else None

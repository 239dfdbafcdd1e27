"""Rerankers a user might install, for the reranking-stage tests (RAG_RERANKER=tests.rerankers:...)."""

from collections.abc import Sequence

from rag.store import RetrievedChunk


class Reverse:
    """Turns the hybrid order upside down: proof that the stage's order is the one kept."""

    def rerank(self, query: str, chunks: Sequence[RetrievedChunk]) -> list[RetrievedChunk]:
        return list(reversed(chunks))


class NoMethod:
    pass

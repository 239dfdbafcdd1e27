"""The optional reranking stage: off by default, any reranker the user installs.

No reranker model ships on PyPI today, so none is bundled. Set ``RAG_RERANKER`` to

- ``cross-encoder:PATH``: a sentence-transformers CrossEncoder saved at PATH (a folder you
  copied onto the machine; nothing is downloaded), or
- ``module:attribute``: any importable class or factory; it is called with no arguments and
  must return an object with ``rerank(query, chunks) -> chunks`` (the Protocol below).

The reranker sees ``RAG_RERANK_POOL`` chunks from hybrid search and the best ``top_k`` of
its order are kept.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol, runtime_checkable

from .errors import RagError
from .index import RetrievedChunk


@runtime_checkable
class Reranker(Protocol):
    def rerank(self, query: str, chunks: Sequence[RetrievedChunk]) -> Sequence[RetrievedChunk]: ...


class CrossEncoderReranker:
    """A sentence-transformers CrossEncoder from a local folder."""

    def __init__(self, path: str) -> None:
        from sentence_transformers import CrossEncoder

        self._model = CrossEncoder(path, device="cpu", local_files_only=True)

    def rerank(self, query: str, chunks: Sequence[RetrievedChunk]) -> list[RetrievedChunk]:
        if not chunks:
            return []
        scores = self._model.predict([(query, c.text) for c in chunks], show_progress_bar=False)
        order = sorted(range(len(chunks)), key=lambda i: -float(scores[i]))
        # The cosine score stays: the relevance floor reads it.
        return [replace(chunks[i]) for i in order]


def load_reranker(spec: str | None) -> Reranker | None:
    if not spec:
        return None
    try:
        if spec.startswith("cross-encoder:"):
            return CrossEncoderReranker(spec.removeprefix("cross-encoder:"))
        module_name, _, attribute = spec.partition(":")
        if not attribute:
            raise ValueError("expected module:attribute or cross-encoder:PATH")
        reranker = getattr(importlib.import_module(module_name), attribute)()
    except Exception as exc:
        raise RagError(
            f"cannot load the reranker {spec!r} ({type(exc).__name__}: {exc}): fix or unset RAG_RERANKER"
        ) from exc
    if not isinstance(reranker, Reranker):
        raise RagError(f"reranker {spec!r} has no rerank(query, chunks) method: fix or unset RAG_RERANKER")
    return reranker

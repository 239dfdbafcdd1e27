"""The semantic response cache. It takes vectors, not an embedder, and knows nothing of
the query pipeline."""

from .semantic import PINNED, CacheHit, SemanticCache, normalize_question

__all__ = ["PINNED", "CacheHit", "SemanticCache", "normalize_question"]

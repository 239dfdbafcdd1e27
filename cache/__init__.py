"""The semantic response cache. It takes vectors, not an embedder, and knows nothing of
the query pipeline."""

from .semantic import CacheHit, SemanticCache, normalize_question

__all__ = ["CacheHit", "SemanticCache", "normalize_question"]

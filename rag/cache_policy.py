"""The cache policy: when the response cache may answer for the pipeline, in one place.

- how the cache is opened from the settings (threshold, margin, the calibrated pair
  verifier, limits): :func:`open_cache`, :func:`load_verifier`;
- the checks on a near duplicate before it serves, which read what retrieval found for the
  new question and the sources the cached answer cites (:func:`sources_agree`,
  :func:`faq_entry`, :func:`faq_confirmed`);
- how long a cached answer stands: :func:`still_valid` (its cited chunks unchanged), and
  :func:`added_since` (no passage added since then is retrieved for its question);
  :func:`drop_stale` removes the ones a re-ingest made stale.

The cache's own mechanisms (the similarity search, its guards against negation and number
changes, the verifier's forward pass) live in ``cache/``.

Measured on covid-faq (213 FAQ entries cached, 224 reworded questions asked; ``rag eval
cache --corpus --qa``): the source check alone lets wrong answers through at any useful
threshold, and an FAQ entry that both searches find first is safe much lower:

- threshold 0.86, margin 0.08, source check: 14.7% correct hits, 0.9% wrong;
- plus confirmed FAQ hits from 0.70 with margin 0.04: 29.0% correct, 0.9% wrong (both
  wrong hits are exact repeats of another entry's question).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cache import SemanticCache
from cache.redis_store import DEFAULT_TTL_S, RedisStore
from cache.stores import StoreUnavailable
from cache.verifier import Verifier
from cache.verifier import load_verifier as read_verifier

from . import __version__
from .errors import RagError
from .prompts import prompt_version
from .store import CollectionIndex, RetrievedChunk, SearchResult, is_faq_question

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger("rag.cache")


Payload = dict[str, Any]


def sources_agree(found: SearchResult) -> Callable[[Payload], bool]:
    """A cached answer fits a new question only if the two find the same passage ("cancel an
    order" and "place an order" find different articles): the new question's best chunk is
    one the answer cites or the one the cached question found first, or the passage the
    answer quotes first is among the new question's two best (a quote cites only what it
    quotes, which the judge may take from the second chunk retrieval found). Measured on
    covid-faq at threshold 0.80: wrong hits 16.1% -> 9.8%, correct hits 30.4% -> 29.9%."""
    top = found.chunks[0].id if found.chunks else None
    best_two = {c.id for c in found.chunks[:2]}

    def accept(payload: Payload) -> bool:
        if top is None:
            return False
        cited = [c["id"] for c in payload.get("citations", [])]
        return payload.get("top_chunk") == top or top in cited or bool(cited and cited[0] in best_two)

    return accept


def added_since(payload: Payload, chunks: list[RetrievedChunk], floor: float) -> bool:
    """Whether ``chunks`` (what retrieval finds for the question now) hold a passage, at
    ``floor`` or above, added after the answer was given: a new document, or a changed one
    (its chunks are new). It may answer the question where the cited one did not, so the
    question is answered again; an answer whose question finds nothing new stands."""
    newest = payload.get("newest_chunk")
    return newest is not None and any(c.id > newest and c.score >= floor for c in chunks)


def nothing_added(found: SearchResult, floor: float) -> Callable[[Payload], bool]:
    """:func:`added_since` as a near duplicate's check, on what the new question found."""
    return lambda payload: not added_since(payload, found.chunks, floor)


def faq_entry(found: SearchResult) -> str | None:
    """The FAQ entry that both the dense and the lexical search find first, if they agree on
    one: a document whose title is a question. The pipeline stores it with an answer."""
    dense, lexical = found.dense_top, found.lexical_top
    if dense is None or lexical is None or dense.document_id != lexical.document_id:
        return None
    return dense.document_id if is_faq_question(dense.title) else None


def faq_confirmed(found: SearchResult) -> Callable[[Payload], bool]:
    """Two independent witnesses confirm a cached answer: the dense and the lexical search for
    the new question both find first the same FAQ entry as they did for the cached question.

    An FAQ entry answers one question, so two questions that both searches send to it ask
    that question. A passage that answers many questions is never confirmed this way: two
    different questions about one article both find the article (on XQuAD, where every
    passage answers five questions, most such pairs want different answers), and its title
    is not a question."""
    entry = faq_entry(found)

    def confirm(payload: Payload) -> bool:
        return entry is not None and payload.get("faq_entry") == entry

    return confirm


def answers_agree(cached: Payload, fresh: Any) -> bool:
    """Did a served cached answer agree with the one the question gets afresh (an audit,
    :mod:`cache.audit`)? They agree when they cite a passage in common, or when neither cites
    anything ("I don't know" both times)."""
    before = {int(c["id"]) for c in cached.get("citations", [])}
    after = {int(c.id) for c in fresh.citations}
    return bool(before & after) if before and after else before == after


def still_valid(index: CollectionIndex) -> Callable[[dict[str, Any]], bool]:
    """A cached answer stands while every chunk it cites is unchanged. An answer that cites
    nothing ("I don't know") or that the grounding guard put in place of the model's (quoted
    sentences) stands only for the index version it was given on: new documents may answer
    the question properly."""

    def accept(payload: dict[str, Any]) -> bool:
        cited = [int(c["id"]) for c in payload.get("citations", [])]
        if not cited or payload.get("provisional"):
            return payload.get("index_version") == index.version
        return index.has_chunks(cited)

    return accept


def drop_stale(settings: Settings, collection: str, model: str, dimension: int) -> int:
    """After a re-ingest: the cached answers of ``collection`` that its new live version no
    longer stands behind (:func:`still_valid`), dropped from the response cache; how many. An
    answer a passage added since would change is not found this way (that takes a search for
    each stored question): it is still re-answered at its next lookup (:func:`added_since`)."""
    index = CollectionIndex.load(settings.collections_dir, collection, model=model, dimension=dimension)
    try:
        cache = open_cache(settings, dimension)
        try:
            return cache.drop_stale(collection, still_valid(index))
        finally:
            cache.close()
    finally:
        index.close()


def load_verifier(settings: Settings) -> Verifier | None:
    """The verifier `rag cache calibrate` wrote, if the settings name one."""
    if settings.cache_verifier is None:
        return None
    try:
        return read_verifier(settings.cache_verifier)
    except (OSError, ValueError, KeyError) as exc:
        raise RagError(
            f"cannot read the cache verifier {settings.cache_verifier} ({exc}): "
            "run `rag cache calibrate` again, or unset RAG_CACHE_VERIFIER"
        ) from exc


def open_cache(settings: Settings, dimension: int) -> SemanticCache:
    """The response cache as the settings describe it (threshold, margin, verifier, limits),
    on Redis where RAG_REDIS_URL names one, else on local disk."""
    store: Path | RedisStore = settings.cache_dir
    if settings.redis_url:
        store = RedisStore(
            settings.redis_url,
            dimension,
            prefix=settings.redis_prefix,
            timeout_s=settings.redis_timeout_s,
            # Redis keeps an answer 30 days unless told otherwise; a retention limit only shortens that.
            default_ttl_s=min(settings.cache_lifetime_s() or DEFAULT_TTL_S, DEFAULT_TTL_S)
            if settings.cache_ttl_s is None
            else settings.cache_lifetime_s(),
        )
        try:
            store.check()
        except StoreUnavailable as exc:
            # Unreachable at start-up is a fault the cache rides out (misses until Redis is
            # back); a Redis without vector search is a configuration to fix now.
            if "vector search" in str(exc):
                raise RagError(str(exc)) from exc
            log.warning("%s: the cache answers as misses until it is back", exc)
    return SemanticCache(
        store,
        dimension=dimension,
        threshold=settings.cache_threshold,
        size_limit_bytes=settings.cache_size_mb * 2**20,
        ttl_s=settings.cache_lifetime_s(),
        margin=settings.cache_margin,
        verifier=load_verifier(settings),
        confirmed_threshold=settings.cache_confirmed_threshold,
        confirmed_margin=settings.cache_confirmed_margin,
        max_wrong_rate=settings.max_wrong_rate,
        release=__version__,
    )


def answer_config(settings: Settings, support_name: str, embedder_name: str) -> str:
    """Everything that changes an answer for the same question and content: part of every
    cache scope, so answers are shared only between requests that would give the same one."""
    return "-".join(
        str(v)
        for v in (
            prompt_version(settings.shots, settings.context_sentences, settings.prompt_order),
            settings.max_tokens,
            settings.temperature,
            settings.min_relevance,
            settings.retrieval_mode,
            settings.entity_filter,
            settings.reranker,
            support_name,
            settings.min_support,
            settings.llm_min_support,
            settings.quote_sentences,
            settings.quote_margin,
            settings.evidence_window,
            settings.llm_context,
            settings.guard,
            embedder_name,
            # int8 question vectors are a space of their own: no near-duplicate search
            # across it (fp32 ONNX and torch agree to 0.99999, so they share one).
            *(["int8-questions"] if settings.embedding_onnx == "int8" else []),
        )
    )

"""The pipeline's checks on a near-duplicate before the response cache serves it: they read
what retrieval found for the new question and the sources the cached answer cites.

Measured on covid-faq (213 FAQ entries cached, 224 reworded questions asked; ``rag eval
cache --corpus --qa``): the source check alone lets wrong answers through at any useful
threshold, and an FAQ entry that both searches find first is safe much lower:

- threshold 0.86, margin 0.08, source check: 14.7% correct hits, 0.9% wrong;
- plus confirmed FAQ hits from 0.70 with margin 0.04: 29.0% correct, 0.9% wrong (both
  wrong hits are exact repeats of another entry's question).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .index import SearchResult, is_faq_question

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

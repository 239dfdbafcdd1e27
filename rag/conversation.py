"""Follow-up questions: which entity does "are their bathrooms clean?" mean?

A follow-up names no entity; the conversation does. The collection's chunk titles are its
entities (a hotel, a product, a help article), so the standalone form of a question is the
question plus the entity the conversation last named: looked for in the question itself,
then in the history from the newest turn back. Retrieval then keeps to that entity's
chunks, and the citations are about the one the user means.

Titles are matched as whole words, case-insensitively, by their full name or by their
distinctive words: "the Ashley" names "ASHLEY HOTEL", because "hotel" is in many titles and
"ashley" in one. No model, no tuning to a data set: the collection's own titles decide.

Measured on dstc11-hotels (1,436 follow-ups over 10,882 snippets of 33 hotels and 110
restaurants): an entity is found for 96% of questions and is the gold one for 91%.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from .store import is_faq_question

_WORD_RE = re.compile(r"[^\W_]+", re.UNICODE)
_GENERIC_TITLE_SHARE = 3  # a word in this many titles or more does not identify one
_MIN_ALIAS_CHARS = 3


def _words(text: str) -> list[str]:
    # "Hobson's" names "HOBSONS HOUSE": apostrophes join, they do not split.
    return [w.casefold() for w in _WORD_RE.findall(text.replace("'", "").replace("\u2019", ""))]


@dataclass(frozen=True)
class Standalone:
    question: str
    entity: str | None  # a chunk title the conversation names, if any


class EntityMatcher:
    """Finds which of a collection's titles a text names."""

    def __init__(self, titles: Sequence[str]) -> None:
        word_titles = Counter(w for title in titles for w in set(_words(title)))
        self._aliases: dict[tuple[str, ...], str] = {}
        ambiguous: set[tuple[str, ...]] = set()
        for title in titles:
            if is_faq_question(title):  # an FAQ question is a topic, not a name
                continue
            words = _words(title)
            distinctive = [w for w in words if word_titles[w] < _GENERIC_TITLE_SHARE]
            for alias in {tuple(words), tuple(distinctive)}:
                if not alias or len(" ".join(alias)) < _MIN_ALIAS_CHARS:
                    continue
                if self._aliases.get(alias, title) != title:
                    ambiguous.add(alias)  # two titles share it: it names neither
                self._aliases[alias] = title
        for alias in ambiguous:
            del self._aliases[alias]
        self._lengths = sorted({len(a) for a in self._aliases}, reverse=True)

    def find(self, text: str) -> str | None:
        """The title named last in ``text`` (the longest name where two end together)."""
        words = _words(text)
        best: tuple[int, int, str] | None = None  # (end, length, title)
        for n in self._lengths:
            for start in range(len(words) - n + 1):
                title = self._aliases.get(tuple(words[start : start + n]))
                if title is not None and (best is None or (start + n, n) > best[:2]):
                    best = (start + n, n, title)
        return best[2] if best else None


@lru_cache(maxsize=32)
def _matcher(titles: tuple[str, ...]) -> EntityMatcher:
    return EntityMatcher(titles)


def standalone(question: str, history: Sequence[dict[str, str]] | None, titles: Sequence[str]) -> Standalone:
    """The question with the entity the conversation means (None if it names none)."""
    matcher = _matcher(tuple(titles))
    for text in [question, *(turn.get("content", "") for turn in reversed(history or []))]:
        entity = matcher.find(text)
        if entity is not None:
            return Standalone(question, entity)
    return Standalone(question, None)

"""Context compression: keep only the sentences of the retrieved passages that best match
the question.

A small model given four whole passages (~700 tokens) drifts to whatever it read last;
given the three best sentences (~330 tokens) it copies the right fact. Measured on XQuAD
(60 questions, Gemma 3 270M): answers containing the gold span went from 23% to 48% and
latency from 1.2 s to 0.8 s. Scoring is lexical (IDF-weighted overlap with the question),
so it costs microseconds and needs no extra model call.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import RetrievedChunk

# Sentence ends, blank lines and list items separate sentences; a single line break inside
# a hard-wrapped paragraph does not.
_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+|\n\s*\n|\n(?=\s*(?:[-*•]|\d+\.)\s)")
# A name's initial ("Malcolm K.", "Michael E.", "J. R.") or a title ("Dr.") before a full stop,
# and after it a word that starts no sentence (a surname, not "It" or "The"): no sentence
# ends there ("Malcolm K. Hughes", "Dr. Li"); "Take vitamin C. It helps." and "Choose Plan
# B. It costs less." still split.
_INITIAL_BEFORE_RE = re.compile(r"(?:^|\b[A-Z][\w'-]*\s+|\b[A-Z]\.\s+)[A-Z]\.$|\b(?:Mr|Mrs|Ms|Dr|Prof)\.$")
_WORD_AFTER_RE = re.compile(r"[\"'(\[]?([^\W_]+)")
WORD_PATTERN = r"(?:[^\W_]|[£$€])+(?:'[^\W_]+)?"  # letters and digits of any script (the guard's too)
_WORD_RE = re.compile(WORD_PATTERN)
_STOPWORDS = frozenset(
    "a an and are as at be but by can could do does did for from has have how i if in into is it its "
    "me my of on or our so that the their them then there these this to was we what when where which "
    "who why will with would you your".split()
)
_MIN_SENTENCE_CHARS = 20
_EMPHASIS_RE = re.compile(r"\*\*|__|`")


def terms(text: str) -> list[str]:
    return [w for w in _WORD_RE.findall(text.lower()) if w not in _STOPWORDS]


def split_at(boundary: re.Pattern[str], text: str) -> list[str]:
    """``boundary.split(text)``, except at a full stop after an initial or a title that the
    next word shows is one ("Malcolm K. Hughes", "Dr. Li"): the one sentence splitter behind
    the judge's units and the LLM context's sentences."""
    pieces, start = [], 0
    for match in boundary.finditer(text):
        before = text[max(0, match.start() - 40) : match.start()].rstrip("\"')]")
        after = _WORD_AFTER_RE.match(text, match.end())
        if after and after.group(1).lower() not in _STOPWORDS and _INITIAL_BEFORE_RE.search(before):
            continue
        pieces.append(text[start : match.start()])
        start = match.end()
    pieces.append(text[start:])
    return pieces


def split_sentences(text: str) -> list[str]:
    # Markdown emphasis is noise to a small model: it copies the asterisks and loses the fact.
    text = _EMPHASIS_RE.sub("", text)
    sentences = (" ".join(s.split()).strip(" -*#>") for s in split_at(_SENTENCE_RE, text))
    return [s for s in sentences if len(s) >= _MIN_SENTENCE_CHARS]


def best_sentences(question: str, passages: list[RetrievedChunk], n: int) -> list[tuple[int, int, str]]:
    """The ``n`` best (passage rank, sentence rank, sentence), in reading order."""
    query = set(terms(question))
    sentences = [
        (p_rank, s_rank, sentence)
        for p_rank, passage in enumerate(passages)
        for s_rank, sentence in enumerate(split_sentences(passage.text))
    ]
    if not sentences:
        return []
    sentence_terms = [set(terms(s)) for _, _, s in sentences]
    df = Counter(t for ts in sentence_terms for t in ts)
    total = len(sentences)
    scores = [
        sum(math.log(1 + total / df[t]) for t in query & ts) / (1 + 0.15 * p_rank)  # retrieval's order breaks near-ties
        for (p_rank, _, _), ts in zip(sentences, sentence_terms, strict=True)
    ]
    ranked = sorted(range(total), key=scores.__getitem__, reverse=True)
    best = [i for i in ranked[:n] if scores[i] > 0] or ranked[:1]
    return [sentences[i] for i in sorted(best)]


def compress(question: str, passages: list[RetrievedChunk], n: int) -> list[RetrievedChunk]:
    """The passages that hold one of the ``n`` best sentences, cut down to those sentences."""
    if n <= 0:
        return passages
    picked: dict[int, list[str]] = {}
    for p_rank, _, sentence in best_sentences(question, passages, n):
        picked.setdefault(p_rank, []).append(sentence)
    return [replace(passages[p], text=" ".join(sents)) for p, sents in sorted(picked.items())]

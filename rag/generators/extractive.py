"""No LLM: answer with the sentences of the retrieved passages that best match the question.

Instant and deterministic: for tests, and as the last-resort fallback when no model runs.
"""

from __future__ import annotations

import math
import re
from collections import Counter

from .base import Generation, GenerationRequest

# Sentence ends, blank lines and list items separate sentences; a single line break inside
# a hard-wrapped paragraph does not.
_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+|\n\s*\n|\n(?=\s*(?:[-*•]|\d+\.)\s)")
_WORD_RE = re.compile(r"[a-z0-9£$€]+(?:'[a-z]+)?")
_STOPWORDS = frozenset(
    "a an and are as at be but by can could do does did for from has have how i if in into is it its "
    "me my of on or our so that the their them then there these this to was we what when where which "
    "who why will with would you your".split()
)


def _terms(text: str) -> list[str]:
    return [w for w in _WORD_RE.findall(text.lower()) if w not in _STOPWORDS]


class ExtractiveGenerator:
    name = "extractive"
    prompt_style = "none"
    can_stream = False
    supports_prefix_cache = False

    def __init__(self, max_sentences: int = 2) -> None:
        self.max_sentences = max_sentences

    async def generate(self, request: GenerationRequest) -> Generation:
        query = set(_terms(request.question))
        sentences: list[tuple[int, int, str]] = []
        for p_rank, passage in enumerate(request.passages):
            for s_rank, sentence in enumerate(_SENTENCE_RE.split(passage.text)):
                sentence = " ".join(sentence.split()).strip(" -*#")
                if len(sentence) > 20:
                    sentences.append((p_rank, s_rank, sentence))
        if not sentences or not query:
            return Generation(text="", finish_reason="stop")
        df = Counter(t for _, _, s in sentences for t in set(_terms(s)))
        n = len(sentences)

        def score(item: tuple[int, int, str]) -> float:
            p_rank, _, sentence = item
            overlap = query.intersection(_terms(sentence))
            idf = sum(math.log(1 + n / df[t]) for t in overlap)
            return idf / (1 + 0.15 * p_rank)  # earlier passages ranked higher by retrieval

        best = sorted(sentences, key=score, reverse=True)[: self.max_sentences]
        best = [b for b in best if score(b) > 0] or best[:1]
        best.sort(key=lambda item: (item[0], item[1]))
        return Generation(text=" ".join(s for _, _, s in best), finish_reason="stop")

    async def aclose(self) -> None:
        return None

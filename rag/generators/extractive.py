"""No LLM: answer with the evidence, the sentences of the documents that answer the question,
quoted verbatim (the pipeline's judge chose them: :mod:`rag.evidence`).

Instant and deterministic, and nothing in it can be made up. Without evidence (a caller that
builds its own request) it falls back to the sentences that share the most words with the
question.
"""

from __future__ import annotations

from ..compress import best_sentences
from ..evidence import as_sentence
from .base import Generation, GenerationRequest


class ExtractiveGenerator:
    name = "extractive"
    prompt_style = "none"
    can_stream = False
    supports_prefix_cache = False

    def __init__(self, max_sentences: int = 2) -> None:
        self.max_sentences = max_sentences

    async def generate(self, request: GenerationRequest) -> Generation:
        if request.evidence:
            return Generation(text=" ".join(as_sentence(s) for s in request.evidence), finish_reason="stop")
        best = best_sentences(request.question, request.passages, self.max_sentences)
        return Generation(text=" ".join(s for _, _, s in best), finish_reason="stop")

    async def aclose(self) -> None:
        return None

"""No LLM: answer with the sentences of the retrieved passages that best match the question.

Instant and deterministic: for tests, and as the last-resort fallback when no model runs.
"""

from __future__ import annotations

from ..compress import best_sentences
from .base import Generation, GenerationRequest


class ExtractiveGenerator:
    name = "extractive"
    prompt_style = "none"
    can_stream = False
    supports_prefix_cache = False

    def __init__(self, max_sentences: int = 2) -> None:
        self.max_sentences = max_sentences

    async def generate(self, request: GenerationRequest) -> Generation:
        best = best_sentences(request.question, request.passages, self.max_sentences)
        return Generation(text=" ".join(s for _, _, s in best), finish_reason="stop")

    async def aclose(self) -> None:
        return None

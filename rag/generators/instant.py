"""No generation at all: answers at once with the first sentence of the best passage.

For measuring everything but the LLM (``rag bench``'s ``miss_overhead``): the pipeline still
builds the full completion prompt, as it would for a model, and this backend ignores it.
"""

from __future__ import annotations

import re

from .base import Generation, GenerationRequest

_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


class InstantGenerator:
    name = "instant"
    prompt_style = "completion"
    can_stream = False
    supports_prefix_cache = False

    async def generate(self, request: GenerationRequest) -> Generation:
        text = request.passages[0].text if request.passages else ""
        return Generation(
            text=_SENTENCE_END.split(text.strip(), maxsplit=1)[0], completion_tokens=0, finish_reason="stop"
        )

    async def aclose(self) -> None:
        return None

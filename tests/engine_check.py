"""Run by test_vllm.py with the vLLM virtualenv's Python: the in-process engine backend,
for real, on this CPU. Prints one JSON line of what it saw."""

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rag.generators.base import GenerationRequest  # noqa: E402
from rag.generators.vllm_engine import VLLMEngineGenerator  # noqa: E402

PROMPT = (
    "Answer the question using only the context.\n\n"
    "Context:\n[1] Borrowing books\nBooks are lent for 3 weeks and can be renewed twice online.\n"
    "Question: How long can I keep a book?\nAnswer: Books are lent for 3 weeks and can be renewed twice online.\n\n"
    "Context:\n[1] Gift cards\nGift cards never expire and can be used on any product.\n"
    "Question: Do gift cards expire?\nAnswer:"
)


async def main(model: str) -> None:
    gen = VLLMEngineGenerator(
        model, served_name="gemma3-270m", dtype="bfloat16", max_model_len=2048, enforce_eager=True
    )
    try:
        request = GenerationRequest("q", [], PROMPT, max_tokens=16, stop=["\n"])
        whole = await gen.generate(request)
        pieces = [p async for p in gen.stream(request)]
        many = await asyncio.gather(*(gen.generate(request) for _ in range(4)))
        print("ENGINE-CHECK " + json.dumps({
            "name": gen.name, "text": whole.text, "completion_tokens": whole.completion_tokens,
            "prompt_tokens": whole.prompt_tokens, "pieces": pieces, "many": [g.text for g in many],
        }), flush=True)  # fmt: skip
    finally:
        await gen.aclose()


if __name__ == "__main__":  # vLLM's engine starts worker processes: the guard is required
    asyncio.run(main(sys.argv[1]))

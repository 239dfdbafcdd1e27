"""`rag eval throughput`: answers/s and tokens/s of the whole service path (cache misses)
at several concurrency levels, in-process, against whatever backend the settings name."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tqdm import tqdm

from rag.errors import RagError
from rag.settings import Settings

from .data import QAItem


async def _level(pipeline: Any, items: list[QAItem], concurrency: int, collection: str) -> dict[str, float]:
    """One level: answers/s and tokens/s of the answers given; a question the service fails
    on is counted under ``errors`` and not in the rate."""
    gate = asyncio.Semaphore(concurrency)
    tokens = errors = 0
    bar = tqdm(total=len(items), desc=f"concurrency {concurrency}", unit="q", disable=None)

    async def one(item: QAItem) -> None:
        nonlocal tokens, errors
        async with gate:
            try:
                answer = await pipeline.answer(item.question, collection)
                tokens += answer.usage.get("completion_tokens") or 0
            except RagError:
                errors += 1
            bar.update()

    started = time.perf_counter()
    await asyncio.gather(*(one(item) for item in items))
    elapsed = time.perf_counter() - started
    bar.close()
    answered = len(items) - errors
    return {
        "concurrency": concurrency,
        "answers_per_s": answered / elapsed,
        "tokens_per_s": tokens / elapsed,
        "errors": errors,
    }


def measure_throughput(
    settings: Settings, items: list[QAItem], levels: list[int], collection: str, per_level: int = 32
) -> list[dict[str, float]]:
    """Each level asks ``per_level`` questions none of the levels before it asked (while the
    list lasts): a backend with a prefix cache, vLLM's, would otherwise answer a later level
    from the whole prompts an earlier one left in it. ``items[0]`` is the warm-up."""
    from rag.pipeline import build_pipeline

    settings = settings.model_copy(update={"cache_enabled": False})
    rest = items[1:] or items

    async def run() -> list[dict[str, float]]:
        pipeline = build_pipeline(settings)
        try:
            await pipeline.answer(items[0].question, collection)  # warm-up
            rows = []
            for n, level in enumerate(levels):
                own = [rest[(n * per_level + i) % len(rest)] for i in range(per_level)]
                rows.append(await _level(pipeline, own, level, collection))
        finally:
            await pipeline.aclose()
        base = rows[0]["answers_per_s"] or 1.0
        for row in rows:
            row["speedup"] = row["answers_per_s"] / base
        return rows

    return asyncio.run(run())

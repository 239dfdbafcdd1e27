"""`rag eval throughput`: answers/s and tokens/s of the whole service path (cache misses)
at several concurrency levels, in-process, against whatever backend the settings name."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from rag.settings import Settings

from .data import QAItem


async def _level(pipeline: Any, items: list[QAItem], concurrency: int, collection: str) -> dict[str, float]:
    gate = asyncio.Semaphore(concurrency)
    tokens = 0

    async def one(item: QAItem) -> None:
        nonlocal tokens
        async with gate:
            answer = await pipeline.answer(item.question, collection)
            tokens += answer.usage.get("completion_tokens") or 0

    started = time.perf_counter()
    await asyncio.gather(*(one(item) for item in items))
    elapsed = time.perf_counter() - started
    return {"concurrency": concurrency, "answers_per_s": len(items) / elapsed, "tokens_per_s": tokens / elapsed}


def measure_throughput(
    settings: Settings, items: list[QAItem], levels: list[int], collection: str
) -> list[dict[str, float]]:
    from rag.pipeline import build_pipeline

    settings = settings.model_copy(update={"cache_enabled": False})

    async def run() -> list[dict[str, float]]:
        pipeline = build_pipeline(settings)
        try:
            await pipeline.answer(items[0].question, collection)  # warm-up
            rows = [await _level(pipeline, items, level, collection) for level in levels]
        finally:
            await pipeline.aclose()
        base = rows[0]["answers_per_s"] or 1.0
        for row in rows:
            row["speedup"] = row["answers_per_s"] / base
        return rows

    return asyncio.run(run())

"""`rag eval latency`: end-to-end latency of a running service over HTTP, by cache outcome.

Each question is sent twice: the first time it is a miss (retrieve + generate, unless an
earlier question already answered it), the second an exact cache hit. Figures are
client-side wall times, so they include HTTP and JSON.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import httpx
from tqdm import tqdm

from .data import QAItem
from .stats import latency_summary


def measure_latency(url: str, items: list[QAItem], collection: str, *, progress: bool | None = None) -> dict[str, Any]:
    by_kind: dict[str, list[float]] = defaultdict(list)
    with httpx.Client(base_url=url, timeout=300) as client:
        for item in tqdm(items, desc="querying", unit="q", disable=None if progress is None else not progress):
            for _ in range(2):
                started = time.perf_counter()
                response = client.post("/v1/query", json={"question": item.question, "collection": collection})
                elapsed = (time.perf_counter() - started) * 1000
                response.raise_for_status()
                cache = response.json()["cache"]
                by_kind[cache["kind"] or "miss"].append(elapsed)
    summary: dict[str, Any] = {}
    for kind, values in sorted(by_kind.items()):
        values.sort()
        summary[kind] = {
            "n": len(values),
            **latency_summary(values, (50, 95)),
        }
    return summary

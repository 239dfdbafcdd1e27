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


def measure_latency(
    url: str, items: list[QAItem], collection: str, *, api_key: str | None = None, progress: bool | None = None
) -> dict[str, Any]:
    """p50/p95 by cache outcome; a request the service refuses or fails is counted under
    ``errors`` with its status (the first error body kept), never the end of the run."""
    by_kind: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, Any] = {"n": 0, "by_status": defaultdict(int), "first": None}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=url, timeout=300, headers=headers) as client:
        for item in tqdm(items, desc="querying", unit="q", disable=None if progress is None else not progress):
            for _ in range(2):
                started = time.perf_counter()
                response = client.post("/v1/query", json={"question": item.question, "collection": collection})
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code != 200:
                    errors["n"] += 1
                    errors["by_status"][str(response.status_code)] += 1
                    errors["first"] = errors["first"] or response.text[:300]
                    continue
                cache = response.json()["cache"]
                by_kind[cache["kind"] or "miss"].append(elapsed)
    summary: dict[str, Any] = {"errors": {**errors, "by_status": dict(errors["by_status"])}} if errors["n"] else {}
    for kind, values in sorted(by_kind.items()):
        values.sort()
        summary[kind] = {
            "n": len(values),
            **latency_summary(values, (50, 95)),
        }
    return summary

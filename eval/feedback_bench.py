"""`rag bench feedback`: ``POST /v1/feedback`` at a fixed rate against a `rag serve` process,
and whether every accepted vote was kept.

The corpus is ingested into a scratch folder, the service started on it (extractive backend,
embedded stores), and its questions asked once each for answers to vote on. Then votes are
sent on a fixed schedule (``rate`` a second for ``seconds``; ``down_share`` of them thumbs-
down, which also evict and block in the cache), without waiting for one to finish before
the next is due. After the service has stopped, the feedback rows in its store are counted:
``lost`` is the votes answered 200 that are not there.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from .data import load_qa
from .processes import free_port, server_process
from .stats import latency_summary


def _questions(qa: Path, limit: int) -> list[str]:
    questions = list(dict.fromkeys(item.question for item in load_qa(qa)))[:limit]
    if not questions:
        raise ValueError(f"{qa} holds no questions to answer and vote on")
    return questions


async def _vote(client: httpx.AsyncClient, answer_ids: list[str], rate: float, seconds: float, down: float) -> dict:
    count = int(rate * seconds)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    late: list[float] = []

    async def one(n: int, due: float) -> None:
        rating = "down" if (n * down) % 1 + down >= 1 else "up"  # spread evenly, `down` of them
        started = time.perf_counter()
        late.append(max(0.0, started - due))
        try:
            response = await client.post(
                "/v1/feedback", json={"answer_id": answer_ids[n % len(answer_ids)], "rating": rating}
            )
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        except httpx.HTTPError:
            statuses[0] = statuses.get(0, 0) + 1
        latencies.append((time.perf_counter() - started) * 1000)

    t0 = time.perf_counter()
    tasks = []
    for n in range(count):
        due = t0 + n / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.create_task(one(n, due)))
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    return {
        "sent": count,
        "ok": statuses.get(200, 0),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "wall_s": round(wall, 2),
        "per_s": round(statuses.get(200, 0) / wall, 1),
        "max_start_lag_ms": round(max(late) * 1000, 1) if late else 0.0,
        **latency_summary(latencies),
    }


def run_feedback_bench(
    corpus: Path, qa: Path, settings: Any, rate: float = 200.0, seconds: float = 10.0, down_share: float = 0.2
) -> dict[str, Any]:
    questions = _questions(qa, 50)  # before anything is started
    scratch = Path(tempfile.mkdtemp(prefix="rag-bench-feedback-"))
    try:
        return _run(corpus, questions, settings, scratch, rate, seconds, down_share)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(
    corpus: Path, questions: list[str], settings: Any, scratch: Path, rate: float, seconds: float, down_share: float
) -> dict[str, Any]:
    from ingest.runner import ingest
    from rag.embedder import SentenceTransformerEmbedder

    data = scratch / "data"
    local = settings.model_copy(update={"data_dir": data})
    ingest([corpus], "bench", local, SentenceTransformerEmbedder.from_settings(local).load(), progress=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env |= {"RAG_DATA_DIR": str(data), "RAG_BACKEND": "extractive", "RAG_COLLECTION": "bench", "HF_HUB_OFFLINE": "1"}
    port = free_port()
    cmd = [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with server_process(cmd, env, scratch / "serve.log", port) as url:

        async def run() -> dict[str, Any]:
            limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
            async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
                ids = []
                for question in questions:
                    response = await client.post("/v1/query", json={"question": question})
                    ids.append(response.json()["answer_id"])
                return await _vote(client, ids, rate, seconds, down_share)

        result = asyncio.run(run())
    with sqlite3.connect(data / "support.sqlite") as db:
        (stored,) = db.execute("SELECT COUNT(*) FROM feedback").fetchone()
    result |= {"rate": rate, "down_share": down_share, "stored": stored, "lost": result["ok"] - stored}
    return result

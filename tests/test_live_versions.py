"""Index versions that replicas follow live: two `rag serve` processes read one index folder (a
shared volume), requests run against both without pause, and ten new versions are published
meanwhile. No request fails, and both end up serving the last version (`/readyz`, `/metrics`)."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from eval.hosts import Replica
from eval.processes import free_port
from ingest.runner import ingest

from .conftest import EXAMPLES, make_settings

pytestmark = pytest.mark.slow
QUESTIONS = ["How long do refunds take?", "Do gift cards expire?", "Which countries do you ship to?"]


async def _load(urls: list[str], stop: asyncio.Event, outcomes: list[int]) -> None:
    async with httpx.AsyncClient(timeout=60) as client:

        async def worker(n: int) -> None:
            while not stop.is_set():
                url = urls[n % len(urls)]
                try:
                    response = await client.post(f"{url}/v1/query", json={"question": QUESTIONS[n % len(QUESTIONS)]})
                    outcomes.append(response.status_code)
                except httpx.HTTPError:
                    outcomes.append(0)
                n += 1

        await asyncio.gather(*(worker(n) for n in range(4)))


def test_ten_versions_published_under_load_fail_no_request(tmp_path: Path, embedder: Any) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(EXAMPLES, docs)
    settings = make_settings(tmp_path / "data")
    ingest([docs], "default", settings, embedder, progress=False)
    env = {"RAG_CACHE_ENABLED": "false"}  # every request searches the index it serves
    replicas = [Replica(name, tmp_path / "data", env, port=free_port()).start() for name in ("a", "b")]
    outcomes: list[int] = []
    versions = []
    try:

        async def run() -> None:
            stop = asyncio.Event()
            load = asyncio.create_task(_load([r.url for r in replicas], stop, outcomes))
            for n in range(10):
                page = docs / "returns-and-refunds.md"
                page.write_text(page.read_text() + f"\n\nUpdate {n}: returns desks are open on weekdays.\n")
                report = await asyncio.to_thread(ingest, [docs], "default", settings, embedder, progress=False)
                versions.append(report.version)
                await asyncio.sleep(0.3)
            await asyncio.sleep(1.0)
            stop.set()
            await load

        asyncio.run(run())
        assert len(set(versions)) == 10
        assert len(outcomes) >= 20 and outcomes.count(200) == len(outcomes), sorted(set(outcomes))
        deadline = time.monotonic() + 5  # a replica serves a new version within 5 s of its publish
        for replica in replicas:
            while (ready := httpx.get(f"{replica.url}/readyz", timeout=10).json())["collections"]["default"][
                "index_version"
            ] != versions[-1]:
                assert time.monotonic() < deadline, ready
                time.sleep(0.1)
            metrics = httpx.get(f"{replica.url}/metrics", timeout=10).text
            assert f'rag_index_version_info{{collection="default",version="{versions[-1]}"}} 1.0' in metrics
            assert metrics.count("rag_index_version_info{") == 1  # the old versions' lines are gone
    finally:
        for replica in replicas:
            replica.stop()

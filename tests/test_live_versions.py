"""Index versions that replicas follow live: two `rag serve` processes read one index folder (a
shared volume), requests run against both without pause, and ten new versions are published
meanwhile. No request fails; with no request arriving, both serve an eleventh version within
5 s of its publish (`/readyz`, `/metrics`)."""

from __future__ import annotations

import asyncio
import gc
import shutil
import time
import weakref
from pathlib import Path
from typing import Any

import httpx
import pytest

from eval.hosts import Replica
from eval.processes import free_port
from ingest.runner import ingest
from rag.pipeline import build_pipeline
from rag.store import collection_dir, switch_current
from serving.app import create_app

from .conftest import EXAMPLES, make_settings
from .servers import running_server, wait_for_version

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
        # With no request arriving, each replica's watcher finds a new version within 5 s.
        page = docs / "returns-and-refunds.md"
        page.write_text(page.read_text() + "\n\nUpdate 10: returns desks open at 9 am.\n")
        versions.append(ingest([docs], "default", settings, embedder, progress=False).version)
        for replica in replicas:
            wait_for_version(replica.url, versions[-1], timeout_s=5)
            ready = httpx.get(f"{replica.url}/readyz", timeout=10).json()
            assert ready["collections"]["default"]["index_version"] == versions[-1], ready
            metrics = httpx.get(f"{replica.url}/metrics", timeout=10).text
            assert metrics.count("rag_index_version_info{") == 1  # the old versions' lines are gone
    finally:
        for replica in replicas:
            replica.stop()


async def test_the_watcher_swaps_with_no_request_and_the_old_version_is_freed(tmp_path: Path, embedder: Any) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(EXAMPLES, docs)
    settings = make_settings(tmp_path / "data", backend="extractive", cache_enabled=False, index_poll_s=0.1)
    ingest([docs], "default", settings, embedder, progress=False)
    pipeline = build_pipeline(settings, embedder)
    try:
        held = pipeline.get_index("default")  # as a request in flight holds it
        freed = weakref.ref(held)
        (docs / "holiday-hours.md").write_text("Holiday hours\n\nOn public holidays every store opens at noon.\n")
        report = ingest([docs], "default", settings, embedder, progress=False)
        started = time.monotonic()
        while pipeline._indexes["default"].version != report.version:  # no request asks for it
            assert time.monotonic() - started < 5, "the watcher did not swap within 5 s"
            await asyncio.sleep(0.02)
        # The request holding the old version finishes on it; the next one gets the new.
        assert held.version != report.version and held.search(embedder.embed("refunds"), 3)
        answer = await pipeline.answer("When do stores open on public holidays?")
        assert "noon" in answer.answer, answer
        del held
        gc.collect()
        assert freed() is None, gc.get_referrers(freed())  # nothing but the requests held it
    finally:
        await pipeline.aclose()


async def test_a_version_that_does_not_load_leaves_the_old_one_serving(tmp_path: Path, embedder: Any) -> None:
    settings = make_settings(tmp_path / "data", backend="extractive", cache_enabled=False)
    ingest([EXAMPLES], "default", settings, embedder, progress=False)
    pipeline = build_pipeline(settings, embedder)
    try:
        serving = pipeline.get_index("default")
        cdir = collection_dir(settings.collections_dir, "default")
        broken = cdir / "v900000"  # a torn copy (say, a shared volume that lost a file's tail)
        shutil.copytree(serving.version_dir, broken)
        (broken / "index.faiss").write_bytes((broken / "index.faiss").read_bytes()[:100])
        switch_current(cdir, broken)
        assert pipeline.refresh() == [] and pipeline.get_index("default") is serving
        assert pipeline.swap_errors["default"][0] == broken
        with running_server(create_app(settings, pipeline)) as url:
            ready = httpx.get(f"{url}/readyz", timeout=10)
            assert ready.status_code == 200, ready.text  # still ready: the old version answers
            assert ready.json()["collections"]["default"]["newer_version_error"].startswith("v900000: ")
            answer = httpx.post(f"{url}/v1/query", json={"question": "Do gift cards expire?"}, timeout=30).json()
            assert "never expire" in answer["answer"], answer
        assert pipeline.refresh() == []  # tried once, not on every poll
        fixed = cdir / "v900001"  # CURRENT moves on: the next version is loaded
        shutil.copytree(serving.version_dir, fixed)
        switch_current(cdir, fixed)
        assert pipeline.refresh() == ["default"] and "default" not in pipeline.swap_errors
        assert pipeline.get_index("default").version_dir == fixed
    finally:
        await pipeline.aclose()


def test_rag_bench_swap_measures_a_swap_with_no_failed_search(tmp_path: Path) -> None:
    from eval.swap_bench import run_swap_bench

    result = run_swap_bench(make_settings(tmp_path / "data"), 5000, "flat")
    assert result["failed"] == 0 and result["searches_during"] > 0, result
    assert result["index_mb"] > 5 and result["peak_mb"] >= result["index_mb"], result  # 5,000 x 1.5 KB at least
    assert 0 <= result["publish_to_serving_s"] < 5, result

"""Metrics, request ids and JSON logs, over real HTTP: one worker in-process, and
`rag serve --workers 2` as its own processes (metrics summed across them)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from eval.processes import server_process
from serving.observability import configure_logging

from .conftest import make_settings
from .servers import free_port, serving

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(http: httpx.Client) -> Samples:
    response = http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def settled_scrape(http: httpx.Client, timeout_s: float = 10.0) -> Samples:
    """One scrape, once this process's service has no request in flight. A request is counted
    when its ASGI call returns, which for a stream can be a moment after the client has read
    the last event (sse-starlette's task group winds down after the final send)."""
    deadline = time.monotonic() + timeout_s
    while (REGISTRY.get_sample_value("rag_http_requests_in_flight") or 0) > 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    return scrape(http)


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def test_request_id_is_echoed_or_made(example_data_dir: Path, embedder: Any) -> None:
    with serving(example_data_dir, embedder, backend="extractive") as url, httpx.Client(base_url=url) as http:
        given = http.get("/healthz", headers={"X-Request-ID": "ticket-4711.a"})
        assert given.headers["x-request-id"] == "ticket-4711.a"
        made = http.get("/healthz").headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", made)
        odd = http.get("/healthz", headers={"X-Request-ID": "spaces <script>" * 20}).headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", odd)  # not a sane token: replaced, never logged as given
        error = http.post("/v1/query", json={"question": ""}, headers={"X-Request-ID": "bad-1"})
        assert error.status_code == 400 and error.headers["x-request-id"] == "bad-1"


def test_metrics_count_requests_cache_outcomes_and_stages(example_data_dir: Path, embedder: Any) -> None:
    with (
        serving(example_data_dir, embedder, backend="extractive") as url,
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        before = scrape(http)
        question = {"question": "Which payment methods do you accept?"}
        assert not http.post("/v1/query", json=question).json()["cache"]["hit"]
        assert http.post("/v1/query", json=question).json()["cache"]["kind"] == "exact"
        follow_up = {
            "question": "and gift cards?",
            "history": [{"role": "user", "content": "Which payment methods do you accept?"}],
        }
        assert http.post("/v1/query", json=follow_up).status_code == 200
        assert http.post("/v1/query", json={"question": ""}).status_code == 400
        with http.stream("POST", "/v1/query", json={"question": "How do I reset my password?", "stream": True}) as r:
            assert r.status_code == 200 and "event: done" in r.read().decode()
        with http.stream("POST", "/v1/query", json={**question, "stream": True}) as r:  # a streamed exact hit
            assert r.status_code == 200 and "event: done" in r.read().decode()
        after = settled_scrape(http)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = {"route": "/v1/query", "method": "POST"}
    assert delta("rag_http_requests_total", status="200", **route) == 5
    assert delta("rag_http_requests_total", status="400", **route) == 1
    assert delta("rag_http_request_duration_seconds_count", status="200", **route) == 5
    assert delta("rag_cache_lookups_total", collection="default", result="miss") == 2
    assert delta("rag_cache_lookups_total", collection="default", result="exact") == 2
    assert delta("rag_time_to_first_token_seconds_count", backend="extractive") == 2  # both streams, the hit too
    assert delta("rag_cache_lookups_total", collection="default", result="bypass") == 1
    assert delta("rag_retrieval_seconds_count", collection="default") == 3  # the exact hit retrieves nothing
    assert delta("rag_judge_seconds_count", collection="default") == 3  # each question answered afresh
    assert delta("rag_errors_total", status="400", code="invalid_request") == 1  # the empty question
    quoted = delta("rag_answers_total", collection="default", kind="quoted", needs_human="none")
    abstained = delta("rag_answers_total", collection="default", kind="no_answer", needs_human="no_answer")
    assert quoted + abstained == 5 and quoted >= 4  # every answer, by what it was
    assert delta("rag_cache_checks_total", outcome="exact_hits") == 2  # the cache's own counts
    assert delta("rag_generation_seconds_count", backend="extractive") == 3
    assert value(after, "rag_http_requests_in_flight") == 1  # the scrape itself
    assert delta("rag_http_requests_total", route="/metrics", status="200") == 1


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    configure_logging(make_settings(Path("unused")), stream)
    yield stream
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_text_logs_spell_out_the_access_line() -> None:
    """RAG_LOG_FORMAT=text: the access line had only the word "request" (its fields are extras)."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    try:
        configure_logging(make_settings(Path("unused"), log_format="text"), stream)
        extra = {
            "method": "POST",
            "route": "/v1/query",
            "path": "/v1/query",
            "status": 200,
            "duration_ms": 12.5,
            "key": "bot",
        }
        logging.getLogger("rag.access").info("request", extra=extra)
        logging.getLogger("faiss.loader").info("Could not load library with AVX512 support")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert stream.getvalue().rstrip().endswith("request POST /v1/query 200 12.5 ms key=bot"), stream.getvalue()
    assert "Could not load" not in stream.getvalue()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_logs_are_json_lines_with_the_request_id_and_no_question_text(
    example_data_dir: Path, embedder: Any, json_logs: io.StringIO
) -> None:
    question = "What is the warranty on electronics?"
    with serving(example_data_dir, embedder, backend="extractive") as url, httpx.Client(base_url=url) as http:
        http.post("/v1/query", json={"question": question}, headers={"X-Request-ID": "req-42"}).raise_for_status()
    records = lines(json_logs)  # every line parses as JSON
    access = [r for r in records if r["logger"] == "rag.access" and r["request_id"] == "req-42"]
    assert len(access) == 1
    assert access[0]["route"] == "/v1/query" and access[0]["status"] == 200 and access[0]["duration_ms"] > 0
    assert {"time", "level", "message"} <= set(access[0])
    assert question not in json_logs.getvalue()


def test_question_text_is_logged_only_when_configured(
    example_data_dir: Path, embedder: Any, json_logs: io.StringIO
) -> None:
    question = "Do you ship to Canada?"
    with (
        serving(example_data_dir, embedder, backend="extractive", log_questions=True) as url,
        httpx.Client(base_url=url) as http,
    ):
        http.post("/v1/query", json={"question": question}, headers={"X-Request-ID": "req-43"}).raise_for_status()
    logged = [r for r in lines(json_logs) if r.get("question") == question]
    assert len(logged) == 1 and logged[0]["request_id"] == "req-43" and logged[0]["level"] == "INFO"


def queries_by_worker(metrics_dir: Path) -> dict[str, float]:
    """Each worker's own count of answered questions, read from its counter file alone."""
    from prometheus_client.multiprocess import MultiProcessCollector

    counts = {}
    for path in metrics_dir.glob("counter_*.db"):
        metrics = MultiProcessCollector._read_metrics([str(path)])  # one worker's view
        counts[path.stem.rsplit("_", 1)[1]] = sum(
            s.value
            for m in metrics.values()
            for s in m.samples
            if s.name == "rag_http_requests_total" and dict(s.labels).get("route") == "/v1/query"
        )
    return counts


def test_two_workers_share_one_set_of_metrics(example_data_dir: Path, tmp_path: Path) -> None:
    """`rag serve --workers 2`, asked with no key to listen on every address: it listens on
    127.0.0.1 only and says so; /metrics sums both workers, whichever answers the scrape."""
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    cmd = [sys.executable, "-m", "cli", "serve", "--workers", "2", "--host", "0.0.0.0", "--port", str(port),
           "--backend", "extractive", "--data-dir", str(example_data_dir)]  # fmt: skip
    log = tmp_path / "serve.log"
    with server_process(cmd, env, log, port, health="/readyz", timeout_s=120) as url:
        assert "listening on 127.0.0.1 only" in log.read_text()

        def one(i: int) -> int:  # a connection each, so both workers take some
            body = {"question": f"How long does shipping to zone {i} take?"}
            return httpx.post(f"{url}/v1/query", json=body, timeout=60).status_code

        # /readyz answered from one worker; the other may still be loading its model, and the
        # kernel hands a shared socket's connections to whichever worker is waiting. So ask in
        # rounds until each worker's own counters (a file per process) hold some of the answers.
        n, per_worker, deadline = 0, dict[str, float](), time.monotonic() + 120
        with ThreadPoolExecutor(8) as pool:
            while not (len(per_worker) == 2 and all(per_worker.values())) and time.monotonic() < deadline:
                assert list(pool.map(one, range(n, n + 40))) == [200] * 40
                n += 40
                per_worker = queries_by_worker(metrics_dir)
        assert len(per_worker) == 2 and all(per_worker.values()), (per_worker, n)
        # A request is counted when its ASGI call returns, a moment after the client has read
        # the response: wait for the last ones to land (a lost count never would).
        settle = time.monotonic() + 30
        while sum(per_worker.values()) < n and time.monotonic() < settle:
            time.sleep(0.1)
            per_worker = queries_by_worker(metrics_dir)
        assert sum(per_worker.values()) == n, per_worker
        for _ in range(4):  # whichever worker answers, the figure is the service's
            with httpx.Client(base_url=url) as http:
                samples = scrape(http)
            assert value(samples, "rag_http_requests_total", route="/v1/query", status="200") == n
        for line in log.read_text().splitlines():
            if line.startswith("{"):
                json.loads(line)
        assert any('"logger": "rag.access"' in line for line in log.read_text().splitlines())


def test_a_bug_is_a_500_that_carries_the_request_id_and_so_does_its_logged_traceback(
    example_data_dir: Path, embedder: Any, json_logs: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: the pipeline fails with an error the service did not plan for."""
    from rag.pipeline import Pipeline

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in the query path")

    monkeypatch.setattr(Pipeline, "prepare", broken)
    with serving(example_data_dir, embedder, backend="extractive") as url, httpx.Client(base_url=url) as http:
        failed = http.post("/v1/query", json={"question": "Do gift cards expire?"}, headers={"X-Request-ID": "bug-7"})
    assert failed.status_code == 500 and failed.headers["x-request-id"] == "bug-7"
    assert failed.json()["error"]["code"] == "internal_error" and "bug" not in failed.json()["error"]["message"]
    errors = [r for r in lines(json_logs) if r["level"] == "ERROR"]
    assert len(errors) == 1 and errors[0]["request_id"] == "bug-7"  # once, findable by the id the client holds
    assert "a bug in the query path" in errors[0]["exc_info"]
    access = [r for r in lines(json_logs) if r["logger"] == "rag.access" and r["request_id"] == "bug-7"]
    assert len(access) == 1 and access[0]["status"] == 500

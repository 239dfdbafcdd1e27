"""Backend faults through the real HTTP service: the vLLM backend pointed at a fake vLLM
(tests/fake_vllm.py) that refuses, answers 5xx, hangs, stalls or cuts its stream.

For each fault: a new question gets the service's one error body (503,
``backend_unavailable``) within a bound, never a hang or a 500; a streamed question ends
with an ``error`` event; an answer cached before the fault still serves; and once the
backend is healthy again a new question is answered."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from rag.pipeline import build_pipeline
from serving.app import create_app

from .conftest import make_settings
from .fake_vllm import HEALTHY_ANSWER, fake_vllm
from .servers import free_port, query_events, running_server

FIRST_TOKEN_TIMEOUT_S = 1.0
TOTAL_TIMEOUT_S = 3.0
# The client gives up long after the service's deadlines: a faulty request that is answered at
# all was cut by the service. No test asserts a wall-clock upper bound (slower machines differ);
# what is asserted is what the service and the fake backend report.
CLIENT_TIMEOUT_S = 10 * TOTAL_TIMEOUT_S
CACHED = "How long do refunds take?"
HEALTHY = "".join(HEALTHY_ANSWER)


@contextmanager
def _listening(app: Any, port: int) -> Iterator[None]:
    """``app`` served on a fixed loopback port (so it can go away and come back there)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the fake vLLM did not start"
        time.sleep(0.01)
    try:
        yield
    finally:
        app.state.mode = "ok"  # wakes any request still hanging, so the server can stop
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


class FakeBackend:
    """A fake vLLM on a fixed port: ``down()`` stops it (connection refused), ``up()`` starts
    it again, ``mode`` switches its behaviour while it runs."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = fake_vllm("ok")
        self._running: Any = None

    def up(self) -> None:
        if self._running is None:
            self._running = _listening(self.app, self.port)
            self._running.__enter__()

    def down(self) -> None:
        if self._running is not None:
            self._running.__exit__(None, None, None)
            self._running = None

    def set(self, mode: str) -> None:
        self.app.state.mode = mode


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    fake = FakeBackend()
    fake.up()
    yield fake
    fake.down()


def _settings(example_data_dir: Path, tmp_path: Path, vllm_url: str, **overrides: Any) -> Any:
    """The example index, a response cache of the test's own, and the vLLM backend at ``vllm_url``."""
    data_dir = tmp_path / "data"
    shutil.copytree(example_data_dir / "collections", data_dir / "collections")
    return make_settings(
        data_dir,
        **{
            "backend": "vllm",
            "vllm_url": vllm_url,
            "vllm_model": "gemma3-270m",
            "vllm_connect_timeout_s": 1.0,
            "vllm_first_token_timeout_s": FIRST_TOKEN_TIMEOUT_S,
            "vllm_total_timeout_s": TOTAL_TIMEOUT_S,
            # The fake says the same words to every question ("The answer is in the
            # documents."), which the faithfulness guard rightly replaces: these tests are
            # about faults, so what the backend said is what the client gets.
            "guard": False,
            **overrides,
        },
    )


@pytest.fixture
def service(backend: FakeBackend, example_data_dir: Path, tmp_path: Path, embedder) -> Iterator[str]:  # type: ignore[no-untyped-def]
    settings = _settings(example_data_dir, tmp_path, backend.url)
    pipeline = build_pipeline(settings, embedder)
    pipeline.generator.pool.backoff_s = 0.1  # type: ignore[attr-defined]  # a replica is probed again soon
    with running_server(create_app(settings, pipeline)) as url:
        yield url


def _ask(url: str, question: str) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = httpx.post(f"{url}/v1/query", json={"question": question}, timeout=CLIENT_TIMEOUT_S)
    return response, time.perf_counter() - started


def _ask_streaming(url: str, question: str) -> tuple[list[tuple[str, Any]], float]:
    started = time.perf_counter()
    _, events = query_events(url, question, timeout=CLIENT_TIMEOUT_S)
    return events, time.perf_counter() - started


def _until(check: Callable[[], bool], failure: str) -> None:
    """Wait (up to the client's timeout) until ``check()`` holds, what the fake reports."""
    deadline = time.monotonic() + CLIENT_TIMEOUT_S
    while not check():
        assert time.monotonic() < deadline, failure
        time.sleep(0.01)


def _assert_unavailable(response: httpx.Response, fault: str) -> str:
    assert response.status_code == 503, f"{fault}: {response.status_code} {response.text}"
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == "backend_unavailable" and body["error"]["type"] == "service_unavailable"
    return str(body["error"]["message"])


FAULTS = {
    # fault: (how it is made, what the error message says: one of these)
    "refused": ("down", ("ConnectError", "RemoteProtocolError", "ReadError")),
    "5xx": ("error", ("answered 500",)),
    "hang before any token": ("hang", ("ReadTimeout",)),
    "stream cut mid-answer": ("cut", ("mid-answer",)),
    "stall mid-answer": ("stall", ("mid-answer",)),
    "an error event after the 200": ("errorevent", ("error in the stream",)),
    "keep-alives, never a token": ("keepalive", ("longer than 3 s",)),
    "tokens past the total deadline": ("slow", ("longer than 3 s",)),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_backend_fault_is_a_clear_error_cache_still_serves_and_service_recovers(
    fault: str, backend: FakeBackend, service: str
) -> None:
    how, words = FAULTS[fault]
    # Healthy: answered by the backend, and cached.
    response, _ = _ask(service, CACHED)
    assert response.status_code == 200 and response.json()["answer"] == HEALTHY, response.text

    if how == "down":
        backend.down()
    else:
        backend.set(how)

    # A new question: one clear 503 in the error shape, cut by the service's own deadlines.
    response, _ = _ask(service, "Do gift cards expire?")
    message = _assert_unavailable(response, fault)
    assert any(w in message for w in words), f"{fault}: {message}"
    if how in ("hang", "keepalive"):  # it runs, and says nothing: busy or stuck, not down
        assert "overloaded or stuck" in message and "is running" not in message, message
    elif how == "down":
        assert "check that `vllm serve` is running" in message, message

    # Streamed: whatever tokens came, then an `error` event, never a hang. (After the
    # replica's backoff, so this request reaches the faulty backend too.)
    time.sleep(0.3)
    requests_before = backend.app.state.requests
    events, _ = _ask_streaming(service, "What payment methods do you accept?")
    kinds = [kind for kind, _ in events]
    assert kinds and kinds[-1] == "error" and set(kinds[:-1]) <= {"token"}, f"{fault}: {kinds}"
    if how != "down":
        assert backend.app.state.requests == requests_before + 1, f"{fault}: the stream never reached the backend"
    if how in ("cut", "stall", "slow"):
        assert "token" in kinds, f"{fault}: {kinds}"  # the tokens sent before the fault went out
    error = events[-1][1]["error"]
    assert error["code"] == "backend_unavailable" and error["message"], f"{fault}: {error}"

    # The answer cached before the fault still serves, without asking the backend.
    requests_before = backend.app.state.requests
    response, _ = _ask(service, CACHED)
    assert response.status_code == 200 and response.json()["cache"]["kind"] == "exact", response.text
    assert response.json()["answer"] == HEALTHY and response.json()["timings_ms"]["generate"] == 0
    assert backend.app.state.requests == requests_before

    # The backend comes back: a new question is answered (after the replica's short backoff).
    if how == "down":
        backend.up()
    else:
        backend.set("ok")
    deadline = time.monotonic() + 10
    while True:
        response, _ = _ask(service, "How do I track my parcel?")
        if response.status_code == 200 or time.monotonic() > deadline:
            break
        _assert_unavailable(response, fault)  # still backing off: the same clear error meanwhile
        time.sleep(0.1)
    assert response.status_code == 200, f"{fault}: not recovered: {response.text}"
    assert response.json()["answer"] == HEALTHY and not response.json()["cache"]["hit"]
    events, _ = _ask_streaming(service, "What is the support phone number?")
    assert [k for k, _ in events][-1] == "done" and events[-1][1]["answer"] == HEALTHY


def test_a_readiness_probe_sets_a_dead_replica_down_and_takes_it_back_at_once(
    backend: FakeBackend,
    example_data_dir: Path,
    tmp_path: Path,
    embedder,  # type: ignore[no-untyped-def]
) -> None:
    settings = _settings(example_data_dir, tmp_path, backend.url)
    pipeline = build_pipeline(settings, embedder)
    pipeline.generator.pool.backoff_s = 30.0  # type: ignore[attr-defined]  # one failure: half a minute out
    with running_server(create_app(settings, pipeline)) as url:
        backend.down()
        ready = httpx.get(f"{url}/readyz", timeout=10).json()
        assert ready["backend_state"].startswith("unreachable"), ready
        up_line = f'rag_backend_replica_up{{replica="{backend.url}"}}'
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert f"{up_line} 0.0" in metrics, metrics  # no question was asked: the probe told it
        backend.up()
        ready = httpx.get(f"{url}/readyz", timeout=10).json()
        assert "backend_state" not in ready, ready
        response, _ = _ask(url, "Do gift cards expire?")  # at once, not after the replica's 30 s out
        assert response.status_code == 200 and response.json()["answer"] == HEALTHY, response.text
        assert f"{up_line} 1.0" in httpx.get(f"{url}/metrics", timeout=10).text


def test_a_request_vllm_refuses_is_answered_by_the_quoted_evidence(
    backend: FakeBackend,
    example_data_dir: Path,
    tmp_path: Path,
    embedder,  # type: ignore[no-untyped-def]
) -> None:
    """vLLM's 400 (a prompt over the model's context length) is no outage and no reason to
    leave the customer without an answer: the sentences that answer are quoted and cited, plain
    and streamed, and not cached (the model answers once the server is mended); a question
    with nothing to quote gets the refusal, a 503 of its own code. The replica stays in."""
    settings = _settings(example_data_dir, tmp_path, backend.url, llm_min_support=-20.0)  # every question reaches vLLM
    backend.set("refuse")
    with running_server(create_app(settings, build_pipeline(settings, embedder))) as url:
        for _ in range(2):  # not cached: the second asks vLLM again
            before = backend.app.state.requests
            response, _ = _ask(url, "Do gift cards expire?")
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["answer_kind"] == "quoted" and "never expire" in body["answer"], body
            assert body["citations"][0]["document_id"] == "gift-cards.txt" and not body["cache"]["hit"], body
            assert body["needs_human"] is None and backend.app.state.requests == before + 1
        events, _ = _ask_streaming(url, "Do gift cards expire?")
        assert [k for k, _ in events][-1] == "done", events
        streamed = "".join(d["text"] for k, d in events if k == "token")
        assert "never expire" in streamed and events[-1][1]["answer"] == streamed.strip(), events

        response, _ = _ask(url, "Do you offer a student discount?")  # retrieved, but no sentence answers
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "backend_refused" and error["message"].startswith(
            "vLLM refused the request (400): This model"
        ), error

        backend.set("unauthorized")  # a key or model it refuses every request for: an outage, not a quote
        response, _ = _ask(url, "Do gift cards expire?")
        assert response.status_code == 503 and response.json()["error"]["code"] == "backend_unavailable", response.text

        backend.set("ok")  # not marked down for a request it refused: answered at once
        response, _ = _ask(url, "How do I track my parcel?")
        assert response.status_code == 200 and response.json()["answer"] == HEALTHY, response.text


def test_a_hanging_replica_fails_over_to_a_healthy_one(example_data_dir: Path, tmp_path: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    hung, healthy = FakeBackend(), FakeBackend()
    hung.set("hang")
    hung.up()
    healthy.up()
    settings = _settings(
        example_data_dir,
        tmp_path,
        f"{hung.url},{healthy.url}",
        vllm_routing="least_loaded",  # the hung replica first (prefix routing: wherever the key hashes)
        cache_enabled=False,
    )
    try:
        with running_server(create_app(settings, build_pipeline(settings, embedder))) as url:
            # The first request meets the hung replica, times out waiting for its first
            # token, and is retried on the healthy one: an answer, not an error.
            response, elapsed = _ask(url, "Do gift cards expire?")
            assert response.status_code == 200 and response.json()["answer"] == HEALTHY, response.text
            assert elapsed >= FIRST_TOKEN_TIMEOUT_S  # it did wait for the hung one's first token
            assert (hung.app.state.requests, healthy.app.state.requests) == (1, 1)
            # The hung replica now sits out its backoff: the next ones go straight to the healthy one.
            for question in ("How long do refunds take?", "What payment methods do you accept?"):
                response, _ = _ask(url, question)
                assert response.status_code == 200, response.text
            assert (hung.app.state.requests, healthy.app.state.requests) == (1, 3)
    finally:
        hung.down()
        healthy.down()


def test_openai_route_gives_the_same_clear_error(backend: FakeBackend, service: str) -> None:
    backend.set("hang")
    question = {"model": "default", "messages": [{"role": "user", "content": "Do gift cards expire?"}]}
    response = httpx.post(f"{service}/v1/chat/completions", json=question, timeout=CLIENT_TIMEOUT_S)
    _assert_unavailable(response, "openai route")
    time.sleep(0.3)  # past the replica's backoff
    stream = {**question, "stream": True}
    with httpx.stream("POST", f"{service}/v1/chat/completions", json=stream, timeout=CLIENT_TIMEOUT_S) as r:
        data = [line[5:].strip() for line in r.iter_lines() if line.startswith("data:")]
    assert data[-1] == "[DONE]" and json.loads(data[-2])["error"]["code"] == "backend_unavailable", data


def test_a_full_connection_pool_is_a_503_that_blames_no_replica(
    backend: FakeBackend,
    example_data_dir: Path,
    tmp_path: Path,
    embedder,  # type: ignore[no-untyped-def]
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    settings = _settings(
        example_data_dir,
        tmp_path,
        backend.url,
        vllm_max_connections=1,  # one answer at a time; the next waits for the connection...
        vllm_first_token_timeout_s=FIRST_TOKEN_TIMEOUT_S,  # ...this long (httpx's pool timeout)
        vllm_total_timeout_s=10 * TOTAL_TIMEOUT_S,
        cache_enabled=False,
    )
    pipeline = build_pipeline(settings, embedder)
    backend.set("slow")  # tokens until the mode changes: the one connection stays taken
    with running_server(create_app(settings, pipeline)) as url, ThreadPoolExecutor(1) as pool:
        first = pool.submit(_ask, url, "Do gift cards expire?")
        _until(lambda: backend.app.state.requests >= 1, "the first question never reached the backend")
        busy, _ = _ask(url, "How long do refunds take?")
        assert "connections to vLLM are busy" in _assert_unavailable(busy, "full pool")
        replica = pipeline.generator.pool.replicas[0]  # type: ignore[attr-defined]
        assert replica.healthy  # not the replica's fault
        replica.failures, replica.down_until = 1, 0.0  # as if it had failed once and were due a probe
        probe, _ = _ask(url, "Which cards do you accept?")
        assert "connections to vLLM are busy" in _assert_unavailable(probe, "full pool, probing")
        assert not replica.probing  # a probe that never ran gives no verdict: the next question probes it
        backend.set("ok")
        answered, _ = first.result()
        assert answered.status_code == 200 and answered.json()["answer"].startswith("and and"), answered.text
        assert backend.app.state.requests == 1  # the refused question never reached the backend
        response, _ = _ask(url, "What payment methods do you accept?")
        assert response.status_code == 200 and response.json()["answer"] == HEALTHY, response.text


def test_a_process_started_while_vllm_is_down_serves_the_answers_it_had_cached(
    backend: FakeBackend,
    example_data_dir: Path,
    tmp_path: Path,
    embedder,  # type: ignore[no-untyped-def]
) -> None:
    """The model's name (learnt from the server, RAG_VLLM_MODEL unset) is part of the cache
    scope: a restarted process must know it before it can reach the server."""
    settings = _settings(example_data_dir, tmp_path, backend.url, vllm_model=None)
    with running_server(create_app(settings, build_pipeline(settings, embedder))) as url:
        response, _ = _ask(url, CACHED)
        assert response.status_code == 200 and response.json()["backend"] == "vllm:gemma3-270m", response.text
    backend.down()
    with running_server(create_app(settings, build_pipeline(settings, embedder))) as url:  # the restart
        response, _ = _ask(url, CACHED)
        assert response.status_code == 200 and response.json()["cache"]["kind"] == "exact", response.text
        refused = _ask(url, "Do gift cards expire?")[0]
        _assert_unavailable(refused, "down")  # a new question: the honest 503, and when to try again
        assert int(refused.headers["retry-after"]) >= 1, refused.headers
        # Still ready: a shared model server's outage must not take every replica out of its
        # load balancer, or no one would serve the cached answers.
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 200 and "unreachable" in ready.json()["backend_state"], ready.text


def _stream(url: str, path: str, body: dict[str, Any], out: list[str], started: threading.Event) -> None:
    """The raw lines of a streamed answer into ``out`` (``started`` once the first one came)."""
    with httpx.stream("POST", f"{url}{path}", json={**body, "stream": True}, timeout=60) as response:
        for line in response.iter_lines():
            if line.strip():
                out.append(line)
                started.set()


def test_a_shutdown_lets_streams_finish_and_ends_one_that_cannot_with_an_error(
    backend: FakeBackend, example_data_dir: Path, tmp_path: Path
) -> None:
    """SIGTERM to `rag serve` (a rolling deploy) mid-stream: an answer that ends within
    RAG_SHUTDOWN_GRACE_S arrives whole; one still going then ends with the face's error (and
    [DONE] on the OpenAI face), never a clean end with half an answer."""
    import os
    import signal
    import subprocess
    import sys

    from .conftest import ROOT

    data_dir = tmp_path / "data"
    shutil.copytree(example_data_dir / "collections", data_dir / "collections")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAG_DATA_DIR": str(data_dir), "RAG_BACKEND": "vllm",
           "RAG_VLLM_URL": backend.url, "RAG_VLLM_MODEL": "gemma3-270m", "RAG_GUARD": "false",
           "RAG_VLLM_TOTAL_TIMEOUT_S": "120", "RAG_CACHE_ENABLED": "false"}  # fmt: skip
    for grace, finishes in ((8.0, True), (1.0, False)):
        backend.set("slow")  # " and" every 0.5 s while the mode lasts
        port = free_port()
        env["RAG_SHUTDOWN_GRACE_S"] = str(grace)
        cmd = [sys.executable, "-m", "cli", "serve", "--port", str(port)]
        log = (tmp_path / f"serve-{grace}.log").open("w")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            faces = {"query": ("/v1/query", {"question": "Do gift cards expire?"}),
                     "openai": ("/v1/chat/completions", {"model": "default", "messages": [{"role": "user", "content": "Do gift cards expire?"}]})}  # fmt: skip
            lines: dict[str, list[str]] = {face: [] for face in faces}
            started = {face: threading.Event() for face in faces}
            threads = [
                threading.Thread(target=_stream, args=(url, path, body, lines[face], started[face]))
                for face, (path, body) in faces.items()
            ]
            for thread in threads:
                thread.start()
            assert all(s.wait(60) for s in started.values()), lines
            time.sleep(1.0)  # tokens are flowing
            proc.send_signal(signal.SIGTERM)
            if finishes:
                time.sleep(1.0)
                backend.set("ok")  # the answers end, inside the grace period
            for thread in threads:
                thread.join(timeout=60)
            assert proc.wait(timeout=60) in (
                0,
                -signal.SIGTERM,
            )  # uvicorn raises the signal again once it has shut down
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
        query, openai = lines["query"], lines["openai"]
        if finishes:
            assert "event: done" in query, query
            assert openai[-1] == "data: [DONE]" and '"finish_reason": "stop"' in "".join(openai), openai
        else:
            assert query[-2:] == ["event: error", query[-1]] and '"code": "shutting_down"' in query[-1], query
            assert openai[-1] == "data: [DONE]" and '"code": "shutting_down"' in openai[-2], openai


def test_a_job_waits_out_a_backend_restart_instead_of_failing_its_questions(backend: FakeBackend, service: str) -> None:
    """vLLM down when the job starts (a restart): its questions are tried again, backing off,
    and answered once it is back; none is recorded as failed."""
    backend.down()
    questions = [{"id": f"q{n}", "question": f"Can I return item number {n}?"} for n in range(3)]
    job = httpx.post(f"{service}/v1/jobs", json={"questions": questions}, timeout=30)
    assert job.status_code == 202, job.text
    time.sleep(1.5)  # the first tries fail
    backend.up()
    deadline = time.monotonic() + 60
    while (body := httpx.get(f"{service}/v1/jobs/{job.json()['id']}", timeout=30).json())["status"] != "done":
        assert time.monotonic() < deadline, body
        time.sleep(0.2)
    assert body["progress"]["failed"] == 0, body
    assert [r["answer"] for r in body["results"]] == [HEALTHY] * 3


async def test_a_job_fails_at_once_what_asking_again_cannot_mend(tmp_path: Path) -> None:
    """Fault injection at the pipeline: an error without retry_after_s (a request vLLM refuses,
    a backend not installed) is no outage: the job's questions fail at once, they do not wait
    RAG_JOB_RETRY_S each; an outage is waited out for one RAG_JOB_RETRY_S in all."""
    import asyncio

    from rag.errors import BackendUnavailableError
    from serving.jobs import JobRequest, JobRunner, JobStore

    class Failing:
        def __init__(self, error: BackendUnavailableError) -> None:
            self.error, self.calls = error, 0

        async def answer(self, *args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            raise self.error

    questions = [{"id": f"q{n}", "question": f"Can I return item number {n}?"} for n in range(3)]
    for error, most_calls in ((BackendUnavailableError("vLLM refused the request (400)"), 3),
                              (BackendUnavailableError("vLLM unavailable", retry_after_s=1), 12)):  # fmt: skip
        store = JobStore(tmp_path / f"jobs-{most_calls}.sqlite")
        pipeline = Failing(error)
        runner = JobRunner(store, pipeline, concurrency=1, retry_s=1.0)  # type: ignore[arg-type]
        job_id = store.create(JobRequest.model_validate({"questions": questions}))
        started = time.monotonic()
        await asyncio.wait_for(runner._run(job_id), timeout=30)
        job = store.get(job_id)
        assert job is not None and job["progress"]["failed"] == 3, job
        assert pipeline.calls <= most_calls and time.monotonic() - started < 10, (pipeline.calls, error)
        store.close()


def test_a_replica_that_spends_the_whole_deadline_is_left_out_like_a_failed_one(
    example_data_dir: Path,
    tmp_path: Path,
    embedder,  # type: ignore[no-untyped-def]
) -> None:
    """A replica that answers 200 and sends keep-alives but never a token spends a request's
    whole deadline (RAG_VLLM_TOTAL_TIMEOUT_S): the next questions go to another replica while
    it backs off, as after any failure, not to it again."""
    stuck, healthy = FakeBackend(), FakeBackend()
    stuck.set("keepalive")
    stuck.up()
    healthy.up()
    settings = _settings(
        example_data_dir, tmp_path, f"{stuck.url},{healthy.url}", vllm_routing="least_loaded", cache_enabled=False
    )
    try:
        with running_server(create_app(settings, build_pipeline(settings, embedder))) as url:
            response, _ = _ask(url, "Do gift cards expire?")
            assert "longer than 3 s" in _assert_unavailable(response, "keep-alives, never a token")
            for question in ("How long do refunds take?", "What payment methods do you accept?"):
                response, _ = _ask(url, question)
                assert response.status_code == 200 and response.json()["answer"] == HEALTHY, response.text
            assert (stuck.app.state.requests, healthy.app.state.requests) == (1, 2)
    finally:
        stuck.down()
        healthy.down()


def test_answers_reuse_their_connection_to_vllm(backend: FakeBackend, service: str) -> None:
    for question in ("Do gift cards expire?", "How long do refunds take?", "What payment methods do you accept?"):
        response, _ = _ask(service, question)
        assert response.status_code == 200 and not response.json()["cache"]["hit"], response.text
    events, _ = _ask_streaming(service, "How do I track my parcel?")
    assert events[-1][0] == "done"
    assert backend.app.state.requests == 4 and len(backend.app.state.connections) == 1


def test_a_client_that_leaves_mid_stream_frees_its_connection_and_vllm_stops(
    backend: FakeBackend,
    example_data_dir: Path,
    tmp_path: Path,
    embedder,  # type: ignore[no-untyped-def]
) -> None:
    """A customer who closes the widget mid-answer: the stream to vLLM is closed (vLLM aborts
    the generation) and its connection freed, however often the request is cancelled while it
    closes. Three abandoned streams, two connections: the next question is still answered."""
    settings = _settings(
        example_data_dir,
        tmp_path,
        backend.url,
        vllm_max_connections=2,
        vllm_total_timeout_s=10 * TOTAL_TIMEOUT_S,
        cache_enabled=False,
    )
    backend.set("slow")  # a token every 0.5 s until the mode changes
    with running_server(create_app(settings, build_pipeline(settings, embedder))) as url:
        for question in ("Do gift cards expire?", "How long do refunds take?", "Do you ship abroad?"):
            body = {"question": question, "stream": True}
            with httpx.stream("POST", f"{url}/v1/query", json=body, timeout=CLIENT_TIMEOUT_S) as response:
                assert response.status_code == 200
                next(line for line in response.iter_lines() if line.startswith("event: token"))
            # The customer is gone: the connection is closed with the answer half read.
        _until(lambda: backend.app.state.abandoned >= 3, "not every stream to vLLM was closed")
        backend.set("ok")
        response, _ = _ask(url, "What payment methods do you accept?")
        assert response.status_code == 200 and response.json()["answer"] == HEALTHY, response.text


def test_identical_streamed_questions_at_once_share_one_generation(
    backend: FakeBackend,
    example_data_dir: Path,
    tmp_path: Path,
    embedder,  # type: ignore[no-untyped-def]
) -> None:
    """Everyone asks about the same outage at once, through the widget (streamed): one
    generation, whose answer the others get whole, as a hit; a plain request joins it too."""
    from concurrent.futures import ThreadPoolExecutor

    settings = _settings(example_data_dir, tmp_path, backend.url, vllm_total_timeout_s=10 * TOTAL_TIMEOUT_S)
    backend.set("slow")  # the first asker's answer is still being written when the others ask
    with running_server(create_app(settings, build_pipeline(settings, embedder))) as url, ThreadPoolExecutor(5) as pool:
        streamed = [pool.submit(_ask_streaming, url, "Do gift cards expire?") for _ in range(4)]
        plain = pool.submit(_ask, url, "Do gift cards expire?")
        _until(lambda: backend.app.state.requests >= 1, "the question never reached the backend")
        time.sleep(1.0)  # the others arrive meanwhile
        backend.set("ok")  # the slow answer ends
        dones = [events[-1] for events, _ in (f.result() for f in streamed)]
        response, _ = plain.result()
    assert [kind for kind, _ in dones] == ["done"] * 4, dones
    answers = {done["answer"] for _, done in dones} | {response.json()["answer"]}
    assert len(answers) == 1 and next(iter(answers)).startswith("and"), answers
    hits = [done["cache"]["hit"] for _, done in dones] + [response.json()["cache"]["hit"]]
    assert sorted(hits) == [False, True, True, True, True]  # whoever came first generated
    assert backend.app.state.requests == 1


@pytest.mark.parametrize("streamed", [False, True])
async def test_when_the_leading_generation_is_cancelled_one_follower_takes_over(
    streamed: bool,
    backend: FakeBackend,
    example_data_dir: Path,
    tmp_path: Path,
    embedder,  # type: ignore[no-untyped-def]
) -> None:
    """The first asker goes away mid-answer (a customer closing the widget; a job that lost
    its lease): one of the askers waiting on it generates, and the others wait on that one."""
    import asyncio

    from rag.wire import Answer

    settings = _settings(example_data_dir, tmp_path, backend.url, vllm_total_timeout_s=10 * TOTAL_TIMEOUT_S)
    pipeline = build_pipeline(settings, embedder)
    question = "Do gift cards expire?"

    async def ask() -> Answer:
        if not streamed:
            return await pipeline.answer(question)
        items = [item async for item in pipeline.stream(await pipeline.prepare(question, streamed=True))]
        assert isinstance(items[-1], Answer)
        return items[-1]

    backend.set("slow")
    try:
        first = asyncio.create_task(ask())
        while backend.app.state.requests < 1:
            await asyncio.sleep(0.01)
        waiting = [asyncio.create_task(ask()) for _ in range(3)]
        await asyncio.sleep(0.5)  # they wait on the first
        first.cancel()
        while backend.app.state.requests < 2:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        backend.set("ok")  # the slow answer ends
        answers = await asyncio.gather(*waiting)
    finally:
        await pipeline.aclose()
    assert len({a.answer for a in answers}) == 1 and sorted(a.cache.hit for a in answers) == [False, True, True]
    assert backend.app.state.requests == 2


def test_a_connection_dropped_after_a_whole_answer_is_no_failure(backend: FakeBackend, service: str) -> None:
    backend.set("cutafterdone")
    response, _ = _ask(service, "Do gift cards expire?")
    assert response.status_code == 200 and response.json()["answer"] == HEALTHY, response.text
    events, _ = _ask_streaming(service, "How long do refunds take?")
    assert [kind for kind, _ in events][-1] == "done" and events[-1][1]["answer"] == HEALTHY, events
    backend.set("ok")
    response, _ = _ask(service, "What payment methods do you accept?")  # the replica was not left out
    assert response.status_code == 200 and response.json()["answer"] == HEALTHY, response.text

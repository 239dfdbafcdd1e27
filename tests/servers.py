"""A real uvicorn server on 127.0.0.1 in a background thread, for end-to-end tests."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from httpx_sse import connect_sse

from eval.processes import free_port, server_process, vllm_cpu


@contextmanager
def running_server(app: FastAPI) -> Iterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def wait_for_version(url: str, version: str, collection: str = "default", timeout_s: float = 5.0) -> float:
    """Seconds until the server at ``url`` serves ``version`` of ``collection`` (read from
    `/metrics`, which loads nothing itself); fails past ``timeout_s``."""
    started = time.monotonic()
    line = f'rag_index_version_info{{collection="{collection}",version="{version}"}} 1.0'
    while line not in httpx.get(f"{url}/metrics", timeout=10).text:
        assert time.monotonic() - started < timeout_s, (
            f"{url} does not serve {collection} {version} after {timeout_s} s"
        )
        time.sleep(0.05)
    return time.monotonic() - started


@contextmanager
def vllm_server(python: str, model_dir: str, timeout_s: float = 300) -> Iterator[str]:
    """A real vLLM OpenAI-compatible server on this CPU, as `make vllm-serve` starts it."""
    port = free_port()
    cmd, env = vllm_cpu(python, model_dir, port)
    log = Path(f"/tmp/rag-test-vllm-{port}.log")
    with server_process(cmd, env, log, port, health="/health", timeout_s=timeout_s) as url:
        yield url


@contextmanager
def serving(data_dir: Path, embedder: object, **overrides: object) -> Iterator[str]:
    """The service over ``data_dir`` with these settings, on a free loopback port."""
    from rag.pipeline import build_pipeline
    from serving.app import create_app

    from .conftest import make_settings

    settings = make_settings(data_dir, **overrides)
    with running_server(create_app(settings, build_pipeline(settings, embedder))) as url:  # type: ignore[arg-type]
        yield url


def query_events(url: str, question: str, timeout: float) -> tuple[httpx.Response, list[tuple[str, Any]]]:
    """POST /v1/query with ``"stream": true``: the response and its (event, JSON data) pairs."""
    with (
        httpx.Client(timeout=timeout) as client,
        connect_sse(client, "POST", f"{url}/v1/query", json={"question": question, "stream": True}) as source,
    ):
        assert source.response.status_code == 200, source.response.read()
        return source.response, [(sse.event, json.loads(sse.data)) for sse in source.iter_sse()]

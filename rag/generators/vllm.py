"""The production backend: one or more vLLM servers over their OpenAI-compatible API.

vLLM's continuous batching and paged attention give the throughput only when many requests
are in flight, so nothing here serialises: one pooled async HTTP client, every request
streamed, each routed by RAG_VLLM_ROUTING (the replica that holds its prompt prefix's KV by
default: rag.generators.replicas). A replica that refuses, times
out or answers 5xx is marked down with exponential backoff and probed back in; a request
that failed before its first token is retried once on another replica.

Generation is always streamed from vLLM, even for a plain answer: the read timeout then
bounds the wait for each token (the first included), a total deadline bounds the whole
answer, and closing the stream (a client that went away) aborts the request in vLLM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from httpx_sse import aconnect_sse

from ..errors import BackendRefusedError, BackendUnavailableError, RagError
from .base import Generation, GenerationRequest, PromptStyle
from .replicas import Replica, ReplicaPool, Routing

log = logging.getLogger("rag.generation")

if TYPE_CHECKING:
    from ..settings import Settings


class _ReplicaFailed(Exception):
    """This replica could not serve the request; another one may."""


class _TooSlow(Exception):
    """The request's whole deadline passed on this replica (no time is left for another)."""


class VLLMGenerator:
    can_stream = True
    supports_prefix_cache = True
    shared = True  # a model server every replica of the service uses: /readyz stays ready while it is down

    def __init__(
        self,
        urls: list[str],
        *,
        model: str | None = None,
        api: str = "completions",
        max_connections: int = 64,
        connect_timeout_s: float = 3.0,
        first_token_timeout_s: float = 60.0,
        total_timeout_s: float = 300.0,
        temperature: float = 0.0,
        api_key: str | None = None,
        backoff_s: float = 0.5,
        routing: Routing = "least_loaded",
        load_factor: float = 1.25,
        known_models: Path | None = None,
    ) -> None:
        self.pool = ReplicaPool(urls, backoff_s=backoff_s, routing=routing, load_factor=load_factor)
        self.prompt_style: PromptStyle = "chat" if api == "chat" else "completion"
        self.temperature = temperature
        self.total_timeout_s = total_timeout_s
        self._model = model
        # The model these servers served last (RAG_DATA_DIR/vllm-models.json): the name, and so
        # the cache scope, a restarted process has before it reaches them. Without it, a
        # process started while vLLM is down could serve none of the answers it has cached.
        self._known_models = known_models
        self._known = None if model else _read_known(known_models, urls)
        self._urls = urls
        self._limits = max_connections
        self._new_client = lambda: httpx.AsyncClient(
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            timeout=httpx.Timeout(first_token_timeout_s, connect=connect_timeout_s),
            headers={"Authorization": f"Bearer {api_key}"} if api_key else None,
        )
        self._client = self._new_client()

    @classmethod
    def from_settings(cls, settings: Settings) -> VLLMGenerator:
        return cls(
            settings.vllm_urls,
            model=settings.vllm_model,
            api=settings.vllm_api,
            max_connections=settings.vllm_max_connections,
            connect_timeout_s=settings.vllm_connect_timeout_s,
            first_token_timeout_s=settings.vllm_first_token_timeout_s,
            total_timeout_s=settings.vllm_total_timeout_s,
            temperature=settings.temperature,
            api_key=settings.vllm_api_key,
            routing=settings.vllm_routing,
            load_factor=settings.vllm_load_factor,
            known_models=settings.data_dir / "vllm-models.json",
        )

    @property
    def name(self) -> str:
        return f"vllm:{self._model or self._known or 'auto'}"

    async def _model_name(self, replica: Replica) -> str:
        if self._model is None:  # the first model the server lists
            response = await self._client.get(f"{replica.url}/v1/models")
            if response.status_code >= 400:
                raise _ReplicaFailed(f"GET /v1/models answered {response.status_code}")
            self._model = str(response.json()["data"][0]["id"])
            if self._model != self._known:
                _write_known(self._known_models, self._urls, self._model)
        return self._model

    def _payload(self, request: GenerationRequest, model: str) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": request.max_tokens,
            "temperature": self.temperature if request.temperature is None else request.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.stop:
            body["stop"] = request.stop
        if self.prompt_style == "chat":
            return "/v1/chat/completions", {**body, "messages": request.prompt}
        return "/v1/completions", {**body, "prompt": request.prompt}

    async def _attempt(
        self, replica: Replica, request: GenerationRequest, info: dict[str, Any], deadline: float
    ) -> AsyncGenerator[str, None]:
        model = await self._model_name(replica)
        path, body = self._payload(request, model)
        # The prompt's routing key, for a router in front of the replicas: vllm-router's
        # consistent_hash policy (and the production stack's session router) key on this header.
        headers = {"X-Session-ID": request.prefix_key} if request.prefix_key else {}
        async with aconnect_sse(self._client, "POST", replica.url + path, json=body, headers=headers) as source:
            response = source.response
            if response.status_code >= 500:
                raise _ReplicaFailed(f"{path} answered {response.status_code}")
            if response.status_code >= 400:  # our request is wrong for this server: retrying won't help
                reason = f"vLLM refused the request ({response.status_code}): {_reason(await response.aread())}"
                if response.status_code in (400, 413, 422):  # this prompt (over the context length, say)
                    raise BackendRefusedError(reason)
                # Its key, its model name (401, 403, 404): every request would be refused, an outage.
                raise BackendUnavailableError(reason)
            events = source.aiter_sse()
            while True:
                # The deadline bounds every wait, not only the gaps between tokens: a server that
                # sends keep-alive comments and never a token would reset the read timeout forever.
                try:
                    async with asyncio.timeout(max(deadline - time.monotonic(), 0)):
                        event = await anext(events)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise _TooSlow(self._too_slow()) from None
                if event.data == "[DONE]":
                    # The body read to its end, the connection goes back to the pool (closed
                    # unread, it is dropped, and every answer opens a new one). The answer is
                    # whole: whatever the end of the body does, it is no failure.
                    with contextlib.suppress(TimeoutError, httpx.HTTPError):
                        async with asyncio.timeout(min(1.0, max(deadline - time.monotonic(), 0))):
                            async for _ in events:
                                pass
                    break
                chunk = json.loads(event.data)
                if chunk.get("error") or chunk.get("object") == "error":  # vLLM failed mid-answer, still a 200
                    error = chunk.get("error") if isinstance(chunk.get("error"), dict) else chunk
                    raise _ReplicaFailed(f"error in the stream: {str(error.get('message') or error)[:300]}")
                if chunk.get("usage"):
                    info["usage"] = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    if choice.get("finish_reason"):
                        info["finish_reason"] = choice["finish_reason"]
                    text = (
                        choice.get("text")
                        if self.prompt_style == "completion"
                        else (choice.get("delta") or {}).get("content")
                    )
                    if text:
                        yield text
                if time.monotonic() > deadline:
                    raise _TooSlow(self._too_slow())

    def _too_slow(self) -> str:
        return (
            f"vLLM answer took longer than {self.total_timeout_s:.0f} s - it is overloaded or stuck: "
            "check its log and load (RAG_VLLM_TOTAL_TIMEOUT_S sets the limit)"
        )

    async def _stream(self, request: GenerationRequest, info: dict[str, Any]) -> AsyncGenerator[str, None]:
        tried: set[str] = set()
        errors: list[str] = []
        stuck: list[bool] = []  # per failed try: connected, then no answer in time (busy or hung)
        deadline = time.monotonic() + self.total_timeout_s  # the whole request's, a retry included
        for _ in range(2):  # the request itself is retried once, on another replica
            try:
                replica = self.pool.pick(exclude=tried, key=request.prefix_key)
            except BackendUnavailableError:
                if errors:
                    break
                raise
            tried.add(replica.url)
            streamed = False
            try:
                with self.pool.track(replica):
                    async with aclosing(self._attempt(replica, request, info, deadline)) as pieces:
                        async for piece in pieces:
                            streamed = True
                            yield piece
                self.pool.mark_ok(replica)
                return
            except httpx.PoolTimeout as exc:  # no free connection here: this service is overloaded, not the replica
                replica.probing = False  # no verdict on it: a probe that never ran must not leave it out for good
                raise BackendUnavailableError(
                    f"all {self._limits} connections to vLLM are busy - raise RAG_VLLM_MAX_CONNECTIONS or add replicas",
                    retry_after_s=1,
                ) from exc
            except (httpx.TransportError, _ReplicaFailed, json.JSONDecodeError) as exc:
                self.pool.mark_failed(replica)
                errors.append(f"{replica.url}: {type(exc).__name__} {exc}".strip())
                stuck.append(isinstance(exc, httpx.ReadTimeout | httpx.WriteTimeout))
                if streamed:  # tokens already went out: a retry would repeat them
                    raise BackendUnavailableError(f"vLLM failed mid-answer ({errors[-1]})", retry_after_s=5) from exc
            except _TooSlow as exc:  # the whole deadline spent here: no time left to try another
                if streamed:  # slow, but answering: busy, not broken
                    self.pool.mark_ok(replica)
                else:  # a 200 and keep-alives, never a token: wedged
                    self.pool.mark_failed(replica)
                raise BackendUnavailableError(str(exc), retry_after_s=5) from None
            except RagError:
                self.pool.mark_ok(replica)  # the replica answered; the request was the problem
                raise
            except BaseException:  # cancelled (client went away): no verdict on the replica
                replica.probing = False
                raise
        # Connected but no answer in time: it runs, busy or stuck; else nothing answers there.
        hint = (
            "vLLM took the connection but did not answer in time - it is overloaded or stuck: check its log and load"
            if stuck and all(stuck)
            else "check that `vllm serve` is running there (RAG_VLLM_URL)"
        )
        raise BackendUnavailableError(
            f"vLLM unavailable ({'; '.join(errors)}) - {hint}",
            retry_after_s=max(1, math.ceil(self.pool.backoff_s)),
        )

    async def stream(self, request: GenerationRequest, summary: Generation | None = None) -> AsyncIterator[str]:
        """The answer's pieces; at the end ``summary`` holds vLLM's token counts and finish reason."""
        info: dict[str, Any] = {}
        async with aclosing(self._stream(request, info)) as pieces:  # closed at once when the caller stops
            async for piece in pieces:
                yield piece
        if summary is not None:
            _summarise(summary, info)

    async def generate(self, request: GenerationRequest) -> Generation:
        info: dict[str, Any] = {}
        text = "".join([piece async for piece in self._stream(request, info)])
        return _summarise(Generation(text), info)

    async def ready(self) -> bool:
        """Whether any replica answers ``/health`` (in 2 s). Each probe also tells the pool: a
        replica that answers is taken back at once (not after its backoff: questions got 503s
        for seconds after `/readyz` said healthy), one that does not sits out as after a failed
        request, so `rag_backend_replica_up` follows the probes when no questions come."""

        async def probe(replica: Replica) -> bool:
            try:
                up = (await self._client.get(f"{replica.url}/health", timeout=2.0)).status_code == 200
                refused = not up  # it answered: not healthy
            except httpx.TimeoutException:  # busy (a full pool, a loaded CPU) or hung: no verdict here
                return False
            except httpx.HTTPError:  # refused, reset: nothing listens
                up, refused = False, True
            if up and (replica.failures or replica.down_until):
                log.info("vLLM replica %s answers /health again: taking requests", replica.url)
                self.pool.mark_ok(replica)
            elif refused and replica.healthy:
                log.warning("vLLM replica %s does not answer /health: sitting out", replica.url)
                self.pool.mark_failed(replica)
            return up

        return any(await asyncio.gather(*(probe(r) for r in self.pool.replicas)))

    async def release_connections(self) -> None:
        """Close the connections kept open to vLLM (they belong to the event loop that opened
        them) and go on with new ones: a server given a pipeline it does not own calls this
        as it stops."""
        client, self._client = self._client, self._new_client()
        await client.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()


def _reason(body: bytes) -> str:
    """What an error body says: vLLM's (OpenAI's) ``error.message``, or the body's start."""
    try:
        error = json.loads(body)["error"]
        return str(error["message"] if isinstance(error, dict) else error)[:500]
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")[:500]


def _summarise(summary: Generation, info: dict[str, Any]) -> Generation:
    """What the stream's last chunks said: the usage (stream_options.include_usage) and the reason it ended."""
    usage = info.get("usage") or {}
    summary.prompt_tokens, summary.completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
    summary.finish_reason = info.get("finish_reason")
    return summary


def _read_known(path: Path | None, urls: list[str]) -> str | None:
    """The model ``urls`` served last, as :func:`_write_known` kept it; None if unknown."""
    try:
        known = json.loads(path.read_text()) if path is not None else {}
    except (OSError, ValueError):
        return None
    model = known.get(" ".join(sorted(urls))) if isinstance(known, dict) else None
    return model if isinstance(model, str) else None


def _write_known(path: Path | None, urls: list[str], model: str) -> None:
    """Keep ``model`` as the one ``urls`` serve (atomically; a failure costs only the name)."""
    if path is None:
        return
    try:
        known = json.loads(path.read_text()) if path.exists() else {}
        known = known if isinstance(known, dict) else {}
        known[" ".join(sorted(urls))] = model
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1) + "\n")
        os.replace(tmp, path)
    except (OSError, ValueError) as exc:
        log.warning("could not keep the vLLM model's name in %s: %s", path, exc)

"""Fault injection only: a loopback server speaking vLLM's OpenAI-compatible routes and SSE
framing, for the failures a healthy vLLM will not produce on demand (5xx, a stream cut off
mid-answer, a hang). Everything else is tested against the real vLLM server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

HEALTHY_ANSWER = ("The answer", " is in", " the documents.")
MODES = (
    "ok",
    "error",
    "refuse",
    "unauthorized",
    "cut",
    "hang",
    "stall",
    "keepalive",
    "slow",
    "errorevent",
    "cutafterdone",
)


def _chunk(text: str, finish_reason: str | None = None) -> str:
    body = {
        "id": "cmpl-1",
        "object": "text_completion",
        "model": "gemma3-270m",
        "choices": [{"index": 0, "text": text, "finish_reason": finish_reason}],
    }
    return f"data: {json.dumps(body)}\n\n"


def fake_vllm(mode: str = "ok") -> FastAPI:
    """A fake vLLM whose completions route fails as ``mode`` says:

    - ``ok``: a healthy answer (:data:`HEALTHY_ANSWER`, three tokens, usage, ``[DONE]``);
    - ``error``: 500 (and an unhealthy ``/health``);
    - ``refuse``: 400, vLLM's answer to a prompt over the model's context length;
    - ``unauthorized``: 401, a server started with ``--api-key`` that the service does not send;
    - ``cut``: two tokens, then the connection drops;
    - ``hang``: accepts the request and never answers it (no status line either);
    - ``stall``: two tokens, then nothing, the connection left open;
    - ``keepalive``: 200, then SSE comments every 0.2 s, never a token;
    - ``slow``: a token every 0.5 s, forever;
    - ``errorevent``: two tokens, then the error event vLLM sends when generation fails
      after its 200 (``data: {"object": "error", ...}``), then ``[DONE]``;
    - ``cutafterdone``: a healthy answer to its ``[DONE]``, then the connection drops before
      the body's end.

    ``app.state.mode`` switches it while it runs (the healthy replica comes back); a hung
    request ends when the mode changes. ``app.state.requests`` counts completion requests,
    ``app.state.connections`` the client ports they came from (a reused connection: one),
    ``app.state.abandoned`` the ``slow`` streams the client closed (vLLM aborts those).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    app = FastAPI()
    app.state.requests = 0
    app.state.connections = set()
    app.state.abandoned = 0
    app.state.mode = mode

    async def while_mode(current: str, every_s: float = 0.02) -> None:
        while app.state.mode == current:
            await asyncio.sleep(every_s)

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({}, status_code=500 if app.state.mode == "error" else 200)

    @app.get("/v1/models")
    async def models() -> dict[str, object]:
        return {"object": "list", "data": [{"id": "gemma3-270m", "object": "model"}]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> object:
        app.state.requests += 1
        app.state.connections.add(request.client.port if request.client else None)
        mode = app.state.mode
        if mode == "error":
            return JSONResponse({"error": {"message": "engine dead", "type": "InternalServerError"}}, 500)
        if mode == "refuse":
            message = (
                "This model's maximum context length is 2048 tokens. However, your prompt contains 2101 input "
                "tokens, which exceeds this limit even without any output tokens. Please reduce the length of the "
                "input prompt."
            )
            error = {"message": message, "type": "BadRequestError", "param": "input_tokens", "code": 400}
            return JSONResponse({"error": error}, 400)
        if mode == "unauthorized":
            return JSONResponse({"error": "Unauthorized"}, 401)
        if mode == "hang":
            await while_mode("hang")
            return JSONResponse({"error": {"message": "woke up", "type": "InternalServerError"}}, 500)

        async def events() -> AsyncIterator[str]:
            if mode in ("ok", "cutafterdone"):
                for text in HEALTHY_ANSWER:
                    yield _chunk(text)
                yield _chunk("", "stop")
                usage = {"prompt_tokens": 120, "completion_tokens": len(HEALTHY_ANSWER), "total_tokens": 123}
                yield f"data: {json.dumps({'id': 'cmpl-1', 'object': 'text_completion', 'choices': [], 'usage': usage})}\n\n"
                yield "data: [DONE]\n\n"
                if mode == "cutafterdone":
                    raise ConnectionResetError("dropped after its answer")
                return
            if mode == "keepalive":
                while app.state.mode == "keepalive":
                    yield ": keep-alive\n\n"
                    await asyncio.sleep(0.2)
                return
            if mode == "slow":
                try:
                    while app.state.mode == "slow":
                        yield _chunk(" and")
                        await asyncio.sleep(0.5)
                finally:
                    if app.state.mode == "slow":  # the client went away mid-answer
                        app.state.abandoned += 1
                return
            for text in ("Refunds take", " 5 to 7"):
                yield _chunk(text)
            if mode == "stall":
                await while_mode("stall")
                return
            if mode == "errorevent":
                error = {"object": "error", "message": "engine step failed", "type": "InternalServerError", "code": 500}
                yield f"data: {json.dumps(error)}\n\n"
                yield "data: [DONE]\n\n"
                return
            raise ConnectionResetError("replica died mid-answer")

        return StreamingResponse(events(), media_type="text/event-stream")

    return app

"""Fault injection only: a loopback server speaking vLLM's OpenAI-compatible routes and SSE
framing, for the failures a healthy vLLM will not produce on demand (5xx, a stream cut off
mid-answer). Everything else is tested against the real vLLM server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse


def fake_vllm(mode: str) -> FastAPI:
    """mode: "error" answers 500 to completions; "cut" streams two tokens, then drops."""
    app = FastAPI()
    app.state.requests = 0

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({}, status_code=500 if mode == "error" else 200)

    @app.get("/v1/models")
    async def models() -> dict[str, object]:
        return {"object": "list", "data": [{"id": "gemma3-270m", "object": "model"}]}

    @app.post("/v1/completions")
    async def completions() -> object:
        app.state.requests += 1
        if mode == "error":
            return JSONResponse({"error": {"message": "engine dead", "type": "InternalServerError"}}, 500)

        async def events() -> AsyncIterator[str]:
            for text in ("Refunds take", " 5 to 7"):
                chunk = {
                    "id": "cmpl-1",
                    "object": "text_completion",
                    "choices": [{"index": 0, "text": text, "finish_reason": None}],
                }
                yield f"data: {json.dumps(chunk)}\n\n"
            raise ConnectionResetError("replica died mid-answer")

        return StreamingResponse(events(), media_type="text/event-stream")

    return app

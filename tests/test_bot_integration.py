"""The ways into a support bot, over real HTTP on 127.0.0.1: the official `openai` client
against /v1/chat/completions and /v1/models, and rag.client (sync and async)."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from rag.client import AsyncRagClient, RagClient, RagClientError

from .servers import serving


@pytest.fixture(scope="module")
def base_url(example_data_dir: Path, embedder) -> Iterator[str]:  # type: ignore[no-untyped-def]
    with serving(example_data_dir, embedder, backend="extractive") as url:
        yield url


@pytest.fixture
def oai(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


def test_models_are_the_collections(oai: openai.OpenAI) -> None:
    assert [m.id for m in oai.models.list()] == ["default"]
    assert oai.models.retrieve("default").id == "default"
    with pytest.raises(openai.NotFoundError) as missing:
        oai.models.retrieve("nope")
    assert missing.value.body["param"] == "model" and missing.value.body["code"] == "collection_not_found"  # type: ignore[index]


def test_openai_client_gets_a_cited_answer(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model="default",
        messages=[
            {"role": "system", "content": "You are a helpful bot."},
            {"role": "user", "content": "How long is the password reset link valid?"},
        ],  # fmt: skip
    )
    assert completion.object == "chat.completion" and completion.choices[0].finish_reason == "stop"
    assert "30 minutes" in (completion.choices[0].message.content or "")
    extra = completion.model_extra or {}
    assert extra["citations"][0]["document_id"] == "password-reset.html"
    assert extra["rag"]["cache"]["hit"] is False
    again = oai.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "How long is the password reset link valid?"}]
    )
    assert (again.model_extra or {})["rag"]["cache"]["kind"] == "exact"


def test_openai_client_streams_chunks_ending_with_citations(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Do gift cards expire?"}], stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert "never expire" in text
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop"
    assert (last.model_extra or {})["citations"][0]["document_id"] == "gift-cards.txt"
    # Every chunk carries the completion id, which is the answer's id for feedback.
    assert len({c.id for c in chunks}) == 1 and (last.model_extra or {})["rag"]["needs_human"] is None
    rated = httpx.post(f"{oai.base_url}feedback", json={"answer_id": last.id, "rating": "up"}, timeout=30)
    assert rated.status_code == 200 and rated.json()["answer_id"] == last.id.removeprefix("chatcmpl-"), rated.text


def test_earlier_messages_are_the_history(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model="default",
        messages=[
            {"role": "user", "content": "How long do refunds take?"},
            {"role": "assistant", "content": "Refunds take up to 10 business days."},
            {"role": "user", "content": "And how do I start one?"},
        ],
    )
    extra = completion.model_extra or {}
    assert extra["rag"]["cache"]["hit"] is False  # a follow-up never comes from the cache
    assert any(c["document_id"] == "returns-and-refunds.md" for c in extra["citations"])


def test_errors_come_in_openai_shape(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        oai.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi?"}])
    assert missing.value.body["param"] == "model"  # type: ignore[index]  # as the OpenAI request names it
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="default", messages=[{"role": "assistant", "content": "hello"}])


def test_what_the_answer_cannot_be_is_refused_not_ignored(oai: openai.OpenAI) -> None:
    """A forced tool call, JSON output and log probabilities would change what the bot gets back:
    a 400 naming the parameter, not prose that its tool dispatcher or JSON parser fails on later."""
    ask = [{"role": "user", "content": "How long do refunds take?"}]
    tool = {
        "type": "function",
        "function": {"name": "lookup_order", "parameters": {"type": "object", "properties": {}}},
    }
    for refused, param in (
        ({"tools": [tool], "tool_choice": "required"}, "tool_choice"),
        ({"tools": [tool], "tool_choice": {"type": "function", "function": {"name": "lookup_order"}}}, "tool_choice"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
    ):
        with pytest.raises(openai.BadRequestError) as bad:
            oai.chat.completions.create(model="default", messages=ask, **refused)  # type: ignore[call-overload]
        assert bad.value.body["param"] == param and "leave" in bad.value.body["message"], bad.value.body  # type: ignore[index]
    # What a text answer satisfies is answered: tools the model may leave unused, text, no log probabilities.
    fine = oai.chat.completions.create(
        model="default",
        messages=ask,
        tools=[tool],
        tool_choice="auto",
        response_format={"type": "text"},
        logprobs=False,
    )
    assert "5 to 7 business days" in (fine.choices[0].message.content or "") and not fine.choices[0].message.tool_calls
    # A list item of the wrong type is named, not "the body must be a JSON object".
    wrong = httpx.post(f"{oai.base_url}chat/completions", json={"model": "default", "messages": ["hi"]}, timeout=30)
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "messages.0", wrong.text
    assert wrong.json()["error"]["message"] == "messages.0 must be a JSON object, not str"
    long = {"model": "default", "messages": [{"role": "user", "content": "x" * 2001}]}
    too_long = httpx.post(f"{oai.base_url}chat/completions", json=long, timeout=30).json()["error"]
    assert too_long["param"] == "messages" and too_long["message"].startswith(
        "the last user message is 2001 characters"
    )


def test_python_client_query_stream_and_errors(base_url: str) -> None:
    with RagClient(base_url) as client:
        result = client.query("Which payment methods do you accept?")
        assert result.citations and result.citations[0].document_id and result.cache.hit is False
        events = list(client.stream("Do gift cards expire?"))
        assert events[-1].kind == "done" and events[-1].result is not None
        assert "never expire" in events[-1].answer and events[-1].result.citations
        assert client.models() == ["default"]
        with pytest.raises(RagClientError) as bad:
            client.query("")
        assert bad.value.status == 400 and bad.value.param == "question"
        assert bad.value.body["error"]["code"] == bad.value.code and bad.value.body["error"]["param"] == "question"
        assert result.answer_id and result.needs_human is None
        assert client.feedback(result.answer_id, "up", reason="clear")["rating"] == "up"
        with pytest.raises(RagClientError) as unknown:
            client.feedback("0" * 32, "down")
        assert unknown.value.status == 404 and unknown.value.param == "answer_id"


async def test_async_python_client(base_url: str) -> None:
    async with AsyncRagClient(base_url) as client:
        result = await client.query("Do you ship internationally?")
        assert result.answer and result.collection == "default"
        events = [event async for event in client.stream("Can I change my delivery address?")]
        assert events[-1].kind == "done" and events[-1].result is not None
        down = await client.feedback(events[-1].result.answer_id, "down", correction="Yes, until it ships.")
        assert down["needs_human"] == "thumbs_down"


def test_a_stream_cut_before_its_final_event_is_an_error_not_a_quiet_end() -> None:
    """Fault injection: a server speaking the service's SSE framing that drops the connection
    after one token (a proxy timeout, a crashed worker)."""
    import asyncio
    from collections.abc import AsyncIterator

    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    from .servers import running_server

    app = FastAPI()

    @app.post("/v1/query")
    async def cut() -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            yield 'event: token\ndata: {"text": "Refunds take"}\n\n'

        return StreamingResponse(events(), media_type="text/event-stream")

    async def consume(url: str) -> None:
        async with AsyncRagClient(url) as client:
            async for _ in client.stream("How long do refunds take?"):
                pass

    with running_server(app) as url:
        with RagClient(url) as client, pytest.raises(RagClientError) as cut_short:
            for _ in client.stream("How long do refunds take?"):
                pass
        assert cut_short.value.code == "incomplete_stream" and cut_short.value.status == 502
        with pytest.raises(RagClientError, match="final event"):
            asyncio.run(consume(url))


def test_the_python_client_raises_its_own_error_for_every_transport_failure() -> None:
    """Fault injection: nothing listening, and a raw socket that answers a stream with one
    token event and then closes mid-body (a killed server), which no ASGI app can do."""
    import asyncio
    import socket
    import struct
    import threading
    import time

    from .servers import free_port

    with RagClient(f"http://127.0.0.1:{free_port()}") as client, pytest.raises(RagClientError) as down:
        client.query("How long do refunds take?")
    assert (down.value.status, down.value.code) == (503, "service_unreachable") and "running" in down.value.message

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def killed_mid_body() -> None:
        for reset in (False, False, True):  # the sync client, the async one; then a reset (RST), not a FIN
            conn, _ = listener.accept()
            conn.recv(65536)
            event = b'event: token\ndata: {"text": "Refunds take"}\n\n'
            conn.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                + f"{len(event):x}\r\n".encode() + event + b"\r\n" + b"40\r\npartial"
            )  # fmt: skip
            if reset:
                time.sleep(0.2)  # the client is reading the body when the reset comes
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    server = threading.Thread(target=killed_mid_body, daemon=True)
    server.start()

    async def consume() -> None:
        async with AsyncRagClient(f"http://127.0.0.1:{port}") as client:
            async for _ in client.stream("How long do refunds take?"):
                pass

    try:
        with RagClient(f"http://127.0.0.1:{port}") as client, pytest.raises(RagClientError) as cut:
            for _ in client.stream("How long do refunds take?"):
                pass
        assert (cut.value.status, cut.value.code) == (502, "incomplete_stream")
        with pytest.raises(RagClientError) as async_cut:
            asyncio.run(consume())
        assert async_cut.value.code == "incomplete_stream"
        with RagClient(f"http://127.0.0.1:{port}") as client, pytest.raises(RagClientError) as reset_cut:
            for _ in client.stream("How long do refunds take?"):
                pass
        assert (reset_cut.value.status, reset_cut.value.code) == (502, "incomplete_stream"), reset_cut.value.message
    finally:
        server.join(timeout=10)
        listener.close()


def test_the_python_client_carries_usage_and_the_stream_takes_top_k(base_url: str) -> None:
    with RagClient(base_url) as client:
        result = client.query("Is Klarna an option at checkout?")
        assert result.usage == {} and result.answer_kind == "quoted"  # quoted: no model's tokens
        events = list(client.stream("Is Klarna an option at checkout?", top_k=1))
        assert events[-1].result is not None and len(events[-1].result.citations) <= 1


def test_a_200_that_is_no_event_stream_is_a_bad_response_not_an_unreachable_service() -> None:
    """Fault injection: a proxy answering the stream with its own HTML page."""
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse

    from .servers import running_server

    app = FastAPI()

    @app.post("/v1/query")
    async def page() -> HTMLResponse:
        return HTMLResponse("<html>Please sign in to the proxy</html>")

    with running_server(app) as url, RagClient(url) as client, pytest.raises(RagClientError) as bad:
        list(client.stream("How long do refunds take?"))
    assert (bad.value.status, bad.value.code) == (502, "bad_response") and "event stream" in bad.value.message


def test_the_schema_documents_the_errors_the_service_sends(base_url: str) -> None:
    """A client generated from /openapi.json models a malformed request as the 400 in the one
    error shape that is sent, not FastAPI's 422 that never is."""
    schema = httpx.get(f"{base_url}/openapi.json", timeout=30).json()
    for path, method in (("/v1/query", "post"), ("/v1/chat/completions", "post"), ("/v1/feedback", "post")):
        responses = schema["paths"][path][method]["responses"]
        assert "400" in responses and "422" not in responses, (path, sorted(responses))
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    refused = httpx.post(f"{base_url}/v1/query", json={"question": 5}, timeout=30)
    assert refused.status_code == 400 and set(refused.json()["error"]) == {"message", "type", "param", "code"}

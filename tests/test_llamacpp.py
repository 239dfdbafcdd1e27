"""The embedded default backend, for real: llama.cpp running the GGUF models shipped on PyPI."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rag.errors import BackendUnavailableError
from rag.generators import GenerationRequest
from rag.generators.llamacpp import LlamaCppGenerator, check_loads
from rag.prompts import COMPLETION_STOP, chat_messages, completion_prompt

from .conftest import make_settings
from .servers import serving

pytestmark = pytest.mark.slow


def test_the_llamacpp_build_runs_on_this_cpu(tmp_path: Path) -> None:
    """The model loads and generates in a child process: a build for another CPU fails here
    with its signal and what to do (SIGILL: rebuild), not by killing the test session."""
    check_loads("gemma3-270m", tmp_path)  # raises BackendUnavailableError with the advice
    assert len(list(tmp_path.glob("llamacpp-gemma3-270m-*.ok"))) == 1  # passed once per build and CPU
    check_loads("gemma3-270m", tmp_path)


def test_a_backend_that_dies_with_sigill_is_a_clear_error(tmp_path: Path) -> None:
    import signal
    import sys

    crash = [sys.executable, "-c", f"import os; os.kill(os.getpid(), {int(signal.SIGILL)})"]
    with pytest.raises(BackendUnavailableError) as info:
        check_loads("gemma3-270m", tmp_path, command=crash)
    message = info.value.message
    assert "SIGILL" in message and "make install" in message and "--backend extractive" in message
    assert not list(tmp_path.glob("*.ok"))


@pytest.fixture(scope="module")
def gemma_url(example_data_dir: Path, embedder) -> Iterator[str]:  # type: ignore[no-untyped-def]
    with serving(example_data_dir, embedder, backend="llamacpp", llamacpp_model="gemma3-270m") as url:
        yield url


def test_gemma_answers_over_http_from_the_cited_document(gemma_url: str) -> None:
    response = httpx.post(
        f"{gemma_url}/v1/query", json={"question": "How long is the password reset link valid?"}, timeout=120
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["backend"] == "llamacpp:gemma3-270m"
    assert "30 minutes" in body["answer"]
    assert "\n" not in body["answer"]  # the stop sequence ends the answer line
    assert body["citations"][0]["document_id"] == "password-reset.html"
    assert body["timings_ms"]["generate"] > 0

    again = httpx.post(
        f"{gemma_url}/v1/query", json={"question": "How long is the password reset link valid?"}, timeout=60
    )
    assert again.json()["cache"]["kind"] == "exact" and again.json()["answer"] == body["answer"]


async def test_smollm2_chat_model_generates_through_its_chat_template(example_data_dir: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    from rag.store import CollectionIndex

    index = CollectionIndex.load(
        make_settings(example_data_dir).collections_dir, "default", model=embedder.name, dimension=384
    )
    question = "Which cards do you accept?"
    chunks = index.search(embedder.embed_batch([question])[0], 2)
    gen = LlamaCppGenerator("smollm2-135m", n_ctx=2048)
    try:
        assert gen.prompt_style == "chat"
        out = await gen.generate(GenerationRequest(question, chunks, chat_messages(question, chunks), max_tokens=24))
        assert out.text and out.completion_tokens and out.completion_tokens <= 24
    finally:
        await gen.aclose()


def test_prompt_puts_fixed_prefix_first_and_context_then_question_last(example_data_dir: Path) -> None:
    from rag.store import RetrievedChunk

    chunk = RetrievedChunk(1, "d", "s", "Title", 0, "Body text.", 0.9)
    a = completion_prompt("First question?", [chunk])
    b = completion_prompt("Second question?", [chunk])
    prefix = a[: a.index('Context:\n<document id="1" title="Title">')]
    assert b.startswith(prefix) and "I don't know from these documents." in prefix
    assert a.endswith("Question: First question?\nAnswer:") and COMPLETION_STOP == ["\n"]
    assert completion_prompt("q", [chunk], shots="zero").count("Answer:") == 1
    assert completion_prompt("q", [chunk], shots="one").count("Answer:") == 2


async def test_rag_temperature_reaches_llamacpp_and_a_request_overrides_it(
    tmp_path: Path, example_data_dir: Path, embedder
) -> None:  # type: ignore[no-untyped-def]
    from rag.store import CollectionIndex

    index = CollectionIndex.load(
        make_settings(example_data_dir).collections_dir, "default", model=embedder.name, dimension=384
    )
    question = "Which cards do you accept?"
    chunks = index.search(embedder.embed_batch([question])[0], 2)
    prompt = completion_prompt(question, chunks)
    gen = LlamaCppGenerator.from_settings(make_settings(tmp_path, llamacpp_model="gemma3-270m", temperature=2.0))
    try:

        async def answers(temperature: float | None) -> set[str]:
            request = GenerationRequest(question, chunks, prompt, max_tokens=24, temperature=temperature)
            return {(await gen.generate(request)).text for _ in range(3)}

        assert len(await answers(None)) > 1  # RAG_TEMPERATURE=2: samples differ
        assert len(await answers(0.0)) == 1  # a request's temperature 0: greedy, the same every time
    finally:
        await gen.aclose()


async def test_llamacpp_streams_its_answer_piece_by_piece_and_stops_when_the_caller_does(
    example_data_dir: Path, embedder
) -> None:  # type: ignore[no-untyped-def]
    """The guard releases a streamed answer clause by clause only if the backend streams: llama.cpp
    sent the whole answer as one event at its end (a bot integrator's audit)."""
    from contextlib import aclosing

    from rag.generators import Generation
    from rag.store import CollectionIndex

    index = CollectionIndex.load(
        make_settings(example_data_dir).collections_dir, "default", model=embedder.name, dimension=384
    )
    question = "Which cards do you accept?"
    chunks = index.search(embedder.embed_batch([question])[0], 2)
    request = GenerationRequest(question, chunks, completion_prompt(question, chunks), max_tokens=24, temperature=0.0)
    gen = LlamaCppGenerator("gemma3-270m")
    try:
        summary = Generation("")
        pieces = [piece async for piece in gen.stream(request, summary)]
        whole = await gen.generate(request)
        assert len(pieces) > 1 and "".join(pieces).strip() == whole.text, (pieces, whole)
        assert summary.completion_tokens == len(pieces) and summary.finish_reason in ("stop", "length")
        assert summary.prompt_tokens == whole.prompt_tokens
        async with aclosing(gen.stream(request)) as stream:  # a caller that stops after one piece
            first = await anext(stream)
        assert first == pieces[0]
        assert (await gen.generate(request)).text == whole.text  # the model is free again, not stuck
    finally:
        await gen.aclose()


def test_an_answer_the_callers_max_tokens_cut_is_quoted_without_calling_a_person(gemma_url: str) -> None:
    """'The price of' (max_tokens 3) fails the guard at its cut end: the quote stands in, and
    no help desk is told the model was caught out (each such answer was a guard_replaced
    handoff; a bot integrator's audit)."""
    chat = {
        "model": "default",
        "messages": [{"role": "user", "content": "What is the price of the assembly service?"}],
        "max_tokens": 3,
    }
    reply = httpx.post(f"{gemma_url}/v1/chat/completions", json=chat, timeout=120)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["rag"]["answer_kind"] == "quoted" and "£45" in body["choices"][0]["message"]["content"], body
    assert body["rag"]["needs_human"] is None and "x-rag-needs-human" not in reply.headers, body

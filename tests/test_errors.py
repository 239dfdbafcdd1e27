"""Every error path answers with the one error body and the right status."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from rag.generators import GenerationRequest, register_generator
from rag.pipeline import build_pipeline
from serving.app import create_app

from .conftest import make_settings


class BrokenBackend:
    """Fault injection: a backend whose model server has gone away."""

    name = "broken"
    prompt_style = "completion"
    can_stream = False
    supports_prefix_cache = False

    async def generate(self, request: GenerationRequest):  # type: ignore[no-untyped-def]
        raise ConnectionRefusedError("connection refused")

    async def aclose(self) -> None:
        pass


register_generator("broken", lambda settings: BrokenBackend())


@pytest.fixture(scope="module")
def client(example_data_dir: Path, embedder) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    settings = make_settings(example_data_dir, backend="extractive", max_question_chars=100)
    with TestClient(create_app(settings, build_pipeline(settings, embedder))) as c:
        yield c


@pytest.fixture(scope="module")
def broken_client(example_data_dir: Path, embedder) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    settings = make_settings(example_data_dir, backend="broken")
    with TestClient(create_app(settings, build_pipeline(settings, embedder))) as c:
        yield c


JSON = {"content-type": "application/json"}


def _assert_error(response, status: int, code: str, param: str | None = None) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code and body["error"]["param"] == param
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


@pytest.mark.parametrize(
    ("kwargs", "status", "code", "param"),
    [
        ({"json": {"question": ""}}, 400, "invalid_request", "question"),
        ({"json": {"question": "   "}}, 400, "invalid_request", "question"),
        ({"json": {"question": "x" * 101}}, 400, "invalid_request", "question"),
        ({"json": {"question": "hi", "collection": "nope"}}, 404, "collection_not_found", "collection"),
        ({"json": {"question": "hi", "collection": "../etc"}}, 400, "invalid_request", "collection"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "invalid_json", None),
        ({"json": {"question": 42}}, 400, "invalid_value", "question"),
        ({"json": {"question": "hi", "top_k": 0}}, 400, "invalid_value", "top_k"),
        ({"json": {"question": "hi", "top_k": "many"}}, 400, "invalid_value", "top_k"),
        ({"json": {}}, 400, "missing_field", "question"),
        ({"json": ["question"]}, 400, "invalid_body", None),
        ({"json": {"question": "hi", "unknown": 1}}, 400, "invalid_value", "unknown"),
        ({"json": {"question": "hi\u0000"}}, 400, "invalid_text", "question"),  # no database stores it
        ({"json": {"question": "hi", "history": [{"role": "user", "content": "a\u0000"}]}}, 400, "invalid_text",
         "history.0.content"),
        # A lone surrogate (half of a UTF-16 pair) is no character: no UTF-8, no cache key.
        ({"content": b'{"question": "gift \\ud800 cards"}', "headers": JSON}, 400, "invalid_text", "question"),
        ({"content": b'{"question": "hi", "filters": {"title": "\\udc00"}}', "headers": JSON}, 400, "invalid_text",
         "filters.title"),
        ({}, 400, "missing_body", None),
        ({"content": b'{"question": "hi"}', "headers": {"content-type": "text/plain"}}, 400, "invalid_body", None),
        ({"content": b"[" * 100_000, "headers": JSON}, 400, "invalid_body", None),  # nested past any parser
        ({"json": {"question": "hi", "top_k": "5"}}, 400, "invalid_value", "top_k"),  # a wrong type, not 5
        ({"json": {"question": "hi", "top_k": True}}, 400, "invalid_value", "top_k"),  # nor 1
        ({"json": {"question": "hi", "stream": "yes"}}, 400, "invalid_value", "stream"),
        ({"json": {"question": "hi", "collection": ""}}, 400, "invalid_value", "collection"),  # not the default
        ({"json": {"question": "hi", "filters": {"title": 5}}}, 400, "invalid_value", "filters.title"),
    ],
)  # fmt: skip
def test_bad_requests(client: TestClient, kwargs: dict, status: int, code: str, param: str | None) -> None:  # type: ignore[type-arg]
    _assert_error(client.post("/v1/query", **kwargs), status, code, param)


def test_messages_say_what_to_do(client: TestClient) -> None:
    for kwargs in ({}, {"content": b'{"question": "hi"}', "headers": {"content-type": "text/plain"}}):
        assert "Content-Type: application/json" in client.post("/v1/query", **kwargs).json()["error"]["message"]
    as_text = client.post("/v1/query", content=b'{"question": "hi"}', headers={"content-type": "text/plain"})
    assert as_text.json()["error"]["message"].startswith(
        "request body was sent as 'text/plain'"
    )  # not "must be an object"
    latin1 = client.post("/v1/query", content='{"question": "caf\u00e9?"}'.encode("latin-1"), headers=JSON)
    assert "not UTF-8" in latin1.json()["error"]["message"], latin1.text
    nul = client.post("/v1/query", json={"question": "hi\u0000"}).json()["error"]["message"]
    assert nul.startswith("question holds a NUL") and "remove it" in nul  # no pydantic "Value error, "
    unknown = client.post("/v1/query", json={"question": "hi", "collection": "nope"}).json()["error"]["message"]
    assert "rag ingest" in unknown and str(client.app.state.settings.data_dir) not in unknown  # type: ignore[attr-defined]


def test_every_body_refuses_text_no_store_can_keep(client: TestClient) -> None:
    surrogate = '"gift \\ud800 cards"'
    bodies = {
        "/v1/chat/completions": f'{{"model": "default", "messages": [{{"role": "user", "content": {surrogate}}}]}}',
        "/v1/jobs": f'{{"questions": [{{"question": {surrogate}}}]}}',
        "/v1/feedback": f'{{"answer_id": "a", "rating": "down", "reason": {surrogate}}}',
        "/v1/curated": f'{{"question": {surrogate}, "answer": "Yes."}}',
    }
    for route, body in bodies.items():
        response = client.post(route, content=body.encode(), headers=JSON)
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_text", (
            route,
            response.text,
        )
    for body in ({"model": "", "messages": [{"role": "user", "content": "hi"}]},
                 {"model": "default", "stream": "yes", "messages": [{"role": "user", "content": "hi"}]},
                 {"model": "default", "max_tokens": "5", "messages": [{"role": "user", "content": "hi"}]},
                 {"model": "default", "n": 3, "messages": [{"role": "user", "content": "hi"}]}):  # fmt: skip
        assert client.post("/v1/chat/completions", json=body).status_code == 400, body


def test_health_answers_head_and_cache_admin_names_a_real_collection(client: TestClient) -> None:
    assert client.head("/healthz").status_code == 200 and client.head("/readyz").status_code == 200
    widget = client.head("/widget.js")
    assert widget.status_code == 200 and widget.headers["content-type"].startswith("text/javascript")
    _assert_error(client.delete("/v1/cache", params={"collection": "nope"}), 404, "collection_not_found", "collection")
    _assert_error(client.delete("/v1/cache", params={"collection": "../x"}), 400, "invalid_request", "collection")
    _assert_error(client.get("/v1/admin/report", params={"collection": "../x"}), 400, "invalid_request", "collection")
    nope = client.get("/v1/admin/report", params={"collection": "nope"})  # not a report of zeros
    _assert_error(nope, 404, "collection_not_found", "collection")


def test_a_nul_in_the_url_is_a_400_not_a_database_error(client: TestClient) -> None:
    _assert_error(client.get("/v1/jobs/ab%00cd"), 400, "invalid_request")
    _assert_error(client.get("/v1/curated", params={"collection": "a\x00b"}), 400, "invalid_request")


def test_unknown_route_and_method(client: TestClient) -> None:
    _assert_error(client.get("/v1/nope"), 404, "not_found")
    _assert_error(client.get("/v1/query"), 405, "method_not_allowed")


def test_dead_backend_is_503_and_cached_answers_still_serve(
    broken_client: TestClient, example_data_dir: Path, embedder
) -> None:  # type: ignore[no-untyped-def]
    response = broken_client.post("/v1/query", json={"question": "How long do refunds take?"})
    _assert_error(response, 503, "backend_unavailable")
    assert "connection refused" in response.json()["error"]["message"]
    # An answer cached for this backend's scope is still served while it is down.
    pipeline = broken_client.app.state.pipeline  # type: ignore[attr-defined]
    index = pipeline.get_index("default")
    question = "Do you offer gift wrapping?"
    pipeline.cache.put(
        pipeline.cache_scope(index, pipeline.settings.top_k),
        question,
        embedder.embed_batch([question])[0],
        {"answer": "cached", "citations": [], "index_version": index.version},
    )
    ok = broken_client.post("/v1/query", json={"question": "do you offer gift wrapping"})
    assert ok.status_code == 200 and ok.json()["answer"] == "cached"


def test_readyz_reports_each_collection_and_needs_no_default(tmp_path: Path, corpus: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    from ingest.runner import ingest

    settings = make_settings(tmp_path / "data", backend="extractive")
    ingest([corpus], "support", settings, embedder, progress=False)  # no collection called "default"
    with TestClient(create_app(settings, build_pipeline(settings, embedder))) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["status"] == "ready" and body["default_collection"] is None
        assert list(body["collections"]) == ["support"] and body["collections"]["support"]["chunks"] > 10
    # A collection whose index cannot be read makes the service not ready, and says which.
    ingest([corpus], "legacy", settings, embedder, progress=False)
    legacy = tmp_path / "data" / "collections" / "legacy"
    (legacy / (legacy / "CURRENT").read_text().strip() / "meta.json").write_text('{"format_version": 1}')
    with TestClient(create_app(settings, build_pipeline(settings, embedder))) as c:
        response = c.get("/readyz")
        _assert_error(response, 503, "not_ready")
        assert (
            "legacy: " in response.json()["error"]["message"] and "support" not in response.json()["error"]["message"]
        )


def test_readyz_is_503_before_anything_is_ingested(tmp_path: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, backend="extractive")
    with TestClient(create_app(settings, build_pipeline(settings, embedder))) as c:
        response = c.get("/readyz")
        _assert_error(response, 503, "not_ready")
        assert "rag ingest" in response.json()["error"]["message"]
        assert c.get("/healthz").status_code == 200

"""API keys, tenants and limits, over real HTTP on 127.0.0.1: each test tries to cross a
boundary (another tenant's collection, cached answer or job; an admin route; a limit)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli.serve import bind_address
from ingest.runner import ingest
from serving.keys import KeyStore

from .conftest import EXAMPLES, make_settings
from .servers import serving

BETA_DOC = """# Refunds at Beta Outdoor

Beta Outdoor refunds returned tents within 30 days. Refunds take 2 business days to reach your card.
Camping stoves cannot be returned once used.
"""

QUESTION = "How long do refunds take?"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> dict[str, Any]:
    """Two collections (alpha: the example help centre, beta: another shop) and three keys."""
    data_dir = tmp_path_factory.mktemp("data")
    docs = tmp_path_factory.mktemp("docs")
    shutil.copytree(EXAMPLES, docs / "alpha")
    (docs / "beta").mkdir()
    (docs / "beta" / "refunds.md").write_text(BETA_DOC)
    settings = make_settings(data_dir)
    ingest([docs / "alpha"], "alpha", settings, embedder, progress=False)
    ingest([docs / "beta"], "beta", settings, embedder, progress=False)
    store = KeyStore(data_dir)
    keys = {
        "a": store.create(["alpha"], name="shop a")[0],
        "b": store.create(["beta"])[0],
        "admin": store.create([], admin=True)[0],
        "widget": store.create(["alpha"], name="widget", public=True)[0],
    }
    store.close()
    return {"data_dir": data_dir, "keys": keys}


@pytest.fixture(scope="module")
def service(tenants: dict[str, Any], embedder: Any) -> Iterator[str]:
    with serving(tenants["data_dir"], embedder, backend="extractive", collection="alpha") as url:
        yield url


def client(url: str, key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url, headers=headers, timeout=30)


def ask(http: httpx.Client, collection: str, question: str = QUESTION, **extra: Any) -> httpx.Response:
    return http.post("/v1/query", json={"question": question, "collection": collection, **extra})


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code, error
    return error  # type: ignore[no-any-return]


def test_without_a_key_only_health_and_the_widget_answer(service: str) -> None:
    with client(service) as http:
        error = assert_error(ask(http, "alpha"), 401, "invalid_api_key")
        assert "Authorization: Bearer" in error["message"]
        assert http.post("/v1/query", json={"question": QUESTION}).headers["www-authenticate"] == "Bearer"
        assert_error(http.get("/v1/models"), 401, "invalid_api_key")
        assert_error(http.get("/metrics"), 401, "invalid_api_key")
        assert_error(http.post("/v1/jobs", json={"questions": [{"question": QUESTION}]}), 401, "invalid_api_key")
        assert http.get("/healthz").status_code == 200
        assert http.get("/widget.js").status_code == 200
        ready = http.get("/readyz").json()
        assert ready["status"] == "ready" and "collections" not in ready  # no tenant names to strangers
    with client(service, "rk_00000000_not-a-real-key") as http:
        assert_error(ask(http, "alpha"), 401, "invalid_api_key")
    with client(service, "Basic abc") as http:
        assert_error(ask(http, "alpha"), 401, "invalid_api_key")


def test_refusals_are_counted_under_their_route(service: str, tenants: dict[str, Any]) -> None:
    """A 401 is answered before routing; a dashboard per route still sees it under its route."""
    with client(service) as http:
        assert_error(ask(http, "alpha"), 401, "invalid_api_key")
    with client(service, tenants["keys"]["admin"]) as http:
        metrics = http.get("/metrics").text
    refused = [
        line for line in metrics.splitlines() if line.startswith("rag_http_requests_total{") and 'status="401"' in line
    ]
    assert any('route="/v1/query"' in line for line in refused), refused


def test_the_api_docs_page_loads_from_the_service_not_a_cdn(service: str) -> None:
    """/docs works on a host with no internet: Swagger UI's script and style come from the
    service itself, without a key (like the schema); nothing else under /docs opens up."""
    with client(service) as http:
        page = http.get("/docs")
        assert page.status_code == 200 and "cdn." not in page.text and "https://" not in page.text
        assets = re.findall(r'(?:src|href)="(/docs/static/[^"]+)"', page.text)
        assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
        for asset in assets:
            served = http.get(asset)
            assert served.status_code == 200 and len(served.content) > 1000, asset
        assert "openapi" in http.get("/openapi.json").json()
        assert http.get("/redoc").status_code in (401, 404)  # its page would load from a CDN


def test_readyz_shows_collection_names_and_versions_to_an_admin_key_only(service: str, tenants: dict[str, Any]) -> None:
    keys = tenants["keys"]
    for key in (keys["a"], "rk_00000000_not-a-real-key"):
        with client(service, key) as http:
            ready = http.get("/readyz").json()
            assert ready["status"] == "ready" and "collections" not in ready and ready["collection_count"] >= 2
    with client(service, keys["admin"]) as http:  # an operator's probe sees what serves
        ready = http.get("/readyz").json()
        assert {"alpha", "beta"} <= set(ready["collections"]), ready
        assert all(c["index_version"] and c["version"].startswith("v") for c in ready["collections"].values())


def test_a_key_reaches_only_its_collections(service: str, tenants: dict[str, Any]) -> None:
    keys = tenants["keys"]
    with client(service, keys["a"]) as http:
        assert ask(http, "alpha").status_code == 200
        assert http.post("/v1/query", json={"question": QUESTION}).status_code == 200  # the default: alpha
        assert_error(ask(http, "beta"), 403, "permission_denied")
        assert_error(ask(http, "beta", stream=True), 403, "permission_denied")
        chat = {"model": "beta", "messages": [{"role": "user", "content": QUESTION}]}
        assert_error(http.post("/v1/chat/completions", json=chat), 403, "permission_denied")
        assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["alpha"]
    with client(service, keys["b"]) as http:
        # A key for one collection means it when the request names none (not the service's default).
        mine = http.post("/v1/query", json={"question": "Can I return a camping stove?"})
        assert mine.status_code == 200 and mine.json()["collection"] == "beta", mine.text
        assert "Camping stoves cannot be returned once used" in mine.json()["answer"], mine.text
        assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["beta"]
    with client(service, keys["admin"]) as http:
        assert sorted(m["id"] for m in http.get("/v1/models").json()["data"]) == ["alpha", "beta"]


def test_an_answer_cached_for_one_tenant_is_never_served_to_another(service: str, tenants: dict[str, Any]) -> None:
    keys = tenants["keys"]
    question = "How many days do refunds take to arrive?"
    with client(service, keys["a"]) as http:
        first = ask(http, "alpha", question).json()
        again = ask(http, "alpha", question).json()
    assert again["cache"]["hit"] and again["answer"] == first["answer"]
    with client(service, keys["b"]) as http:
        other = ask(http, "beta", question).json()
    assert not other["cache"]["hit"]
    assert {c["document_id"] for c in other["citations"]} == {"refunds.md"}
    assert other["answer"] != first["answer"]


def test_admin_routes_need_an_admin_key(service: str, tenants: dict[str, Any]) -> None:
    keys = tenants["keys"]
    with client(service, keys["a"]) as http:
        assert_error(http.get("/v1/cache/stats"), 403, "permission_denied")
        assert_error(http.delete("/v1/cache"), 403, "permission_denied")
        assert_error(http.get("/metrics"), 403, "permission_denied")
        # refused before any lookup: the answer says nothing of whether the vote exists
        assert_error(http.post("/v1/curated/from-feedback", json={"feedback_id": "nope"}), 403, "permission_denied")
        assert_error(http.delete("/v1/answers/nope"), 403, "permission_denied")  # an erasure request
    with client(service, keys["admin"]) as http:
        assert_error(http.delete("/v1/answers/nope"), 404, "not_found")
        assert http.get("/v1/cache/stats").status_code == 200
        assert http.get("/metrics").status_code == 200
        assert http.delete("/v1/cache", params={"collection": "beta"}).status_code == 200


def test_jobs_are_seen_only_by_their_owner_and_admins(service: str, tenants: dict[str, Any]) -> None:
    keys = tenants["keys"]
    with client(service, keys["a"]) as http:
        job = http.post("/v1/jobs", json={"questions": [{"question": QUESTION}], "collection": "alpha"}).json()
        assert http.get(f"/v1/jobs/{job['id']}").status_code == 200
    with client(service, keys["b"]) as http:
        assert_error(http.get(f"/v1/jobs/{job['id']}"), 404, "not_found")
        body = {"questions": [{"question": QUESTION}], "collection": "alpha"}
        assert_error(http.post("/v1/jobs", json=body), 403, "permission_denied")
    with client(service, keys["admin"]) as http:
        seen = http.get(f"/v1/jobs/{job['id']}").json()
        assert seen["id"] == job["id"] and "owner" not in seen
    # Deleting it: another tenant's key finds nothing to delete; its owner's key deletes it.
    with client(service, keys["b"]) as http:
        assert_error(http.delete(f"/v1/jobs/{job['id']}"), 404, "not_found")
    with client(service, keys["a"]) as http:
        gone = http.delete(f"/v1/jobs/{job['id']}")
        assert gone.status_code == 200 and gone.json() == {"id": job["id"], "deleted": True}, gone.text
        assert_error(http.get(f"/v1/jobs/{job['id']}"), 404, "not_found")
        assert_error(http.delete(f"/v1/jobs/{job['id']}"), 404, "not_found")


def test_a_revoked_key_stops_working(tenants: dict[str, Any], service: str) -> None:
    store = KeyStore(tenants["data_dir"])
    key, info = store.create(["alpha"])
    with client(service, key) as http:
        assert ask(http, "alpha").status_code == 200
        assert store.revoke(info.id)
        time.sleep(2.2)  # the service remembers a key for 2 s
        assert_error(ask(http, "alpha"), 401, "invalid_api_key")
    store.close()


def test_a_refused_body_still_gets_its_413(service: str) -> None:
    """The fuzzer's find: the 413 went out before the body was read, and closing a socket with
    unread data in it sends a reset that destroys the 413 on its way. Here the reset is made
    certain: the client pauses half-way through its body before reading the answer."""
    host, port = service.removeprefix("http://").split(":")
    body = b"{" + b" " * 2_999_998 + b"}"
    head = f"POST /v1/query HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode() + body[:1_000_000])
        time.sleep(0.5)  # without the drain the service has answered and closed by now
        sock.sendall(body[1_000_000:])
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status, _, rest = reply.partition(b"\r\n")
    assert status == b"HTTP/1.1 413 Request Entity Too Large"
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_too_large"


def test_request_limits_get_clear_4xx(service: str, tenants: dict[str, Any]) -> None:
    with client(service, tenants["keys"]["a"]) as http:
        huge = http.post(
            "/v1/query", content=b"{" + b" " * 3_000_000 + b"}", headers={"Content-Type": "application/json"}
        )
        assert_error(huge, 413, "request_too_large")

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield b'{"question": "'
            for _ in range(40):
                yield b"x" * 100_000
            yield b'"}'

        assert_error(http.post("/v1/query", content=chunks(), headers=JSON), 413, "request_too_large")
        long_question = assert_error(ask(http, "alpha", "why " * 1000), 400, "invalid_request")
        assert long_question["param"] == "question" and "RAG_MAX_QUESTION_CHARS" in long_question["message"]
        history = [{"role": "user", "content": "hi"}] * 51
        too_long = assert_error(ask(http, "alpha", history=history), 400, "invalid_request")
        assert too_long["param"] == "history"
        for top_k in (0, 51):
            assert_error(ask(http, "alpha", top_k=top_k), 400, "invalid_value")
        many = assert_error(ask(http, "alpha", filters={"title": ["a"] * 300_000}), 400, "invalid_value")
        assert "filters" in many["param"]  # one SQL parameter each: a 500 before


def test_rate_limit_per_key_answers_429_with_retry_after(tenants: dict[str, Any], embedder: Any) -> None:
    keys = tenants["keys"]
    with serving(tenants["data_dir"], embedder, backend="extractive", rate_limit="3/minute") as url:
        with client(url, keys["a"]) as http:
            assert [ask(http, "alpha").status_code for _ in range(3)] == [200, 200, 200]
            limited = ask(http, "alpha")
            assert_error(limited, 429, "rate_limit_exceeded")
            assert 1 <= int(limited.headers["retry-after"]) <= 60
        with client(url, keys["b"]) as http:  # another key has its own budget
            assert ask(http, "beta").status_code == 200


def test_concurrent_requests_per_key_are_bounded(tenants: dict[str, Any], embedder: Any) -> None:
    import threading

    from .fake_vllm import fake_vllm
    from .servers import running_server

    keys = tenants["keys"]
    hung = fake_vllm("hang")  # a backend that never answers: the first request holds its slot
    with (
        running_server(hung) as backend,
        serving(tenants["data_dir"], embedder, backend="vllm", vllm_url=backend, max_concurrent_per_key=1) as url,
    ):
        results: list[int] = []
        with client(url, keys["a"]) as first:
            holder = threading.Thread(target=lambda: results.append(ask(first, "alpha").status_code))
            holder.start()
            deadline = time.monotonic() + 20
            while hung.state.requests < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert hung.state.requests == 1
            with client(url, keys["a"]) as second:
                busy = ask(second, "alpha")
                assert_error(busy, 429, "too_many_concurrent_requests")
                assert busy.headers["retry-after"] == "1"
            with client(url, keys["b"]) as other:
                assert other.get("/v1/models").status_code == 200
            hung.state.mode = "ok"  # the hung request ends (a 503: its backend failed it)
            holder.join(30)
            assert len(results) == 1
            with client(url, keys["a"]) as again:
                assert again.get("/v1/models").status_code == 200  # the slot came back


def test_a_slow_body_holds_no_slot_and_gets_a_408(tenants: dict[str, Any], embedder: Any) -> None:
    """A client that opens a request and sends its body slowly (or never) must not hold its key's
    in-flight slots: with a key in a web page, anyone could shut out every customer."""
    keys = tenants["keys"]
    with serving(
        tenants["data_dir"], embedder, backend="extractive", max_concurrent_per_key=1, body_timeout_s=2.0,
        max_concurrent_per_visitor=2,
    ) as url:  # fmt: skip
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=15) as slow:
            head = (
                f"POST /v1/query HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {keys['widget']}\r\n"
                "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            )
            slow.sendall(head.encode() + b'{"question": "How lo')
            time.sleep(0.3)
            with client(url, keys["widget"]) as customer:  # the key's only slot is free meanwhile
                assert ask(customer, "alpha").status_code == 200
                # Bodies arriving at once are bounded too (memory): per visitor as many as in flight (2 here).
                with socket.create_connection((host, int(port)), timeout=15) as second:
                    second.sendall(head.encode() + b'{"question": "How lo')
                    time.sleep(0.3)
                    busy = assert_error(ask(customer, "alpha"), 429, "too_many_concurrent_requests")
                    assert "bodies still arriving for this visitor" in busy["message"]
            status = slow.recv(65536).split(b"\r\n", 1)[0]
        assert b" 408 " in status, status


def test_a_public_key_is_limited_per_visitor_and_cannot_run_jobs(tenants: dict[str, Any], embedder: Any) -> None:
    keys = tenants["keys"]
    with serving(tenants["data_dir"], embedder, backend="extractive", visitor_rate_limit="2/minute") as url:
        with client(url, keys["widget"]) as widget:
            assert [ask(widget, "alpha").status_code for _ in range(2)] == [200, 200]
            limited = assert_error(ask(widget, "alpha"), 429, "rate_limit_exceeded")
            assert "this visitor" in limited["message"]
            # Another visitor (a proxy on this host says who) still has their own budget.
            other = widget.post(
                "/v1/query",
                json={"question": QUESTION, "collection": "alpha"},
                headers={"X-Forwarded-For": "203.0.113.9"},
            )
            assert other.status_code == 200, other.text
            job = widget.post(
                "/v1/jobs",
                json={"collection": "alpha", "questions": [{"question": QUESTION}]},
                headers={"X-Forwarded-For": "203.0.113.10"},
            )
            assert "--public" in assert_error(job, 403, "permission_denied")["message"]
        with client(url, keys["a"]) as server_side:  # a key kept on a server: no per-visitor limit, jobs
            assert [ask(server_side, "alpha").status_code for _ in range(3)] == [200, 200, 200]
            assert server_side.post("/v1/jobs", json={"collection": "alpha", "questions": []}).status_code in (202, 400)


def test_a_public_keys_thumbs_down_hands_a_curated_answer_over_without_unpublishing_it(
    tenants: dict[str, Any], tmp_path: Path, embedder: Any
) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(tenants["data_dir"], data_dir)
    keys = tenants["keys"]
    pinned = "Refunds reach your card 5 to 7 business days after we receive the return."
    with serving(data_dir, embedder, backend="extractive", collection="alpha") as url:
        with client(url, keys["admin"]) as admin:
            body = {
                "collection": "alpha",
                "question": QUESTION,
                "answer": pinned,
                "document_ids": ["returns-and-refunds.md"],
            }
            assert admin.post("/v1/curated", json=body).status_code in (200, 201)
        with client(url, keys["widget"]) as widget:
            served = ask(widget, "alpha").json()
            assert served["answer_kind"] == "curated", served
            vote = widget.post("/v1/feedback", json={"answer_id": served["answer_id"], "rating": "down"}).json()
            assert vote["needs_human"] == "thumbs_down" and vote["evicted"] == 0, vote
            again = ask(widget, "alpha").json()
            assert again["answer_kind"] == "curated" and again["answer"] == pinned, again
        with client(url, keys["a"]) as server_side:  # a server's key speaks for the business: review
            served = ask(server_side, "alpha").json()
            vote = server_side.post("/v1/feedback", json={"answer_id": served["answer_id"], "rating": "down"}).json()
            assert vote["evicted"] == 1, vote
            assert ask(server_side, "alpha").json()["answer_kind"] != "curated"


def test_a_right_key_gets_in_from_an_address_past_its_failure_limit(tenants: dict[str, Any], embedder: Any) -> None:
    """Wrong keys from one address are refused with 429 past the limit, but a right key in use from
    the same address (an office, a carrier's NAT: many customers) still works; a key not seen
    lately is not looked up from there."""
    keys = tenants["keys"]
    with serving(tenants["data_dir"], embedder, backend="extractive", auth_failure_limit="2/minute") as url:
        with client(url, keys["widget"]) as customer:  # the widget's key is in use (by customers elsewhere)
            assert customer.get("/v1/models").status_code == 200
        for n in range(2):
            with client(url, f"rk_dead{n}_nothing") as wrong:
                assert_error(wrong.get("/v1/models"), 401, "invalid_api_key")
        with client(url, "rk_dead9_nothing") as wrong:
            assert_error(wrong.get("/v1/models"), 429, "too_many_failures")
        with client(url, keys["widget"]) as right:
            assert right.get("/v1/models").status_code == 200
        with client(url, keys["b"]) as unseen:  # right, but this process has not seen it: no lookup from here
            assert_error(unseen.get("/v1/models"), 429, "too_many_failures")


def test_without_keys_the_service_binds_to_loopback_only() -> None:
    host, message = bind_address("0.0.0.0", active_keys=0)
    assert host == "127.0.0.1" and "rag keys create" in message
    assert bind_address("127.0.0.1", active_keys=0)[0] == "127.0.0.1"
    assert bind_address("0.0.0.0", active_keys=2) == ("0.0.0.0", "API keys required (2 active); listening on 0.0.0.0")


def test_keys_are_stored_only_as_hashes(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    key, info = store.create(["alpha"])
    assert store.lookup(key) is not None and store.lookup(key + "x") is None
    store.close()
    assert key.encode() not in (tmp_path / "keys.sqlite").read_bytes()
    assert key.split("_", 2)[2].encode() not in (tmp_path / "keys.sqlite").read_bytes()
    assert json.dumps(info.collections) == '["alpha"]'


def test_a_key_store_from_before_public_keys_keeps_its_keys(tmp_path: Path) -> None:
    import sqlite3

    old = KeyStore(tmp_path)
    key, _ = old.create(["alpha"])
    old.close()
    with sqlite3.connect(tmp_path / "keys.sqlite") as db:  # the table as it was made before
        db.execute("ALTER TABLE keys DROP COLUMN public")
    store = KeyStore(tmp_path)
    found = store.lookup(key)
    assert found is not None and not found.public and found.collections == frozenset({"alpha"})
    public_key, info = store.create(["alpha"], public=True)
    assert info.public and store.lookup(public_key).public  # type: ignore[union-attr]
    assert [k.public for k in store.list()] == [False, True]
    store.close()


def test_without_keys_everything_is_open_on_loopback(example_data_dir: Path, embedder: Any) -> None:
    with serving(example_data_dir, embedder, backend="extractive") as url, client(url) as http:
        assert http.post("/v1/query", json={"question": QUESTION}).status_code == 200
        assert http.get("/v1/cache/stats").status_code == 200
        assert "collections" in http.get("/readyz").json()


def test_revoking_the_last_key_locks_the_service_never_opens_it(tmp_path: Path, embedder: Any) -> None:
    """A service that had keys (so it may listen on every interface) must not fall back to
    anonymous admin access when its keys are all revoked."""
    shutil.copytree(EXAMPLES, tmp_path / "docs")
    ingest([tmp_path / "docs"], "default", make_settings(tmp_path / "data"), embedder, progress=False)
    store = KeyStore(tmp_path / "data")
    key, info = store.create([], admin=True)
    with serving(tmp_path / "data", embedder, backend="extractive") as url, client(url) as anonymous:
        assert_error(anonymous.get("/v1/cache/stats"), 401, "invalid_api_key")
        assert store.revoke(info.id)
        time.sleep(2.2)  # past the service's memory of keys
        assert_error(anonymous.get("/v1/cache/stats"), 401, "invalid_api_key")
        assert_error(anonymous.delete("/v1/cache"), 401, "invalid_api_key")
        with client(url, key) as revoked:
            assert_error(revoked.get("/v1/cache/stats"), 401, "invalid_api_key")
    # A process that never saw the key active (a restart, another worker) is locked too.
    with serving(tmp_path / "data", embedder, backend="extractive") as url, client(url) as anonymous:
        assert_error(anonymous.get("/v1/cache/stats"), 401, "invalid_api_key")
    assert bind_address("0.0.0.0", active_keys=0, created_keys=1)[0] == "0.0.0.0"  # locked: no need to hide
    store.close()


def test_the_openai_client_and_rag_client_send_the_key(service: str, tenants: dict[str, Any]) -> None:
    import openai

    from rag.client import RagClient, RagClientError

    keyed = openai.OpenAI(base_url=f"{service}/v1", api_key=tenants["keys"]["a"])
    reply = keyed.chat.completions.create(model="alpha", messages=[{"role": "user", "content": QUESTION}])
    assert reply.choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError):
        keyed.chat.completions.create(model="beta", messages=[{"role": "user", "content": QUESTION}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{service}/v1", api_key="unused").models.list()
    with RagClient(service, api_key=tenants["keys"]["b"]) as rag:
        assert rag.query(QUESTION, collection="beta").citations
        with pytest.raises(RagClientError) as denied:
            rag.query(QUESTION, collection="alpha")
        assert denied.value.status == 403


def test_a_visitor_is_its_address_or_its_ipv6_slash_64() -> None:
    from serving.auth import visitor_of

    assert visitor_of("k", "2001:db8::1") == visitor_of("k", "2001:db8::ffff:1")  # one subscriber's /64
    assert visitor_of("k", "2001:db8:0:1::1") != visitor_of("k", "2001:db8::1")
    assert visitor_of("k", "::ffff:10.0.0.1") == visitor_of("k", "10.0.0.1")
    assert visitor_of("k", "10.0.0.1") != visitor_of("k", "10.0.0.2") and visitor_of("j", "10.0.0.1") != visitor_of(
        "k", "10.0.0.1"
    )


async def test_a_slow_key_store_is_never_asked_on_the_event_loop(tmp_path: Path) -> None:
    """Fault injection (a key store slower than the key memory, as PostgreSQL under load): the
    lookup runs in a worker thread, once, never again on the event loop that serves every
    other request."""
    import threading

    from serving.auth import Authenticator

    store = KeyStore(tmp_path)
    key, _ = store.create(["default"], name="bot")
    loop_thread = threading.get_ident()
    asked: list[tuple[str, bool]] = []

    class Slow:
        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

        def created(self) -> int:
            asked.append(("created", threading.get_ident() == loop_thread))
            time.sleep(0.6)
            return store.created()

        def lookup(self, token: str) -> Any:
            asked.append(("lookup", threading.get_ident() == loop_thread))
            time.sleep(0.6)  # longer than the Authenticator's memory (ttl_s 0.5)
            return store.lookup(token)

    auth = Authenticator(Slow())  # type: ignore[arg-type]
    assert await auth.enabled_async()  # what the middleware asks first
    principal = await auth.authenticate_async(f"Bearer {key}")
    assert principal.collections == frozenset({"default"})
    assert asked == [("created", False), ("lookup", False)]  # each once, off the loop

"""The support loop's first half: every answer has an id, feedback on it is kept per
collection, a thumbs-down takes the answer out of the cache at once (every replica sharing
it) and keeps it out until its documents change, and answers that need a person say so (a
field, a header on the OpenAI face, and a webhook retried with backoff)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest.runner import ingest
from rag.pipeline import build_pipeline
from serving.app import create_app

from .conftest import EXAMPLES, make_settings
from .servers import running_server, wait_for_version

QUESTION = "How long do refunds take?"
REWORDED = "How long does a refund take?"


def ask(url: str, question: str, **extra: Any) -> dict[str, Any]:
    response = httpx.post(f"{url}/v1/query", json={"question": question, **extra}, timeout=60)
    assert response.status_code == 200, response.text
    return dict(response.json())


def rate(url: str, answer_id: str, rating: str, **extra: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/feedback", json={"answer_id": answer_id, "rating": rating, **extra}, timeout=30)


class _Webhook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]]
    fail_first: int

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if type(self).fail_first > 0:
            type(self).fail_first -= 1
            self.send_response(503)  # the help desk is away for a moment: retried
        else:
            type(self).received.append(body)
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def webhook() -> Iterator[tuple[str, type[_Webhook]]]:
    handler = type("Hook", (_Webhook,), {"received": [], "fail_first": 1})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/handoff", handler
    finally:
        server.shutdown()
        server.server_close()


def test_thumbs_down_evicts_the_answer_and_keeps_it_out_until_its_document_changes(
    tmp_path: Path, corpus: Path, embedder: Any
) -> None:
    settings = make_settings(tmp_path / "data", backend="extractive", index_poll_s=0.1)
    ingest([corpus], "default", settings, embedder, progress=False)
    app = create_app(settings, build_pipeline(settings, embedder))
    with running_server(app) as url:
        first = ask(url, QUESTION)
        assert len(first["answer_id"]) == 32 and first["needs_human"] is None
        assert ask(url, REWORDED)["cache"]["kind"] == "semantic"  # the cache serves it to a rewording
        down = rate(url, first["answer_id"], "down", reason="Refunds took three weeks for me.")
        assert down.status_code == 200, down.text
        assert down.json()["needs_human"] == "thumbs_down" and down.json()["evicted"] >= 1
        for question in (QUESTION, REWORDED, "how long do refunds take"):
            again = ask(url, question)
            assert not again["cache"]["hit"], (question, again)  # answered afresh, never from the cache
        assert not ask(url, REWORDED)["cache"]["hit"]  # and the fresh answer was not let back in
        stored = app.state.support.feedback(collection="default")
        assert [(f.rating, f.reason) for f in stored] == [("down", "Refunds took three weeks for me.")]
        blocks = httpx.get(f"{url}/v1/cache/blocks", timeout=30).json()["data"]
        assert [b["question"] for b in blocks] == [QUESTION] and blocks[0]["id"] == stored[0].block_id

        # The refunds page changes: its chunks are new, so the next answer is new evidence.
        page = corpus / "returns-and-refunds.md"
        page.write_text(page.read_text().replace("5 to 7 business days", "3 to 5 business days"))
        wait_for_version(url, ingest([corpus], "default", settings, embedder, progress=False).version)
        fresh = ask(url, QUESTION)
        assert "3 to 5 business days" in fresh["answer"] and not fresh["cache"]["hit"], fresh
        assert ask(url, QUESTION)["cache"]["kind"] == "exact"  # the new answer is cached

        # Voted down too; then an admin approves it after all: it may be cached again.
        assert rate(url, fresh["answer_id"], "down").json()["evicted"] >= 1
        assert not ask(url, QUESTION)["cache"]["hit"] and not ask(url, QUESTION)["cache"]["hit"]
        blocks = httpx.get(f"{url}/v1/cache/blocks", params={"collection": "default"}, timeout=30).json()["data"]
        assert len(blocks) == 2 and blocks[0]["answer"] == fresh["answer"]  # newest first
        assert httpx.delete(f"{url}/v1/cache/blocks/{blocks[0]['id']}", timeout=30).status_code == 200
        assert httpx.delete(f"{url}/v1/cache/blocks/{blocks[0]['id']}", timeout=30).status_code == 404
        ask(url, QUESTION)
        assert ask(url, QUESTION)["cache"]["kind"] == "exact"


def test_votes_on_semantic_hits_either_way_are_evidence_for_the_wrong_hit_estimate(
    tmp_path: Path, corpus: Path, embedder: Any
) -> None:
    settings = make_settings(tmp_path / "data", backend="extractive", cache_audit_rate=0.0)
    ingest([corpus], "default", settings, embedder, progress=False)
    with running_server(create_app(settings, build_pipeline(settings, embedder))) as url:

        def evidence() -> tuple[int, int]:
            stats = httpx.get(f"{url}/v1/cache/stats", timeout=30).json()["wrong_hits"].get("default", {})
            return stats.get("audited_hits", 0), stats.get("wrong_hits", 0)

        miss = ask(url, QUESTION)
        assert rate(url, miss["answer_id"], "up").status_code == 200
        assert evidence() == (0, 0)  # a vote on a fresh answer says nothing about the cache
        hit = ask(url, REWORDED)
        assert hit["cache"]["kind"] == "semantic", hit
        with ThreadPoolExecutor(2) as pool:  # a double click: two votes at once, counted once
            assert [r.status_code for r in pool.map(lambda _: rate(url, hit["answer_id"], "up"), "ab")] == [200, 200]
        assert evidence() == (1, 0)
        assert rate(url, hit["answer_id"], "up").status_code == 200  # the same vote again: counted once
        assert evidence() == (1, 0)
        assert rate(url, hit["answer_id"], "down").status_code == 200  # the customer changed their mind
        assert evidence() == (1, 1)  # the same hit, now wrong: not one more
        for vote in ("down", "up"):  # repeated, or changed back: the hit stays wrong, counted once
            assert rate(url, hit["answer_id"], vote).status_code == 200
            assert evidence() == (1, 1)


def test_feedback_errors_and_tenants(tmp_path: Path, embedder: Any) -> None:
    from serving.keys import KeyStore

    settings = make_settings(tmp_path / "data", backend="extractive")
    ingest([EXAMPLES], "default", settings, embedder, progress=False)
    ingest([EXAMPLES], "other", settings, embedder, progress=False)
    keys = KeyStore(settings.data_dir)
    own, _ = keys.create(["default"])
    stranger, _ = keys.create(["other"])
    with running_server(create_app(settings, build_pipeline(settings, embedder))) as url:
        headers = {"Authorization": f"Bearer {own}"}
        answer = httpx.post(f"{url}/v1/query", json={"question": QUESTION}, headers=headers, timeout=60).json()
        for body, status in (
            ({"answer_id": answer["answer_id"], "rating": "sideways"}, 400),
            ({"answer_id": answer["answer_id"]}, 400),
            ({"answer_id": "f" * 32, "rating": "up"}, 404),
        ):
            response = httpx.post(f"{url}/v1/feedback", json=body, headers=headers, timeout=30)
            assert response.status_code == status, response.text
            assert set(response.json()["error"]) >= {"message", "type", "code"}  # the one error shape
        # A key of another tenant cannot see, let alone rate, this answer.
        other = rate_with(url, answer["answer_id"], stranger)
        assert other.status_code == 404, other.text
        assert rate_with(url, answer["answer_id"], own).status_code == 200


def rate_with(url: str, answer_id: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/feedback",
        json={"answer_id": answer_id, "rating": "up"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_answers_that_need_a_person_say_so_and_reach_the_webhook(
    tmp_path: Path, embedder: Any, webhook: tuple[str, Any]
) -> None:
    hook_url, hook = webhook
    settings = make_settings(tmp_path / "data", backend="extractive", handoff_webhook_url=hook_url)
    ingest([EXAMPLES], "default", settings, embedder, progress=False)
    with running_server(create_app(settings, build_pipeline(settings, embedder))) as url:
        unknown = "What is the airspeed velocity of an unladen swallow?"
        before = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi, how can I help?"}]
        chat = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "default", "messages": [*before, {"role": "user", "content": unknown}]},
            timeout=60,
        )
        assert chat.status_code == 200, chat.text
        assert chat.headers["X-RAG-Needs-Human"] == "no_answer" and chat.json()["rag"]["needs_human"] == "no_answer"
        good = ask(url, QUESTION)
        assert good["needs_human"] is None
        thumbs = rate(url, chat.json()["id"], "down", reason="I asked about birds", correction="About 11 m/s.")
        assert thumbs.status_code == 200, thumbs.text  # the completion id is the answer id
        deadline = time.monotonic() + 10
        while len(hook.received) < 2:  # the first POST got a 503 and was retried
            assert time.monotonic() < deadline, hook.received
            time.sleep(0.05)
        again = rate(url, chat.json()["id"], "down")  # a second thumbs-down: a person knows already
        assert again.status_code == 200 and again.json()["needs_human"] == "thumbs_down", again.text
    # Four handoffs go at once: the retried one may land after a later one.
    by_reason = {event["reason"]: event for event in hook.received}
    answer_id = chat.json()["id"].removeprefix("chatcmpl-")
    assert len(hook.received) == 2 and set(by_reason) == {"no_answer", "thumbs_down"}, hook.received
    assert {event["answer_id"] for event in hook.received} == {answer_id}
    assert by_reason["no_answer"]["question"] == unknown
    assert by_reason["no_answer"]["conversation"] == before
    # The vote sent no conversation: the one the answer was given in goes, with the vote's words.
    assert by_reason["thumbs_down"]["conversation"] == before
    assert by_reason["thumbs_down"]["feedback"] == {"reason": "I asked about birds", "correction": "About 11 m/s."}


async def test_a_handoff_the_help_desk_keeps_refusing_holds_up_no_other() -> None:
    """A webhook that answers one payload with 503 every time and another with 400: the 503
    is tried again with backoff, the 400 is given up at once, and the rest go meanwhile."""
    import asyncio

    from serving.handoff import Handoff

    received: list[str] = []

    class Desk(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            answer_id = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["answer_id"]
            received.append(answer_id)
            self.send_response({"stuck": 503, "bad": 400}.get(answer_id, 200))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Desk)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    handoff = Handoff(f"http://127.0.0.1:{server.server_address[1]}/", give_up_s=60)
    try:
        for answer_id in ("stuck", "bad", "ok"):
            handoff.notify({"answer_id": answer_id, "reason": "no_answer"})
        deadline = time.monotonic() + 5
        while not (handoff.sent == 1 and handoff.failed == 1 and received.count("stuck") >= 3):
            assert time.monotonic() < deadline, (received, handoff.sent, handoff.failed)
            await asyncio.sleep(0.05)
        assert received.count("bad") == 1 and received.count("ok") == 1  # a 4xx is not tried again
    finally:
        await handoff.aclose(timeout_s=0.1)  # "stuck" is logged as not sent
        server.shutdown()
        server.server_close()


def test_a_thumbs_down_evicts_on_every_replica_sharing_redis_within_a_second(
    tmp_path: Path, embedder: Any, redis_url: str, database_url: str
) -> None:
    """Two replicas (two apps, one Redis cache, one PostgreSQL store): the answer A gave is a
    hit on B; the thumbs-down sent to B is refused on A by the next request, well within 1 s."""
    overrides = {"backend": "extractive", "redis_url": redis_url, "redis_prefix": f"fb{time.time_ns()}:"}
    settings = make_settings(tmp_path / "data", database_url=database_url, **overrides)
    ingest([EXAMPLES], "default", settings, embedder, progress=False)
    a = create_app(settings, build_pipeline(settings, embedder))
    b = create_app(settings, build_pipeline(settings, embedder))
    with running_server(a) as url_a, running_server(b) as url_b:
        first = ask(url_a, QUESTION)
        assert ask(url_b, REWORDED)["cache"]["kind"] == "semantic"
        down = rate(url_b, first["answer_id"], "down")  # B finds A's answer in PostgreSQL
        assert down.status_code == 200 and down.json()["evicted"] >= 1, down.text
        started = time.monotonic()
        again = ask(url_a, REWORDED)
        assert time.monotonic() - started < 1.0 and not again["cache"]["hit"], again
        assert not ask(url_a, QUESTION)["cache"]["hit"] and not ask(url_b, QUESTION)["cache"]["hit"]
        import psycopg

        with psycopg.connect(database_url) as conn:
            rows = conn.execute("SELECT rating, collection FROM feedback WHERE answer_id = %s", (first["answer_id"],))
            assert rows.fetchall() == [("down", "default")]


def test_rag_bench_feedback_counts_every_vote_it_sent(tmp_path: Path) -> None:
    from eval.feedback_bench import run_feedback_bench

    fixtures = Path(__file__).parent / "fixtures"
    result = run_feedback_bench(
        fixtures / "covid_faq_slice.jsonl", fixtures / "covid_faq_queries_slice.jsonl",
        make_settings(tmp_path / "data"), rate=20, seconds=1.0, down_share=0.5,
    )  # fmt: skip
    assert result["sent"] == 20 and result["ok"] == 20 and result["stored"] == 20 and result["lost"] == 0, result


def test_feedback_when_the_support_store_cannot_write_is_a_503_that_says_so(tmp_path: Path, embedder: Any) -> None:
    """A full or read-only disk under the support store (SQLite refusing writes, as with
    `PRAGMA query_only`): the answer given before is still found, and the vote is a 503 that
    says what to do, not a 500."""
    settings = make_settings(tmp_path / "data", backend="extractive")
    ingest([EXAMPLES], "default", settings, embedder, progress=False)
    app = create_app(settings, build_pipeline(settings, embedder))
    with running_server(app) as url:
        answer = ask(url, QUESTION)
        app.state.support.flush()
        ask(url, "Do gift cards expire?")  # waiting to be written when the disk fills
        app.state.support.sql._conn.execute("PRAGMA query_only=1")
        try:
            vote = rate(url, answer["answer_id"], "down")
        finally:
            app.state.support.sql._conn.execute("PRAGMA query_only=0")
    assert vote.status_code == 503 and vote.json()["error"]["code"] == "storage_unavailable", vote.text
    assert "free disk space" in vote.json()["error"]["message"]


def test_a_thumbs_down_given_before_an_upgrade_keeps_the_answer_out_after_it(
    tmp_path: Path, corpus: Path, embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Releases up to 0.2.0 put their number in the cache scope, and kept their blocks under
    it. On the same data dir after an upgrade, an answer voted down before stays out of the
    cache (its block moved, listed once), and a vote on an answer the old release gave (a
    rolling deploy) takes this release's copy out too."""
    import sqlite3

    from rag.pipeline import Pipeline, scope_today

    settings = make_settings(tmp_path / "data", backend="extractive")
    ingest([corpus], "default", settings, embedder, progress=False)
    today = Pipeline.cache_scope
    monkeypatch.setattr(Pipeline, "cache_scope", lambda self, index, top_k: f"{today(self, index, top_k)}|0.2.0")
    monkeypatch.setattr("rag.pipeline.scope_today", lambda scope: scope)
    old = build_pipeline(settings, embedder)
    assert old.cache is not None
    old.cache.code_release = ""  # as 0.2.0 keyed entries and blocks alike: by the scope with its number
    with running_server(create_app(settings, old)) as url:
        refunds = ask(url, QUESTION)
        assert rate(url, refunds["answer_id"], "down").json()["evicted"] >= 1
        assert not ask(url, QUESTION)["cache"]["hit"]
        gift = ask(url, "Do gift cards expire?")
    monkeypatch.undo()
    with sqlite3.connect(settings.data_dir / "support.sqlite") as db:  # as an eviction made later leaves it
        db.execute("UPDATE feedback SET block_id = NULL")

    app = create_app(settings, build_pipeline(settings, embedder))
    with running_server(app) as url:
        cache = app.state.pipeline.cache
        [(_, kept)] = app.state.support.blocks()
        [scope] = app.state.support.voted_down_scopes()
        block_id = kept["id"]
        assert scope.endswith("|0.2.0") and scope_today(scope) == scope.removesuffix("|0.2.0")
        deadline = time.monotonic() + 30  # the first look at the store (serving.restore) moves it
        while cache.blocks.find(block_id)[0] != cache.blocks_key(scope_today(scope)):
            assert time.monotonic() < deadline, "the old release's block was not moved"
            time.sleep(0.05)
        for _ in range(2):
            assert not ask(url, QUESTION)["cache"]["hit"]  # voted down before the upgrade: never cached
        assert [b["id"] for b in httpx.get(f"{url}/v1/cache/blocks", timeout=30).json()["data"]] == [block_id]
        ask(url, "Do gift cards expire?")
        assert ask(url, "Do gift cards expire?")["cache"]["kind"] == "exact"
        assert rate(url, gift["answer_id"], "down").json()["evicted"] >= 1  # the old release's answer
        assert not ask(url, "Do gift cards expire?")["cache"]["hit"]

"""The handoff outbox: a handoff is in the database before it is sent and leaves it when the
help desk has it, so a restart or a replica's crash loses none, and two replicas taking up
what was left send each one once. On SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from serving.database import Database
from serving.handoff import Handoff, Outbox
from serving.support_store import _Postgres, _Sqlite


class Desk:
    """A help desk's webhook on 127.0.0.1: answers ``status`` (a dict by answer id, or one
    code) and keeps what it accepted."""

    def __init__(self, status: int | dict[str, int] = 204) -> None:
        self.status = status
        self.received: list[dict[str, Any]] = []
        desk = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                code = desk.status.get(body["answer_id"], 204) if isinstance(desk.status, dict) else desk.status
                if code < 300:
                    desk.received.append(body)
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/handoff"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(params=["sqlite", "postgres"])
def sql(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[_Sqlite | _Postgres]:
    if request.param == "sqlite":
        store: _Sqlite | _Postgres = _Sqlite(tmp_path / "support.sqlite")
        yield store
        store.close()
    else:
        db = Database(request.getfixturevalue("database_url")).open()
        yield _Postgres(db)
        db.close()


def event(answer_id: str, reason: str = "no_answer") -> dict[str, Any]:
    return {"reason": reason, "answer_id": answer_id, "collection": "default", "question": "q?", "answer": "a"}


async def until(condition: Any, what: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what()
        await asyncio.sleep(0.05)


def rows(sql: _Sqlite | _Postgres) -> list[tuple[Any, ...]]:
    return sql.query("SELECT id, given_up FROM handoffs ORDER BY id")


async def test_handoffs_a_stop_left_go_at_the_next_start(sql: _Sqlite | _Postgres) -> None:
    """The help desk is down while the service runs and stops; the next start sends what was
    left (once each, a repeated notify included), and the outbox is empty after."""
    down, up = Desk(503), Desk()
    first = Handoff(down.url, Outbox(sql), max_wait_s=0.2, poll_s=0.1)
    try:
        ids = [f"a{n}" for n in range(6)]  # more than the four senders: two wait in the queue
        for answer_id in [*ids, "a1"]:
            first.notify(event(answer_id))
        await until(lambda: len(rows(sql)) == 6, lambda: rows(sql))
        await first.aclose(timeout_s=0.3)  # not sent: every one released for the next start
        assert [r[0] for r in rows(sql)] == [f"{a}-no_answer" for a in ids]
        assert sql.query("SELECT COUNT(*) FROM handoffs WHERE owner IS NULL")[0][0] == 6
        second = Handoff(up.url, Outbox(sql), poll_s=0.1)
        second.start()  # as the app's start-up does, before any new handoff
        await until(lambda: len(up.received) == 6 and not rows(sql), lambda: (up.received, rows(sql)))
        await second.aclose()
        assert sorted(e["handoff_id"] for e in up.received) == [f"{a}-no_answer" for a in ids]
        assert up.received[0]["event"] == "needs_human" and up.received[0]["question"] == "q?"
    finally:
        down.close()
        up.close()


async def test_a_crashed_replicas_handoffs_are_taken_up_once_by_the_others(sql: _Sqlite | _Postgres) -> None:
    """A replica wrote handoffs and died (its lease lapses, nothing released them); two
    replicas running take them up between them, each handoff sent once."""
    desk = Desk()
    crashed = Outbox(sql, lease_s=0.5)
    for n in range(40):
        assert crashed.add({"handoff_id": f"c{n}-no_answer", **event(f"c{n}")})
    assert not crashed.add({"handoff_id": "c0-no_answer", **event("c0")})  # once
    replicas = [Handoff(desk.url, Outbox(sql), poll_s=0.05) for _ in range(2)]
    try:
        for replica in replicas:
            replica.start()
        await asyncio.sleep(0.3)
        assert not desk.received  # a live lease is left alone
        await until(lambda: len(desk.received) >= 40 and not rows(sql), lambda: (len(desk.received), rows(sql)))
        await asyncio.sleep(0.3)  # time for a second sending, were there one
        ids = [e["handoff_id"] for e in desk.received]
        assert len(ids) == 40 and len(set(ids)) == 40
    finally:
        for replica in replicas:
            await replica.aclose()
        desk.close()


async def test_a_refused_handoff_is_given_up_and_kept_with_why(
    sql: _Sqlite | _Postgres, caplog: pytest.LogCaptureFixture
) -> None:
    """...and why is kept and logged without the webhook's secret (its ?token=)."""
    desk = Desk({"bad": 400})
    handoff = Handoff(desk.url + "?token=s3cr3t", Outbox(sql), poll_s=0.05)
    try:
        handoff.notify(event("bad"))
        handoff.notify(event("ok"))
        await until(lambda: handoff.sent == 1 and handoff.failed == 1, lambda: (handoff.sent, handoff.failed))
        await until(lambda: len(rows(sql)) == 1, lambda: rows(sql))
        (handoff_id, why), *_ = rows(sql)
        assert handoff_id == "bad-no_answer" and "400" in why and "s3cr3t" not in why, why
        assert "handoff webhook" in caplog.text and "s3cr3t" not in caplog.text
        await asyncio.sleep(0.3)
        assert [e["answer_id"] for e in desk.received] == ["ok"]  # the given-up one is not taken up again
    finally:
        await handoff.aclose()
        desk.close()


def test_the_service_sends_at_start_up_what_its_last_run_left(tmp_path: Path, embedder: Any) -> None:
    """A handoff left in support.sqlite by the last run goes as the service starts, before
    any new answer needs a person."""
    from rag.pipeline import build_pipeline
    from serving.app import create_app

    from .conftest import make_settings
    from .servers import running_server

    desk = Desk()
    settings = make_settings(tmp_path / "data", backend="extractive", handoff_webhook_url=desk.url)
    left = _Sqlite(settings.data_dir / "support.sqlite")
    Outbox(left).add({"handoff_id": "x-no_answer", **event("x")})
    left.apply([("UPDATE handoffs SET owner = NULL, lease_until = 0", ())])  # as a stop releases it
    left.close()
    try:
        with running_server(create_app(settings, build_pipeline(settings, embedder))):
            deadline = time.monotonic() + 10
            while not desk.received:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert [e["handoff_id"] for e in desk.received] == ["x-no_answer"]
    finally:
        desk.close()


async def test_waiting_cache_work_that_can_never_be_done_does_not_hold_up_the_rest(
    tmp_path: Path, embedder: Any
) -> None:
    """A change queued while the cache's store was away whose collection went since: logged
    and dropped; the ones after it are made (it would have failed every look, first in line)."""
    from ingest.runner import ingest
    from rag.pipeline import build_pipeline
    from serving.curation import CuratedStore
    from serving.restore import catch_up
    from serving.support_store import open_support_store

    from .conftest import EXAMPLES, make_settings

    settings = make_settings(tmp_path / "data", backend="extractive")
    ingest([EXAMPLES], "default", settings, embedder, progress=False)
    pipe = build_pipeline(settings, embedder)
    support = open_support_store(settings.data_dir, None)
    try:
        support.defer("drop:" + json.dumps(["gone", "Do gift cards expire?", "c1"]))  # its collection went
        support.defer("sync:default")
        assert await catch_up(pipe, support, CuratedStore(support.sql)) == 2
        assert support.deferred() == []
    finally:
        support.close()
        await pipe.aclose()

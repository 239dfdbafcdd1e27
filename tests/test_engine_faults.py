"""Faults of the shared engines, over real HTTP on 127.0.0.1, against real engines that the
test stops and starts: Redis away costs cache misses, never answers; PostgreSQL away is a
clear 503 and loses nothing already accepted."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from eval.engines import postgres_engine, redis_engine
from rag.errors import BackendUnavailableError
from serving.database import Database
from serving.keys import KeyStore, PgKeyStore

from .servers import free_port, serving

QUESTION = "How long do refunds take?"


def _ask(url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{url}/v1/query", json={"question": QUESTION}, headers=headers, timeout=60)


def test_with_redis_away_answers_keep_coming_as_misses_and_the_cache_comes_back(
    tmp_path: Path, example_data_dir: Path, embedder: Any
) -> None:
    """The cache, the rate limits and the failed-key limit are all on this Redis."""
    engine = redis_engine(tmp_path / "redis").start()
    data = tmp_path / "data"
    shutil.copytree(example_data_dir, data, ignore=shutil.ignore_patterns("cache"))
    store = KeyStore(data)
    key = {"Authorization": f"Bearer {store.create([], admin=True)[0]}"}
    store.close()
    overrides = {
        "redis_url": engine.url, "redis_prefix": f"t{uuid.uuid4().hex[:8]}:", "rate_limit": "1000/minute",
        "store_check_s": 0.2,
    }  # fmt: skip
    try:
        with serving(data, embedder, backend="extractive", **overrides) as url:
            assert _ask(url, key).json()["cache"]["hit"] is False
            assert _ask(url, key).json()["cache"]["kind"] == "exact"
            assert 'rag_engine_up{engine="redis"} 1.0' in httpx.get(f"{url}/metrics", headers=key, timeout=10).text
            engine.kill()
            away = _ask(url, key)
            assert away.status_code == 200 and away.json()["cache"]["hit"] is False and away.json()["citations"]
            assert _ask(url, {"Authorization": "Bearer rk_bad_guess"}).status_code == 401  # not a 500
            ready = httpx.get(f"{url}/readyz", timeout=10)
            assert ready.status_code == 200 and ready.json()["storage_state"].startswith("new answers not cached for")
            admin_ready = httpx.get(f"{url}/readyz", headers=key, timeout=10).json()["storage_state"]
            assert admin_ready.endswith(" - check Redis"), admin_ready
            assert 'rag_engine_up{engine="redis"} 0.0' in httpx.get(f"{url}/metrics", headers=key, timeout=10).text
            stats = httpx.get(f"{url}/v1/cache/stats", headers=key, timeout=10)
            assert stats.status_code == 503 and stats.json()["error"]["code"] == "cache_store_unavailable"
            # A thumbs-down meanwhile is kept and handed over; its eviction waits for Redis.
            cards = httpx.post(f"{url}/v1/query", json={"question": "Do gift cards expire?"}, headers=key, timeout=60)
            vote = {"answer_id": cards.json()["answer_id"], "rating": "down", "reason": "They did expire"}
            down = httpx.post(f"{url}/v1/feedback", json=vote, headers=key, timeout=30)
            assert down.status_code == 200 and down.json()["needs_human"] == "thumbs_down", down.text
            engine.start()  # restarted empty
            time.sleep(1.1)
            assert _ask(url, key).json()["cache"]["hit"] is False
            assert _ask(url, key).json()["cache"]["kind"] == "exact"  # the cache works again by itself
            deadline = time.monotonic() + 30
            while not httpx.get(f"{url}/v1/cache/blocks", headers=key, timeout=10).json()["data"]:
                assert time.monotonic() < deadline, "the thumbs-down's block never reached Redis"
                time.sleep(0.5)
            stats = httpx.get(f"{url}/v1/cache/stats", headers=key, timeout=10)
            assert stats.status_code == 200 and stats.json()["entries"] == 1
    finally:
        engine.stop()


def test_with_postgres_away_known_keys_still_work_unknown_ones_get_a_503_and_accepted_jobs_finish(
    tmp_path: Path, example_data_dir: Path, embedder: Any
) -> None:
    engine = postgres_engine(tmp_path / "postgres").start()
    db = Database(engine.url).open()
    try:
        admin = {"Authorization": f"Bearer {PgKeyStore(db).create([], admin=True)[0]}"}
        unseen = {"Authorization": f"Bearer {PgKeyStore(db).create([], admin=True)[0]}"}
        with serving(example_data_dir, embedder, backend="extractive", database_url=engine.url, job_lease_s=2) as url:
            questions = [{"question": f"{QUESTION} (order {n})", "id": f"q{n}"} for n in range(60)]
            job = httpx.post(f"{url}/v1/jobs", json={"questions": questions}, headers=admin, timeout=30)
            assert job.status_code == 202
            assert 'rag_engine_up{engine="database"} 1.0' in httpx.get(f"{url}/metrics", headers=admin, timeout=10).text
            assert _ask(url, admin).status_code == 200
            engine.kill()  # PostgreSQL dies with the job accepted and (likely) half done
            time.sleep(0.6)  # past the 0.5 s a key is known without asking
            # A key found right minutes ago still works (the cached answers serve); a key this
            # process never saw cannot be checked: 503, with the database's own code.
            assert _ask(url, admin).status_code == 200
            refused = _ask(url, unseen)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "database_unavailable"
            assert refused.json()["error"]["type"] == "service_unavailable"
            assert "RAG_DATABASE_URL" in refused.json()["error"]["message"]
            ready = httpx.get(f"{url}/readyz", headers=admin, timeout=10)  # shared: reported, not required
            assert ready.status_code == 200 and "unreachable" in ready.json()["engines"]["database"], ready.text
            deadline = time.monotonic() + 20  # the answer just given waits in memory: said once tried
            while "storage_state" not in ready.json() and time.monotonic() < deadline:
                ready = httpx.get(f"{url}/readyz", headers=admin, timeout=10)
            assert "held in memory) - check the database" in ready.json().get("storage_state", ""), ready.text
            probe = httpx.get(f"{url}/readyz", headers=unseen, timeout=10)  # a key it cannot check: the public view
            assert probe.status_code == 200 and "collections" not in probe.json(), probe.text
            assert int(refused.headers["retry-after"]) >= 1
            engine.start()
            deadline = time.monotonic() + 120
            while True:
                body = httpx.get(f"{url}/v1/jobs/{job.json()['id']}", headers=admin, timeout=30)
                if body.status_code == 200 and body.json()["status"] == "done":
                    break
                assert time.monotonic() < deadline, body.text
                time.sleep(0.3)
            assert [r["id"] for r in body.json()["results"]] == [q["id"] for q in questions]
            assert _ask(url, admin).status_code == 200
    finally:
        db.close()
        engine.stop()


def test_an_unreachable_database_fails_fast_then_is_tried_again() -> None:
    """Requests after a failure get their 503 at once, not after another connect timeout each."""
    db = Database(f"postgresql://rag@127.0.0.1:{free_port()}/rag", timeout_s=1.0).open()
    db.fail_fast_s = 60.0  # long enough that no slow machine leaves the window
    try:
        with pytest.raises(BackendUnavailableError, match="is unreachable"):
            db.ping()  # nothing listens there: the pool gives up after its timeout
        with pytest.raises(BackendUnavailableError, match="was unreachable less than 60 s ago"):
            db.ping()  # not asked again
        db._down_until = 0.0  # the window has passed
        with pytest.raises(BackendUnavailableError, match="is unreachable"):
            db.ping()  # asked again
    finally:
        db.close()


def test_a_redis_restarted_without_its_data_gets_the_blocks_and_curated_answers_back(
    tmp_path: Path, example_data_dir: Path, embedder: Any
) -> None:
    """Redis restarted empty (no persistence): within a few seconds every replica puts back
    the thumbs-down blocks and the curated answers from the support store; the voted-down
    answer is not cached again, the curated answer is served again."""
    engine = redis_engine(tmp_path / "redis").start()
    data = tmp_path / "data"
    shutil.copytree(example_data_dir, data, ignore=shutil.ignore_patterns("cache"))
    overrides = {"redis_url": engine.url, "redis_prefix": f"t{uuid.uuid4().hex[:8]}:", "store_check_s": 0.2}
    pinned = {
        "question": "Can I pay with PayPal?",
        "answer": "Yes, at checkout.",
        "document_ids": ["payment-methods.md"],
    }
    try:
        with serving(data, embedder, backend="extractive", **overrides) as url:
            assert httpx.post(f"{url}/v1/curated", json=pinned, timeout=30).status_code == 201
            first = _ask(url).json()
            vote = {"answer_id": first["answer_id"], "rating": "down"}
            assert httpx.post(f"{url}/v1/feedback", json=vote, timeout=30).json()["evicted"] >= 1
            engine.kill()
            engine.start()  # empty: no blocks, no curated answers in it
            deadline = time.monotonic() + 20
            while len(httpx.get(f"{url}/v1/cache/blocks", timeout=10).json().get("data", [])) != 1:
                assert time.monotonic() < deadline, "the block was not put back"
                time.sleep(0.2)
            served = httpx.post(f"{url}/v1/query", json={"question": "Can I pay with PayPal?"}, timeout=30).json()
            assert served["answer_kind"] == "curated", served
            again = [_ask(url).json() for _ in range(2)]  # the voted-down answer is not let back in
            assert [a["cache"]["hit"] for a in again] == [False, False], again
            (block,) = httpx.get(f"{url}/v1/cache/blocks", timeout=10).json()["data"]
            assert httpx.delete(f"{url}/v1/cache/blocks/{block['id']}", timeout=10).status_code == 200
            engine.kill()
            engine.start()  # a lifted block is not put back
            deadline = time.monotonic() + 20
            while (
                httpx.post(f"{url}/v1/query", json={"question": pinned["question"]}, timeout=30)
                .json()
                .get("answer_kind")
                != "curated"
            ):
                assert time.monotonic() < deadline, "the curated answer was not put back"
                time.sleep(0.2)
            assert httpx.get(f"{url}/v1/cache/blocks", timeout=10).json()["data"] == []
    finally:
        engine.stop()


def test_curated_changes_while_redis_is_away_reach_the_cache_when_it_is_back(
    tmp_path: Path, example_data_dir: Path, embedder: Any
) -> None:
    """Redis paused (SIGSTOP: it keeps its data): removing and editing curated answers are
    recorded (200) and the cache follows once Redis answers again; neither the removed answer
    nor the old version is served then."""
    import os
    import signal

    engine = redis_engine(tmp_path / "redis").start()
    data = tmp_path / "data"
    shutil.copytree(example_data_dir, data, ignore=shutil.ignore_patterns("cache"))
    overrides = {"redis_url": engine.url, "redis_prefix": f"t{uuid.uuid4().hex[:8]}:", "store_check_s": 0.2}

    def ask(url: str, question: str) -> dict[str, Any]:
        return dict(httpx.post(f"{url}/v1/query", json={"question": question}, timeout=30).json())

    try:
        with serving(data, embedder, backend="extractive", **overrides) as url:
            pins = [{"question": "Can I return a gift card?", "answer": "REMOVED: no."},
                    {"question": "Can I pay with PayPal?", "answer": "OLD: yes."}]  # fmt: skip
            made = [httpx.post(f"{url}/v1/curated", json=p, timeout=30).json() for p in pins]
            assert [ask(url, p["question"])["answer"] for p in pins] == ["REMOVED: no.", "OLD: yes."]
            assert engine.proc is not None
            os.killpg(engine.proc.pid, signal.SIGSTOP)
            try:
                removed = httpx.delete(f"{url}/v1/curated/{made[0]['id']}", timeout=30)
                edited = httpx.patch(f"{url}/v1/curated/{made[1]['id']}", json={"answer": "NEW: yes."}, timeout=30)
                assert removed.status_code == 200 and edited.status_code == 200, (removed.text, edited.text)
            finally:
                os.killpg(engine.proc.pid, signal.SIGCONT)
            deadline = time.monotonic() + 20
            while ask(url, "Can I pay with PayPal?")["answer"] != "NEW: yes.":
                assert time.monotonic() < deadline, "the edit never reached the cache"
                time.sleep(0.3)
            assert ask(url, "Can I return a gift card?")["answer"] != "REMOVED: no."
    finally:
        engine.stop()


FULL_DISK_CHILD = """
import json, resource, signal, sys, time
from pathlib import Path
from fastapi.testclient import TestClient
from rag.pipeline import build_pipeline
from rag.settings import Settings
from serving.app import create_app

data = Path(sys.argv[1])
settings = Settings(_env_file=None, data_dir=data, backend="extractive", cache_audit_rate=0.0)
out = {}


def settle(client, done):  # the answer log is written in the background, every 0.2 s
    deadline = time.monotonic() + 20
    while not done(client.get("/readyz")) and time.monotonic() < deadline:
        time.sleep(0.2)
    return client.get("/readyz")


with TestClient(create_app(settings, build_pipeline(settings))) as client:
    client.post("/v1/query", json={"question": "Do gift cards expire?"})
    out["before"] = settle(client, lambda r: client.app.state.support.unwritten() == 0).json()
    # The disk is full: no file may grow (SIGXFSZ ignored, so a write fails as on a full disk).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1, hard))
    asked = client.post("/v1/query", json={"question": "How long do refunds take?"})
    out["asked"] = [asked.status_code, asked.json().get("answer_kind")]
    full = settle(client, lambda r: "answer log" in r.json().get("storage_state", ""))
    out["full"] = [full.status_code, full.json()]
    out["metric"] = [l for l in client.get("/metrics").text.splitlines() if l.startswith("rag_unwritten_answers")]
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space freed
    client.post("/v1/query", json={"question": "Can I pay with PayPal?"})
    out["freed"] = settle(client, lambda r: "storage_state" not in r.json()).json()
    out["kept"] = client.app.state.support.answer(asked.json()["answer_id"]) is not None
print(json.dumps(out))
"""


def test_a_full_disk_leaves_the_service_ready_and_says_what_is_not_kept(tmp_path: Path, example_data_dir: Path) -> None:
    """Fault injection: no file may grow (RLIMIT_FSIZE in a child process, as a full disk
    refuses writes). Questions are still answered and `/readyz` stays 200, naming what is not
    being kept and what to do (it said nothing: the full disk was only in the logs); once
    space is freed the answers held in memory are written and the state clears."""
    import json
    import subprocess
    import sys

    from .conftest import ROOT

    data = tmp_path / "data"
    shutil.copytree(example_data_dir, data, ignore=shutil.ignore_patterns("cache"))
    done = subprocess.run([sys.executable, "-c", FULL_DISK_CHILD, str(data)], cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert "storage_state" not in out["before"], out
    assert out["asked"] == [200, "quoted"], out
    status, body = out["full"]
    assert status == 200 and body["status"] == "ready", out
    state = body["storage_state"]
    assert "the answer log not written for" in state and "(1 answer held in memory)" in state, state
    assert "new answers not cached for" in state and f"free disk space under {data}, or make it writable" in state
    assert "rag_unwritten_answers 1.0" in out["metric"], out
    assert "storage_state" not in out["freed"] and out["kept"] is True, out

"""Two replicas on two test hosts, Redis and PostgreSQL on a third, over a real network
(network namespaces joined by a bridge: eval/hosts.py). Each replica is a real `rag serve`
process with its own copy of the index; all they share is the engines on host C."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from eval.engines import postgres_engine, redis_engine
from eval.hosts import Network, Replica, namespaces_unavailable
from ingest.runner import ingest
from serving.database import Database
from serving.keys import PgKeyStore

from .conftest import EXAMPLES, ROOT, make_settings

pytestmark = pytest.mark.slow
REASON = namespaces_unavailable()
if REASON is not None:
    pytest.skip(f"no test hosts: {REASON}", allow_module_level=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("hosts")
    docs = root / "docs" / "help-center"
    shutil.copytree(EXAMPLES, docs)
    ingest([docs], "default", make_settings(root / "a" / "data"), embedder, progress=False)
    shutil.copytree(root / "a" / "data", root / "b" / "data")  # host B's own copy of the index
    with Network(["a", "b", "c"]) as net:
        c = net.addresses["c"]
        engines = [
            redis_engine(root / "c" / "redis", c, 6379, wrap=net.wrap("c")).start(),
            postgres_engine(root / "c" / "postgres", c, 5432, wrap=net.wrap("c")).start(),
        ]
        db = Database(engines[1].url).open()
        keys = PgKeyStore(db)
        admin, _ = keys.create([], admin=True, name="ops")
        env = {
            "RAG_REDIS_URL": engines[0].url, "RAG_DATABASE_URL": engines[1].url, "RAG_JOB_LEASE_S": "3",
            "RAG_AUTH_FAILURE_LIMIT": "6/minute", "RAG_JOB_CONCURRENCY": "2",
        }  # fmt: skip
        replicas = {h: Replica(h, root / h / "data", env, net.addresses[h], 8000, wrap=net.wrap(h)) for h in ("a", "b")}
        try:
            for replica in replicas.values():
                replica.start()
            yield {"replicas": replicas, "keys": keys, "admin": admin, "db_url": engines[1].url, "net": net}
        finally:
            for replica in replicas.values():
                replica.stop()
            db.close()
            for engine in engines:
                engine.stop()


def _headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _ask(url: str, key: str, question: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/query", json={"question": question}, headers=_headers(key), timeout=60)


def test_a_question_answered_on_host_a_is_a_cache_hit_on_host_b(cluster: dict[str, Any]) -> None:
    a, b = cluster["replicas"]["a"], cluster["replicas"]["b"]
    first = _ask(a.url, cluster["admin"], "How long do refunds take?")
    assert first.status_code == 200 and first.json()["cache"]["hit"] is False
    again = _ask(b.url, cluster["admin"], "how long do refunds take")
    assert again.status_code == 200 and again.json()["cache"] == {"hit": True, "kind": "exact", "similarity": 1.0}
    assert again.json()["answer"] == first.json()["answer"]
    reworded = _ask(b.url, cluster["admin"], "How long does a refund take?")
    assert reworded.json()["cache"]["kind"] == "semantic"  # the KNN ran in Redis, on host C
    ready = httpx.get(f"{b.url}/readyz", headers=_headers(cluster["admin"]), timeout=10).json()
    assert ready["engines"] == {"database": "ok", "redis": "ok"}


def test_a_key_revoked_on_host_a_is_refused_on_host_b(cluster: dict[str, Any]) -> None:
    a, b = cluster["replicas"]["a"], cluster["replicas"]["b"]
    key, info = cluster["keys"].create(["default"], name="shop")
    assert _ask(b.url, key, "Do gift cards expire?").status_code == 200
    stats = httpx.get(f"{a.url}/v1/cache/stats", headers=_headers(cluster["admin"]), timeout=30)
    assert stats.status_code == 200 and stats.json()["store"] == "RedisStore"
    revoke = [*cluster["net"].wrap("a"), sys.executable, "-m", "cli", "keys", "revoke", info.id]
    env = {**os.environ, "RAG_DATABASE_URL": cluster["db_url"]}
    assert (
        subprocess.run(revoke, env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        == f"revoked {info.id}"
    )
    time.sleep(1.0)  # `rag keys revoke` ran on host A
    refused = _ask(b.url, key, "Do gift cards expire?")
    assert refused.status_code == 401 and refused.json()["error"]["code"] is not None


def _holder(db_url: str, job_id: str) -> str | None:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT worker FROM jobs WHERE id = %s", (job_id,)).fetchone()
    return None if row is None else row[0]


def test_a_job_whose_host_dies_mid_job_is_finished_by_the_other_once(cluster: dict[str, Any]) -> None:
    replicas = cluster["replicas"]
    questions = [{"question": f"How long do refunds take for order {n}?", "id": f"q{n}"} for n in range(40)]
    with httpx.Client(headers=_headers(cluster["admin"]), timeout=30) as admin:
        job = admin.post(f"{replicas['a'].url}/v1/jobs", json={"questions": questions}).json()
        deadline = time.monotonic() + 60
        while (progress := admin.get(f"{replicas['b'].url}/v1/jobs/{job['id']}").json())["progress"]["done"] < 2:
            assert time.monotonic() < deadline, progress
            time.sleep(0.05)
        worker = _holder(cluster["db_url"], job["id"])
        # kill -9 whichever host holds the job now (A took it, unless B's taker was first)
        holder = next(r for r in replicas.values() if r.proc is not None and f":{r.proc.pid}:" in str(worker))
        survivor = next(r for r in replicas.values() if r is not holder)
        holder.kill()
        try:
            deadline = time.monotonic() + 120
            while (body := admin.get(f"{survivor.url}/v1/jobs/{job['id']}").json())["status"] != "done":
                assert time.monotonic() < deadline, body
                time.sleep(0.2)
            assert [r["id"] for r in body["results"]] == [q["id"] for q in questions]  # every one, once, in order
            assert all("answer" in r for r in body["results"])
            assert _holder(cluster["db_url"], job["id"]) != worker  # finished by the other host's worker
        finally:
            holder.start()


def test_failed_keys_are_limited_per_address_across_hosts(cluster: dict[str, Any]) -> None:
    """RAG_AUTH_FAILURE_LIMIT is 6 a minute per address. Wrong keys alternate between the hosts:
    limited per host, the first 429 would come after 12; shared, after at most 6 (fewer if an
    earlier test's refused key from this address still counts). Last in the module: from then
    on this address is refused for a minute, whatever key it sends."""
    a, b = cluster["replicas"]["a"], cluster["replicas"]["b"]
    codes = [_ask((a, b)[i % 2].url, f"rk_bad{i}_guess", "hello").status_code for i in range(12)]
    refused = codes.index(429)
    assert 1 <= refused <= 6 and set(codes[:refused]) == {401}, codes
    assert set(codes[refused:]) == {429}  # on both hosts from then on
    limited = _ask(a.url, "rk_bad_guess_again", "hello")
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1

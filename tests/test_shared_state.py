"""State shared by replicas, against the real engines (Valkey with the search module, and
PostgreSQL 18, both from PyPI wheels): the response cache on Redis, keys and jobs on
PostgreSQL, and the faults of each. Several replicas are several objects (caches, pipelines,
stores) over the same engine; the multi-host test on real network boundaries is
tests/test_multihost.py."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from cache import SemanticCache
from cache.redis_store import RedisStore
from eval.engines import redis_engine
from rag.errors import BackendUnavailableError
from rag.pipeline import build_pipeline
from serving.auth import Authenticator
from serving.database import MIGRATIONS, Database
from serving.jobs import JobQuestion, JobRequest
from serving.keys import PgKeyStore
from serving.pg_jobs import PgJobStore

from .conftest import make_settings


def _unit(seed: int, dim: int = 384) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def _near(v: np.ndarray, seed: int, noise: float) -> np.ndarray:
    w = v + noise * _unit(seed, v.shape[0])
    return (w / np.linalg.norm(w)).astype(np.float32)


def _replicas(url: str, n: int = 2, **kwargs: Any) -> list[SemanticCache]:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    return [SemanticCache(RedisStore(url, 384, prefix=prefix), dimension=384, **kwargs) for _ in range(n)]


def test_an_answer_cached_on_one_replica_is_a_hit_on_another(redis_url: str) -> None:
    a, b = _replicas(redis_url, threshold=0.9)
    v = _unit(1)
    a.put("scope", "How do I reset my password?", v, {"answer": "Use the link."}, tag="default", group="3")
    exact = b.get_exact("scope", "  how do I reset my PASSWORD ")
    assert exact is not None and exact.payload == {"answer": "Use the link."}
    near = b.get_similar("scope", _near(v, 2, 0.2))
    assert near is not None and near.kind == "semantic" and near.similarity > 0.9
    assert b.get_similar("other scope", v) is None  # scopes never see each other
    assert b.get_similar("scope", _unit(3)) is None  # far away: a miss
    assert b.stats()["entries_by_collection"] == {"default": 1}
    assert (
        a.clear("default") == 1
        and b.get_similar("scope", v) is None
        and b.get_exact("scope", "How do I reset my password?") is None
    )


def test_the_guards_and_the_margin_hold_on_redis(redis_url: str) -> None:
    (cache,) = _replicas(redis_url, n=1, threshold=0.5, margin=0.05)
    v = _unit(4)
    cache.put("s", "How do I cancel my order?", v, {"answer": "a"}, group="1")
    assert cache.get_similar("s", v, question="How do I not cancel my order?") is None  # negation guard
    assert cache.lookups["rejected_by_guards"] == 1
    cache.put("s", "How do I return my order?", _near(v, 5, 0.05), {"answer": "b"}, group="2")
    assert cache.get_similar("s", _near(v, 6, 0.02), question="how do I cancel my order") is None  # ambiguous
    assert cache.lookups["rejected_as_ambiguous"] == 1


def test_entries_expire_by_their_ttl_and_audit_evidence_is_shared(redis_url: str) -> None:
    a, b = _replicas(redis_url, threshold=0.5, ttl_s=1)
    v = _unit(7)
    a.put("s", "When do you ship?", v, {"answer": "a"}, tag="shop")
    hit = b.get_similar("s", _near(v, 8, 0.3))
    assert hit is not None
    a.learn(hit, agreed=False)  # an audit on one replica found the hit wrong...
    assert b.get_similar("s", _near(v, 8, 0.3)) is None  # ...and the other replica's boundary moved
    assert b.stats()["wrong_hits"]["shop"]["wrong_hits"] == 1
    time.sleep(2.1)
    assert b.get_exact("s", "When do you ship?") is None  # expired in Redis itself


@pytest.mark.parametrize("engine", ["redis", "diskcache"])
def test_replicas_blocking_in_one_scope_at_once_lose_no_block(engine: str, redis_url: str, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from cache.blocks import Blocks
    from cache.stores import LocalStore

    prefix = f"t{uuid.uuid4().hex[:8]}:"
    stores = [
        RedisStore(redis_url, 384, prefix=prefix) if engine == "redis" else LocalStore(tmp_path, 384) for _ in "ab"
    ]
    replicas = [Blocks(store.counters, 0.7) for store in stores]

    def vote_down(n: int) -> str:  # 40 different answers (their own chunks), two replicas in turn
        return replicas[n % 2].add("scope", f"question {n}", _unit(n), f"answer {n}", str(n), "shop")

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(vote_down, range(40)))
    assert sorted(b["id"] for b in replicas[0].of("scope")) == sorted(ids)
    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(replicas[1].lift, ids[:20]))
    assert sorted(b["id"] for b in replicas[0].of("scope")) == sorted(ids[20:])


@pytest.mark.parametrize("engine", ["redis", "diskcache"])
def test_replicas_auditing_at_once_keep_the_highest_wrong_similarity(
    engine: str, redis_url: str, tmp_path: Path
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from cache.audit import HitEvidence
    from cache.stores import LocalStore

    prefix = f"t{uuid.uuid4().hex[:8]}:"
    stores = [
        RedisStore(redis_url, 384, prefix=prefix) if engine == "redis" else LocalStore(tmp_path, 384) for _ in "ab"
    ]
    replicas = [HitEvidence(store.counters, lambda tag: 0.01) for store in stores]
    similarities = [0.80 + n / 1000 for n in range(150)]
    random.Random(7).shuffle(similarities)

    def audit(n: int) -> None:  # 150 wrong hits, found by two replicas in turn, in any order
        replicas[n % 2].record("shop", "entry", similarities[n], agreed=False)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(audit, range(150)))
    assert replicas[0].estimate("shop")["audited_hits"] == replicas[1].estimate("shop")["wrong_hits"] == 150
    assert replicas[1].collection_floor("shop") == replicas[0].entry_floor("entry") == pytest.approx(max(similarities))


@pytest.mark.parametrize("engine", ["redis", "diskcache"])
def test_transactions_on_the_counters_run_one_at_a_time_across_replicas(
    engine: str, redis_url: str, tmp_path: Path
) -> None:
    """An audit's counts and the boundary worked out from them are written under one
    transaction: on Redis a lock, as diskcache's is SQLite's write lock."""
    import threading

    from cache.stores import LocalStore

    prefix = f"t{uuid.uuid4().hex[:8]}:"
    stores = [
        RedisStore(redis_url, 384, prefix=prefix) if engine == "redis" else LocalStore(tmp_path, 384) for _ in "ab"
    ]
    together = threading.Barrier(2)
    order: list[str] = []

    def work(name: str, counters: Any) -> None:
        together.wait()
        with counters.transact():
            order.append(f"{name} in")
            time.sleep(0.3)
            order.append(f"{name} out")

    threads = [threading.Thread(target=work, args=(n, s.counters)) for n, s in zip("ab", stores, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert order in (["a in", "a out", "b in", "b out"], ["b in", "b out", "a in", "a out"]), order


@pytest.mark.parametrize("engine", ["redis", "diskcache"])
def test_clearing_the_cache_keeps_blocks_and_each_collections_evidence(
    engine: str, redis_url: str, tmp_path: Path
) -> None:
    store = RedisStore(redis_url, 384, prefix=f"t{uuid.uuid4().hex[:8]}:") if engine == "redis" else tmp_path
    cache = SemanticCache(store, dimension=384, threshold=0.9)
    v = _unit(1)
    cache.put("scope", "How long do refunds take?", v, {"answer": "Two days."}, tag="shop", group="3")
    hit = cache.get_similar("scope", _near(v, 2, 0.2))
    assert hit is not None
    cache.learn(hit, agreed=True)
    cache.reject("scope", "How long do refunds take?", v, "Two days.", "3", "shop")
    assert cache.clear() == 0  # the thumbs-down already took the one entry
    cache.put("scope", "How long do refunds take?", v, {"answer": "Two days."}, tag="shop", group="3")
    assert cache.get_exact("scope", "How long do refunds take?") is None  # still blocked
    assert len(cache.blocks.all("shop")) == 1
    assert cache.stats()["wrong_hits"]["shop"]["audited_hits"] == 1


def test_a_redis_that_goes_away_costs_misses_and_comes_back(tmp_path: Path) -> None:
    engine = redis_engine(tmp_path / "redis").start()
    try:
        (cache,) = _replicas(engine.url, n=1, threshold=0.9)
        v = _unit(9)
        cache.put("s", "Do you ship to Canada?", v, {"answer": "a"})
        engine.kill()
        assert cache.get_exact("s", "Do you ship to Canada?") is None
        assert cache.get_similar("s", v) is None
        cache.put("s", "Another question", _unit(10), {"answer": "b"})  # skipped, not raised
        assert cache.lookups["store_errors"] >= 2
        engine.start()  # empty, without the search index: it is made again on first use
        time.sleep(1.1)  # the store leaves Redis alone for a second after a failure
        assert cache.get_similar("s", v) is None
        cache.put("s", "Do you ship to Canada?", v, {"answer": "a"})
        hit = cache.get_similar("s", v)
        assert hit is not None and hit.payload == {"answer": "a"}
    finally:
        engine.stop()


@pytest.mark.parametrize("streamed", [False, True])
async def test_concurrent_identical_misses_on_two_replicas_make_one_generation(
    streamed: bool, example_data_dir: Path, embedder: Any, redis_url: str
) -> None:
    """Streamed or not, the question is claimed across the hosts sharing the cache: one
    generates, the other gets its answer, whole, as a hit."""
    from rag.wire import Answer

    settings = make_settings(
        example_data_dir, backend="extractive", redis_url=redis_url, redis_prefix=f"t{uuid.uuid4().hex[:8]}:"
    )
    replicas = [build_pipeline(settings, embedder) for _ in range(2)]
    question = "How long do refunds take?"

    async def ask(pipeline: Any) -> Answer:
        if not streamed:
            answer: Answer = await pipeline.answer(question)
            return answer
        items = [item async for item in pipeline.stream(await pipeline.prepare(question, streamed=True))]
        assert isinstance(items[-1], Answer) and items[0] == items[-1].answer, items
        return items[-1]

    try:
        answers = await asyncio.gather(*(ask(p) for p in replicas))
        assert sorted(a.cache.hit for a in answers) == [False, True]  # one generated, one waited for it
        assert answers[0].answer == answers[1].answer and answers[0].citations == answers[1].citations
    finally:
        for p in replicas:
            await p.aclose()


def test_migrations_are_versioned_and_run_once(database_url: str) -> None:
    db = Database(database_url).open()
    try:
        db.ping()  # the first connection migrates
        with psycopg.connect(database_url) as conn:
            versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
        assert versions == [v for v, _ in MIGRATIONS]
        again = Database(database_url).open()  # another replica starting: nothing to do
        again.ping()
        again.close()
    finally:
        db.close()


def test_a_key_revoked_on_one_replica_is_refused_on_another_within_a_second(database_url: str) -> None:
    a_db, b_db = Database(database_url).open(), Database(database_url).open()
    try:
        a, b = PgKeyStore(a_db), PgKeyStore(b_db)
        key, info = a.create(["alpha"], name="shop a")
        a.create([], admin=True)  # with no active key left, a service is keyless (loopback only)
        widget_key, _ = a.create(["alpha"], name="widget", public=True)
        auth_b = Authenticator(b)
        assert auth_b.authenticate(f"Bearer {key}").collections == frozenset({"alpha"})
        assert auth_b.authenticate(f"Bearer {widget_key}").public and not auth_b.authenticate(f"Bearer {key}").public
        assert a.revoke(info.id)
        time.sleep(1.0)
        with pytest.raises(Exception, match="not recognised"):
            auth_b.authenticate(f"Bearer {key}")
        assert [(k.revoked_at is not None, k.public) for k in b.list()] == [
            (True, False),
            (False, False),
            (False, True),
        ]
    finally:
        a_db.close()
        b_db.close()


def _job(n: int) -> JobRequest:
    return JobRequest(questions=[JobQuestion(question=f"question {i}") for i in range(n)])


def test_a_job_is_taken_by_one_worker_and_taken_again_when_its_lease_runs_out(database_url: str) -> None:
    dbs = [Database(database_url).open() for _ in range(2)]
    try:
        a, b = (PgJobStore(db, lease_s=1.0) for db in dbs)
        job_id = a.create(_job(3))
        assert [a.take(), b.take()] == [job_id, None]  # one worker holds it
        a.record(job_id, 0, {"id": "0", "answer": "from a"})
        time.sleep(1.2)  # a died: its lease runs out
        assert b.take() == job_id
        assert not a.renew(job_id)  # a learns it lost the job...
        a.record(job_id, 1, {"id": "1", "answer": "late, from a"})  # ...and its late writes are refused
        assert [p for p, _ in b.pending(job_id)] == [1, 2]
        for position, _ in b.pending(job_id):
            b.record(job_id, position, {"id": str(position), "answer": "from b"})
            b.record(job_id, position, {"id": str(position), "answer": "twice"})  # stored once
        b.set_status(job_id, "done")
        job = a.get(job_id)
        assert job is not None and job["status"] == "done"
        assert [r["answer"] for r in job["results"]] == ["from a", "from b", "from b"]
    finally:
        for db in dbs:
            db.close()


def test_a_database_that_is_away_is_a_503_that_says_which(tmp_path: Path) -> None:
    from eval.processes import free_port

    db = Database(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", timeout_s=1).open()
    try:
        with pytest.raises(BackendUnavailableError, match="RAG_DATABASE_URL"):
            PgKeyStore(db).active()
    finally:
        db.close()

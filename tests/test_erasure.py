"""Forgetting customers: an erasure request over HTTP and from the command line, and the
retention limit, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from rag.pipeline import build_pipeline
from serving.support_store import AnswerRecord, Feedback, SupportStore, _Postgres, _Sqlite

from .conftest import ROOT, files_holding, make_settings

EMAIL = "jane.roe@example.com"


def _rag(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAG_DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip


def _rows(data_dir: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(data_dir / "support.sqlite") as db:
        return db.execute(sql, params).fetchall()


def _holding(data_dir: Path, text: str) -> list[str]:
    """The files of the data dir that hold ``text`` (the index aside: the documents' own words)."""
    return files_holding(data_dir, text, "collections")


def test_an_erasure_request_forgets_an_answer_everywhere_it_was_kept(
    tmp_path: Path, corpus: Path, embedder: Any
) -> None:
    from fastapi.testclient import TestClient

    from ingest.runner import ingest
    from serving.app import create_app

    data_dir = tmp_path / "data"
    settings = make_settings(data_dir, backend="extractive")
    ingest([corpus], "default", settings, embedder, progress=False)
    question = "how long do refunds take for my order"
    history = [
        {"role": "user", "content": f"hi, I am Jane M\u00dcLLER, {EMAIL}"},
        {"role": "assistant", "content": "Hi!"},
    ]
    with TestClient(create_app(settings, build_pipeline(settings, embedder))) as client:
        first = client.post("/v1/query", json={"question": question}).json()  # cached under its text
        follow = client.post("/v1/query", json={"question": "and for a gift card?", "history": history}).json()
        vote = {"answer_id": follow["answer_id"], "rating": "down", "reason": f"wrong, mail {EMAIL}"}
        assert client.post("/v1/feedback", json=vote).status_code == 200
        assert client.post("/v1/query", json={"question": question}).json()["cache"]["hit"] is True
        client.app.state.support.flush()
        assert _holding(data_dir, EMAIL) and _holding(data_dir, question)

        # By what the customer wrote, from the command line: shown first, deleted with --yes.
        shown = _rag("forget", "--match", EMAIL.upper(), data_dir=data_dir)
        assert shown.returncode == 0 and "1 answers found" in shown.stdout and "nothing deleted" in shown.stdout
        by_name = _rag("forget", "--match", "jane m\u00fcller", data_dir=data_dir)  # any case, not only ASCII
        assert "1 answers found" in by_name.stdout, by_name
        assert _holding(data_dir, EMAIL)
        done = _rag("forget", "--match", EMAIL, "--yes", data_dir=data_dir)
        assert done.returncode == 0 and '"feedback": 1' in done.stdout and '"answer_history": 1' in done.stdout, done
        assert _holding(data_dir, EMAIL) == []  # the log, the conversation, the feedback: nowhere on disk

        # By id, over HTTP: the answer log's row and the cached answer to its question.
        gone = client.delete(f"/v1/answers/{first['answer_id']}")
        assert gone.status_code == 200 and gone.json()["deleted"]["answers"] == 1, gone.text
        assert gone.json()["deleted"]["cached_answers"] == 1
        assert _rows(data_dir, "SELECT 1 FROM answers WHERE id = ?", first["answer_id"]) == []
        assert client.post("/v1/query", json={"question": question}).json()["cache"]["hit"] is False
        client.delete(f"/v1/answers/{client.post('/v1/query', json={'question': question}).json()['answer_id']}")
        assert [p for p in _holding(data_dir, question) if p.startswith("cache")] == []  # nor in its WAL
        again = client.delete(f"/v1/answers/{first['answer_id']}")
        assert again.status_code == 404 and again.json()["error"]["code"] == "not_found"

    refused = _rag("forget", data_dir=data_dir)
    assert refused.returncode == 1 and "--answer ID" in refused.stderr
    unknown = _rag("forget", "--answer", first["answer_id"], "--yes", data_dir=data_dir)  # a script must see it
    assert unknown.returncode == 1 and "not in the answer log" in unknown.stderr, unknown


def test_a_lifted_block_leaves_no_copy_of_the_question_it_held(tmp_path: Path, corpus: Path, embedder: Any) -> None:
    """`rag forget` names the thumbs-down block that holds the customer's words; lifting it as
    told must leave them nowhere on disk (they stayed in both write-ahead logs)."""
    from fastapi.testclient import TestClient

    from ingest.runner import ingest
    from serving.app import create_app

    data_dir = tmp_path / "data"
    settings = make_settings(data_dir, backend="extractive")
    ingest([corpus], "default", settings, embedder, progress=False)
    with TestClient(create_app(settings, build_pipeline(settings, embedder))) as client:
        answer = client.post("/v1/query", json={"question": f"{EMAIL} here: how long do refunds take?"}).json()
        vote = {"answer_id": answer["answer_id"], "rating": "down"}
        assert client.post("/v1/feedback", json=vote).status_code == 200
        client.app.state.support.flush()
        [block] = client.get("/v1/cache/blocks").json()["data"]
        done = _rag("forget", "--match", EMAIL, "--yes", data_dir=data_dir)
        assert done.returncode == 0 and f"blocks ({block['id']})" in done.stderr, done
        assert client.delete(f"/v1/cache/blocks/{block['id']}").status_code == 200
        assert _holding(data_dir, EMAIL) == []


@pytest.fixture(params=["sqlite", "postgres"])
def support(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        store = SupportStore(_Sqlite(tmp_path / "support.sqlite"))
        yield store
        store.close()
    else:
        from serving.database import Database

        db = Database(request.getfixturevalue("database_url")).open()
        store = SupportStore(_Postgres(db))
        yield store
        store.close()
        db.close()


def _answer(answer_id: str, at: float) -> AnswerRecord:
    before = [{"role": "user", "content": "before"}]
    return AnswerRecord(
        answer_id, at, "default", None, "q?", "a", "quoted", None, None, None, None, "", 1.0, None, [], before
    )


def test_the_retention_limit_deletes_what_is_older(support: SupportStore) -> None:
    now = time.time()
    for answer_id, age_days in (("old", 40), ("new", 1)):
        support.record(_answer(answer_id, now - age_days * 86400))
        support.flush()
        support.add_feedback(Feedback(answer_id, "default", "down", "no", None, None, now - age_days * 86400))
    assert support.older(now - 30 * 86400) == {"answers": 1, "feedback": 1, "handoffs": 0}
    deleted = support.expire(now - 30 * 86400)
    assert deleted == {"answer_history": 1, "hit_verdicts": 0, "answers": 1, "feedback": 1, "handoffs": 0}
    assert support.answer("old") is None and support.answer("new") is not None
    assert support.conversation("new") == [{"role": "user", "content": "before"}]
    assert [f.answer_id for f in support.feedback()] == ["new"]


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_the_retention_limit_deletes_finished_jobs(engine: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    from serving.jobs import JobRequest, JobStore

    body = JobRequest(questions=[{"question": "Do gift cards expire?"}], collection="default")  # type: ignore[list-item]
    if engine == "sqlite":
        store: Any = JobStore(tmp_path / "jobs.sqlite")
        done, waiting = store.create(body), store.create(body)
        store.set_status(done, "done")
    else:
        from serving.database import Database
        from serving.pg_jobs import PgJobStore

        db = Database(request.getfixturevalue("database_url")).open()
        store = PgJobStore(db)
        done = store.create(body)
        assert store.take() == done
        store.set_status(done, "done")
        waiting = store.create(body)
    assert store.expire(time.time() - 3600) == 0  # finished a moment ago: within the limit
    assert store.finished_before(time.time() + 1) == 1
    assert store.expire(time.time() + 1) == 1
    assert store.get(done) is None and store.get(waiting) is not None  # one not finished stays
    store.close()
    if engine == "postgres":
        db.close()


def test_rag_forget_older_than_counts_first_and_deletes_with_yes(tmp_path: Path) -> None:
    """The retention limit from cron: without --yes it says how much it would delete (an
    operator who typed 0.1 for 10 sees it), with --yes it deletes that."""
    from serving.jobs import JobRequest, JobStore

    data_dir = tmp_path / "data"
    now = time.time()
    support = SupportStore(_Sqlite(data_dir / "support.sqlite"))
    for answer_id, age_days in (("old", 40), ("new", 1)):
        support.record(_answer(answer_id, now - age_days * 86400))
        support.flush()
        support.add_feedback(Feedback(answer_id, "default", "down", "no", None, None, now - age_days * 86400))
    support.close()
    jobs = JobStore(data_dir / "jobs.sqlite")
    body = JobRequest(questions=[{"question": "Do gift cards expire?"}], collection="default")  # type: ignore[list-item]
    for age_days in (40, 1):
        job = jobs.create(body)
        jobs.set_status(job, "done")
        jobs._db.execute("UPDATE jobs SET finished_at = ? WHERE id = ?", (now - age_days * 86400, job))
    jobs.close()

    shown = _rag("forget", "--older-than", "30", data_dir=data_dir)
    assert shown.returncode == 0, shown
    assert (
        "older than 30 days: 1 answers (with their conversations, votes and handoffs), 1 feedback, 0 given-up handoffs, 1 finished jobs"
        in shown.stdout
    )
    assert "nothing deleted" in shown.stdout and len(_rows(data_dir, "SELECT id FROM answers")) == 2
    done = _rag("forget", "--older-than", "30", "--yes", data_dir=data_dir)
    assert done.returncode == 0 and '"answers": 1' in done.stdout and '"jobs": 1' in done.stdout, done
    assert _rows(data_dir, "SELECT id FROM answers") == [("new",)]
    assert "0 answers" in _rag("forget", "--older-than", "30", data_dir=data_dir).stdout


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_an_erasure_reaches_batch_jobs_and_a_deleted_job_is_gone(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A batch job keeps its questions, conversations and answers: an erasure by what the
    customer wrote erases those that hold it (the job's other results stay, in order), and a
    job deleted is gone with everything in it."""
    from serving.jobs import JobRequest, JobStore

    asked = [
        {"question": "Do gift cards expire?", "id": "t1"},
        {"question": "and for a gift card?", "history": [{"role": "user", "content": f"I am {EMAIL}"}]},
        {"question": f"my mail is {EMAIL.upper()}, where is my order?", "id": "t3"},
    ]
    body = JobRequest(questions=asked, collection="default")  # type: ignore[arg-type]
    other = JobRequest(questions=[{"question": f"{EMAIL}: refunds?"}], collection="billing")  # type: ignore[list-item]
    if engine == "sqlite":
        store: Any = JobStore(tmp_path / "jobs.sqlite")
        job, elsewhere = store.create(body), store.create(other)
    else:
        from serving.database import Database
        from serving.pg_jobs import PgJobStore

        db = Database(request.getfixturevalue("database_url")).open()
        store = PgJobStore(db)
        job, elsewhere = store.create(body), store.create(other)
        assert store.take() == job
    store.record(job, 0, {"id": "t1", "question": "Do gift cards expire?", "answer": f"Yes, {EMAIL}"})
    store.record(job, 1, {"id": "1", "question": "and for a gift card?", "answer": "They never expire."})

    assert store.holding(EMAIL.upper(), "default") == {job: [0, 1, 2]}  # answer, conversation, question
    assert store.holding(EMAIL) == {job: [0, 1, 2], elsewhere: [0]}
    assert store.forget(EMAIL, "default") == {job: [0, 1, 2]}
    assert store.holding(EMAIL) == {elsewhere: [0]} and store.pending(job) == []  # none answered afterwards
    store.record(job, 2, {"id": "t3", "question": asked[2]["question"], "answer": "late"})  # a worker's late write
    store.set_status(job, "done")
    results = store.get(job)["results"]
    assert [r["id"] for r in results] == ["t1", "1", "t3"]
    assert {r["error"]["code"] for r in results} == {"forgotten"} and not store.holding("late")
    assert store.delete(elsewhere) and store.get(elsewhere) is None and not store.delete(elsewhere)
    assert store.holding(EMAIL) == {}
    if engine == "sqlite":
        store.close()
        assert files_holding(tmp_path, EMAIL) == [] and files_holding(tmp_path, "gift card") == []
    else:
        rows = db.run(lambda c: c.execute("SELECT count(*) FROM job_items WHERE job_id = %s", (elsewhere,)).fetchone())
        assert rows[0] == 0  # the items went with the job
        store.close()
        db.close()


async def test_a_question_erased_while_its_job_runs_is_neither_answered_nor_kept(
    tmp_path: Path, corpus: Path, embedder: Any
) -> None:
    """A running job read its questions when it started: one erased meanwhile (rag forget, another
    connection) must not be answered, logged or handed over afterwards, and one being answered
    as the erasure lands is not kept and leaves no cached answer (a reviewer's find: both were)."""
    import asyncio

    from ingest.runner import ingest
    from serving.jobs import JobRequest, JobRunner, JobStore

    data_dir = tmp_path / "data"
    settings = make_settings(data_dir, backend="extractive")
    ingest([corpus], "default", settings, embedder, progress=False)
    pipe = build_pipeline(settings, embedder)
    store, other = JobStore(data_dir / "jobs.sqlite"), JobStore(data_dir / "jobs.sqlite")
    kept: list[str] = []
    runner = JobRunner(store, pipe, concurrency=1, keep=lambda answer, question, owner, history: kept.append(question))
    answer, gate, asked = pipe.answer, asyncio.Event(), asyncio.Event()

    async def held(question: str, *args: Any, **kwargs: Any) -> Any:  # the real answer, once let go
        asked.set()
        await gate.wait()
        return await answer(question, *args, **kwargs)

    pipe.answer = held  # type: ignore[method-assign]
    being_answered, waiting = f"{EMAIL}: how long do refunds take?", f"{EMAIL} here, do gift cards expire?"
    questions = [{"question": being_answered}, {"question": waiting}, {"question": "Can I pay with PayPal?"}]
    job = store.create(JobRequest(questions=questions, collection="default"))  # type: ignore[arg-type]
    try:
        runner.start(job)
        await asyncio.wait_for(asked.wait(), 30)  # the first question is being answered
        assert await asyncio.to_thread(other.forget, EMAIL) == {job: [0, 1]}
        gate.set()
        for _ in range(300):
            if (done := store.get(job))["status"] == "done":
                break
            await asyncio.sleep(0.1)
        assert kept == ["Can I pay with PayPal?"], kept
        assert [r.get("error", {}).get("code") for r in done["results"]] == ["forgotten", "forgotten", None]
        pipe.answer = answer  # type: ignore[method-assign]
        assert (await answer(being_answered)).cache.hit is False  # its cached answer went with it
    finally:
        gate.set()
        await runner.aclose()
        other.close()


def test_rag_forget_erases_what_a_batch_job_kept(tmp_path: Path, corpus: Path, embedder: Any) -> None:
    """Over HTTP a job's answers are kept in the job and in the answer log; `rag forget --match`
    shows the job's questions beside the answers, and erases both with --yes."""
    from fastapi.testclient import TestClient

    from ingest.runner import ingest
    from serving.app import create_app

    data_dir = tmp_path / "data"
    settings = make_settings(data_dir, backend="extractive")
    ingest([corpus], "default", settings, embedder, progress=False)
    questions = [{"question": f"hi, {EMAIL} here - how long do refunds take?"}, {"question": "Do gift cards expire?"}]
    with TestClient(create_app(settings, build_pipeline(settings, embedder))) as client:
        job_id = client.post("/v1/jobs", json={"questions": questions}).json()["id"]
        deadline = time.monotonic() + 120
        while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] != "done":
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        client.app.state.support.flush()
        shown = _rag("forget", "--match", EMAIL, data_dir=data_dir)
        assert "1 answers found" in shown.stdout and f"1 questions in 1 batch jobs ({job_id})" in shown.stdout, shown
        done = _rag("forget", "--match", EMAIL, "--yes", data_dir=data_dir)
        assert done.returncode == 0 and '"job_questions": 1' in done.stdout and '"answers": 1' in done.stdout, done
        results = client.get(f"/v1/jobs/{job_id}").json()["results"]
        assert results[0]["error"]["code"] == "forgotten" and "answer" in results[1]  # the other result stays
        assert _holding(data_dir, EMAIL) == []
        assert client.delete(f"/v1/jobs/{job_id}").json() == {"id": job_id, "deleted": True}
        assert [p for p in _holding(data_dir, "gift cards expire") if p.startswith("jobs")] == []


@pytest.mark.parametrize("engine", ["local", "redis"])
def test_the_retention_limit_and_an_erasure_reach_every_cached_answer(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path, embedder: Any
) -> None:
    """Cached answers stored before the limit was set have no lifetime that ends: the sweep
    takes them (a person's curated answer stays). An erasure finds a question's answers in any
    scope of its collection, an earlier release's included, without its exact-text key."""
    import uuid

    from cache.redis_store import RedisStore
    from cache.semantic import SemanticCache

    def vec(text: str) -> Any:
        return embedder.embed_batch([text])[0]

    prefix = f"t{uuid.uuid4().hex[:8]}:"

    def store() -> Any:
        return RedisStore(request.getfixturevalue("redis_url"), 384, prefix=prefix) if engine == "redis" else tmp_path

    before = SemanticCache(store(), dimension=384, release="1.0.0")
    before.put("s", "How long do refunds take?", vec("How long do refunds take?"), {"answer": "5 days"}, tag="default")
    before.close()
    cache = SemanticCache(store(), dimension=384, release="1.1.0")
    cache.put("s", "how long do refunds take", vec("How long do refunds take?"), {"answer": "5 days"}, tag="default")
    cache.put("s", "How long do refunds take?", vec("How long do refunds take?"), {"answer": "5 days"}, tag="other")
    assert cache.forget({"How long do refunds take?"}, "default") == 2  # both releases', not the other collection's
    assert cache.stats()["entries"] == 1
    pinned = {"answer": "No.", "curated_id": "c1"}
    cache.put("p", "Do gift cards expire?", vec("Do gift cards expire?"), pinned, tag="default", keep=True)
    assert cache.expire(time.time() - 3600) == 0  # stored a moment ago: within the limit
    assert cache.expire(time.time() + 1) == 1  # the other collection's answer; the curated one stays
    assert cache.get_exact("p", "Do gift cards expire?") is not None
    cache.close()


def test_forget_names_the_curated_answers_and_blocks_it_does_not_reach(tmp_path: Path) -> None:
    """A curated answer made from a customer's correction holds their words, and a thumbs-down
    block the question: an erasure leaves them (a person decides), and says where they are."""
    from typer.testing import CliRunner

    from cli.app import app as cli_app
    from serving.curation import CuratedStore
    from serving.support_store import open_support_store

    support = open_support_store(tmp_path, None)
    CuratedStore(support.sql).create("default", f"refund for {EMAIL}?", "Yes.", [], "admin", "feedback")
    support.keep_block("s", {"id": "b1", "question": f"where is my refund, {EMAIL}"})
    support.close()
    told = CliRunner().invoke(cli_app, ["forget", "--match", EMAIL, "--data-dir", str(tmp_path)])
    assert told.exit_code == 0, told.output
    assert "also in 1 curated answers" in told.output and "also in 1 thumbs-down blocks (b1)" in told.output

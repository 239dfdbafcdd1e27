"""POST /v1/jobs and GET /v1/jobs/{id} over real HTTP: progress, results in order, failures
recorded, and jobs that survive a restart (persisted in SQLite)."""

import time
from pathlib import Path
from typing import Any

import httpx

from serving.jobs import JobQuestion, JobRequest, JobStore

from .servers import serving


def _wait(url: str, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/v1/jobs/{job_id}").json()
        if job["status"] == "done":
            return job  # type: ignore[no-any-return]
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not done in {timeout} s: {job}")


def test_a_job_answers_every_question_and_records_failures(example_data_dir: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    questions = ["How long do refunds take?", "", "Do gift cards expire?", "Which payment methods do you accept?"]
    with serving(example_data_dir, embedder, backend="extractive") as url:
        created = httpx.post(
            f"{url}/v1/jobs", json={"questions": [{"question": q, "id": f"q{i}"} for i, q in enumerate(questions)]}
        )
        assert created.status_code == 202 and created.json()["status"] == "queued"
        job = _wait(url, created.json()["id"])
        assert job["progress"] == {"total": 4, "done": 4, "failed": 1}
        assert [r["id"] for r in job["results"]] == ["q0", "q1", "q2", "q3"]
        assert job["results"][1]["error"]["param"] == "question"
        assert "never expire" in job["results"][2]["answer"] and job["results"][2]["citations"]
        # A job's answers take feedback as a route's do: a thumbs-down evicts the cached one.
        gift = job["results"][2]
        assert gift["needs_human"] is None and len(gift["answer_id"]) == 32
        down = httpx.post(f"{url}/v1/feedback", json={"answer_id": gift["answer_id"], "rating": "down"}, timeout=30)
        assert down.status_code == 200 and down.json()["evicted"] >= 1, down.text
        missing = httpx.get(f"{url}/v1/jobs/job-nope")
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "job_id"
        bad_turn = {"questions": [{"question": "and then?", "history": [{"role": "user"}]}]}
        refused = httpx.post(f"{url}/v1/jobs", json=bad_turn)  # refused, not a job stuck for good
        assert refused.status_code == 400 and "content" in refused.json()["error"]["param"], refused.text
        assert job["collection"] == "default"  # the collection checked, not null
        unknown = httpx.post(f"{url}/v1/jobs", json={"questions": [{"question": "hi?"}], "collection": "nope"})
        assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "collection"


def test_jobs_survive_a_restart(example_data_dir: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    # A job cut off by a restart: queued with one of its three questions already answered.
    store = JobStore(example_data_dir / "jobs.sqlite")
    body = JobRequest(questions=[JobQuestion(question=q) for q in ("Do gift cards expire?", "How long do refunds take?", "Do you ship internationally?")])  # fmt: skip
    job_id = store.create(body)
    store.record(job_id, 0, {"id": "0", "question": "Do gift cards expire?", "answer": "kept from before", "citations": [], "cache": {}})  # fmt: skip
    store.set_status(job_id, "running")
    store.close()
    with serving(example_data_dir, embedder, backend="extractive") as url:  # start-up resumes it
        job = _wait(url, job_id)
    assert job["progress"] == {"total": 3, "done": 3, "failed": 0}
    assert job["results"][0]["answer"] == "kept from before"  # not asked again
    assert all(r["citations"] for r in job["results"][1:])
    with serving(example_data_dir, embedder, backend="extractive") as url:  # and it stays there
        assert httpx.get(f"{url}/v1/jobs/{job_id}").json()["status"] == "done"

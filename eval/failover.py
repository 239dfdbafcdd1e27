"""`rag eval failover`: jobs survive a replica that dies mid-job.

Two `rag serve` replicas (extractive backend) share a PostgreSQL (and a Redis) started from
the PyPI wheels (:mod:`eval.engines`). Each run posts a job to one replica, waits until
some of its questions are answered, ``kill -9``s whichever replica holds the job, and waits
for the other to finish it; then the dead replica is started again for the next run.

Per run it records: how many questions were answered when the kill came (a run counts as
killed mid-job when not all), finished or lost (not done in time), double results (a
question answered twice, a result missing, or results out of order), and how long the job
took to finish after the kill (the lease, ``RAG_JOB_LEASE_S``, is part of it). The cache is
off, so each run's questions are answered, not served from an earlier run's.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from tqdm import tqdm

from .engines import Engine, postgres_engine, redis_engine
from .hosts import Replica
from .processes import free_port


def _holder(db_url: str, job_id: str) -> str:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT worker FROM jobs WHERE id = %s", (job_id,)).fetchone()
    return str(row[0]) if row else ""


def _one_run(replicas: list[Engine], client: httpx.Client, db_url: str, n: int, timeout_s: float) -> dict[str, Any]:
    questions = [{"question": f"How long do refunds take for order {i}?", "id": f"q{i}"} for i in range(n)]
    job = client.post(f"{replicas[0].url}/v1/jobs", json={"questions": questions}).json()
    url = f"{replicas[0].url}/v1/jobs/{job['id']}"
    deadline = time.monotonic() + timeout_s
    while (progress := client.get(url).json()["progress"])["done"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    worker = _holder(db_url, job["id"])
    holder = next(r for r in replicas if r.proc is not None and f":{r.proc.pid}:" in worker)
    survivor = next(r for r in replicas if r is not holder)
    holder.kill()
    killed = time.monotonic()
    body: dict[str, Any] = {}
    while time.monotonic() - killed < timeout_s:
        body = client.get(f"{survivor.url}/v1/jobs/{job['id']}").json()
        if body["status"] == "done":
            break
        time.sleep(0.1)
    finished = time.monotonic() - killed
    holder.start()  # back for the next run
    done = body.get("status") == "done"
    ids = [r.get("id") for r in body.get("results", [])]
    return {
        "job": job["id"],
        "killed": holder.name,
        "answered_before_kill": progress["done"],  # of n: the kill came mid-job when fewer
        "finished": done,
        "double_results": done and ids != [q["id"] for q in questions],
        "seconds_after_kill": round(finished, 2) if done else None,
    }


def run_failover(
    corpus: Path, runs: int = 20, questions: int = 40, lease_s: float = 3.0, timeout_s: float = 120.0
) -> dict[str, Any]:
    """``runs`` kill -9 runs against two replicas; the counts and each run's record."""
    from rag.settings import Settings

    work = Path(tempfile.mkdtemp(prefix="rag-failover-"))
    engines: list[Engine] = []
    replicas: list[Engine] = []
    try:
        engines = [redis_engine(work / "redis").start(), postgres_engine(work / "postgres").start()]
        _ingest(corpus, work / "a" / "data")
        shutil.copytree(work / "a" / "data", work / "b" / "data")
        env = {
            "RAG_REDIS_URL": engines[0].url, "RAG_DATABASE_URL": engines[1].url, "RAG_JOB_LEASE_S": str(lease_s),
            "RAG_CACHE_ENABLED": "false",  # each run's questions are answered, not served from the last run's
        }  # fmt: skip
        admin = _admin_key(Settings(_env_file=None, database_url=engines[1].url))  # type: ignore[call-arg]
        replicas = [Replica(h, work / h / "data", env, port=free_port()).start() for h in ("a", "b")]
        records = []
        with httpx.Client(headers={"Authorization": f"Bearer {admin}"}, timeout=30) as client:
            for _ in tqdm(range(runs), desc="kill -9 runs", unit="run"):
                records.append(_one_run(replicas, client, engines[1].url, questions, timeout_s))
        after = [r["seconds_after_kill"] for r in records if r["finished"]]
        return {
            "runs": runs,
            "lost_jobs": sum(1 for r in records if not r["finished"]),
            "double_results": sum(1 for r in records if r["double_results"]),
            "killed_mid_job": sum(1 for r in records if r["answered_before_kill"] < questions),
            "lease_s": lease_s,
            "seconds_after_kill_max": max(after, default=None),
            "records": records,
        }
    finally:
        for replica in replicas:
            replica.stop()
        for engine in engines:
            engine.stop()
        shutil.rmtree(work, ignore_errors=True)


def _ingest(corpus: Path, data_dir: Path) -> None:
    from ingest.runner import ingest
    from rag.embedder import SentenceTransformerEmbedder
    from rag.settings import Settings

    settings = Settings(_env_file=None, data_dir=data_dir)  # type: ignore[call-arg]
    ingest([corpus], "default", settings, SentenceTransformerEmbedder().load(), progress=False)


def _admin_key(settings: Any) -> str:
    from serving.keys import open_key_store

    store = open_key_store(settings)
    try:
        return store.create([], admin=True, name="failover")[0]
    finally:
        store.close()

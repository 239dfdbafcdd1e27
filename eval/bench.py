"""`rag bench`: latency percentiles and throughput of every path a question can take, over
HTTP at several concurrency levels, beside a reference pipeline built the common way.

Paths (each measured at every concurrency level):

- ``exact_hit``: questions asked before, word for word;
- ``semantic_hit``: the same questions reworded a little ("Hi! ..."); only responses the
  service served as semantic hits count;
- ``miss_overhead``: the cache off, retrieval + prompt + the ``instant`` backend, which
  answers at once: everything a miss costs except the LLM;
- ``miss_backend``: the cache off, the configured backend (llama.cpp, vLLM, ...).

The servers are real ``rag serve`` processes on 127.0.0.1 (or ``--url``, where only the
paths its configuration allows are measured), fed by an async HTTP client in this process.
The reference (``eval/reference.py``: LangChain + GPTCache, the same instant answer) gets
the same workload in the same run; ``ratios`` compare the two.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from .bench_report import ratios, scaling
from .bench_shared import redis_paths
from .processes import free_port, server_process
from .stats import latency_summary

# A greeting or a thank-you around a question changes its words, not what it asks: the
# service should serve these from the cache as near duplicates.
REWORDINGS = ("Hi! {q}", "{q} Thanks!", "Hello, {q}", "Quick question: {q}")


@dataclass
class Workload:
    seed: list[str]  # asked once to fill the cache; then the exact hits
    reworded: list[str] = field(default_factory=list)  # near duplicates of the seed
    misses: list[str] = field(default_factory=list)


def load_workload(corpus: Path, qa: Path | None) -> Workload:
    records = [json.loads(line) for line in corpus.read_text().splitlines() if line.strip()]
    seed = [r["question"] for r in records if r.get("question")]
    if not seed:
        raise ValueError(
            f"{corpus} has no `question` fields: rag bench needs an FAQ-shaped corpus (id, question, answer)"
        )
    misses = [json.loads(line)["question"] for line in qa.read_text().splitlines() if line.strip()] if qa else []
    reworded = [form.format(q=q) for form in REWORDINGS for q in seed]
    return Workload(seed, reworded, misses or seed)


def percentiles(latencies_ms: list[float], wall_s: float) -> dict[str, float]:
    return {**latency_summary(latencies_ms), "rps": round(len(latencies_ms) / wall_s, 2), "n": len(latencies_ms)}


@dataclass
class LoadResult:
    latencies: list[float]
    wall_s: float
    other: int = 0  # answered, with another cache outcome than the one measured
    errors: int = 0  # a 4xx/5xx or a broken connection: counted, never the end of the run
    error_sample: str | None = None


async def _load(
    url: str, questions: list[str], concurrency: int, count: int, want: str | None, start: int = 0
) -> LoadResult:
    """``count`` requests cycling through ``questions`` from ``start``, ``concurrency`` at a
    time. The latencies are those of the answers whose cache outcome is ``want`` (any when
    None); a failed request (the reference's SQLite store answers "database is locked" under
    concurrency) is counted as an error beside them."""
    result = LoadResult([], 0.0)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for i in range(start, start + count):
        queue.put_nowait(questions[i % len(questions)])
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                question = queue.get_nowait()
                started = time.perf_counter()
                try:
                    response = await client.post("/v1/query", json={"question": question})
                    response.raise_for_status()
                    body = response.json()
                except (httpx.HTTPError, ValueError) as exc:
                    result.errors += 1
                    result.error_sample = result.error_sample or f"{type(exc).__name__}: {exc}"[:300]
                    continue
                elapsed = (time.perf_counter() - started) * 1000
                if want is None or _outcome(body) == want:
                    result.latencies.append(elapsed)
                else:
                    result.other += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.wall_s = time.perf_counter() - started
    return result


def _outcome(body: dict[str, Any]) -> str:
    cache = body.get("cache") or {}
    if "kind" in cache:  # this service
        return str(cache["kind"] or "miss")
    return "hit" if cache.get("hit") else "miss"  # the reference: GPTCache does not tell


def measure(
    url: str, questions: list[str], levels: list[int], requests: int, want: str | None, bar: Any
) -> dict[str, Any]:
    """Each level (and its warm-up) takes the questions after the previous level's: a backend
    with a prefix cache (vLLM's) would otherwise answer a later level from the whole prompts an
    earlier one left in it. ``repeated`` counts the questions a level had to ask again because
    the list ran out."""
    out: dict[str, Any] = {}
    asked = 0
    for c in levels:
        count = max(requests, 4 * c)
        warm = min(count, 2 * c)
        asyncio.run(_load(url, questions, c, warm, want, start=asked))  # warm the connections
        run = asyncio.run(_load(url, questions, c, count, want, start=asked + warm))
        repeated = max(0, min(count, asked + warm + count - len(questions)))
        asked += warm + count
        bar.update(1)
        failures = {"errors": run.errors, "error_sample": run.error_sample} if run.errors else {}
        if not run.latencies:
            out[f"c{c}"] = failures or None
            continue
        out[f"c{c}"] = (
            percentiles(run.latencies, run.wall_s)
            | ({"other_outcomes": run.other} if run.other else {})
            | ({"repeated": repeated} if repeated else {})
            | failures
        )
    return out


def _server(cmd: list[str], env: dict[str, str], log: Path) -> Any:
    port = free_port()
    return server_process([*cmd, "--port", str(port)], env, log, port)


def _service(data_dir: Path, backend: str, cache: bool, log: Path, env_extra: dict[str, str]) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")} | env_extra
    env |= {"RAG_DATA_DIR": str(data_dir), "RAG_BACKEND": backend, "RAG_CACHE_ENABLED": str(cache).lower()}
    env |= {"RAG_COLLECTION": "bench", "HF_HUB_OFFLINE": "1"}
    return _server([sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1"], env, log)


def _reference(corpus: Path, cache: bool, log: Path) -> Any:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "eval.reference", "--corpus", str(corpus)] + ([] if cache else ["--no-cache"])
    return _server(cmd, env, log)


def _hit_paths(url: str, work: Workload, levels: list[int], requests: int, bar: Any, ours: bool) -> dict[str, Any]:
    """Exact and semantic hits; GPTCache has one kind of hit (embed, search) for both."""
    asyncio.run(_load(url, work.seed, 4, len(work.seed), None))  # every seed question answered once: cached
    exact = measure(url, work.seed, levels, requests, "exact" if ours else "hit", bar)
    semantic = measure(url, work.reworded, levels, requests, "semantic" if ours else "hit", bar)
    return {"exact_hit": exact, "semantic_hit": semantic}


def ingest_rates(corpus: Path, data_dir: Path, settings: Any, reference: bool) -> dict[str, Any]:
    """Chunks per second of a fresh ingest (split, embed, index, write), ours and the reference's."""
    from ingest.runner import ingest
    from rag.embedder import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder.from_settings(settings).load()
    started = time.perf_counter()
    report = ingest([corpus], "bench", settings, embedder, progress=False)
    ours = report.chunks_added / (time.perf_counter() - started)
    out: dict[str, Any] = {"ours": round(ours, 1), "chunks": report.chunks_added, "reference": None}
    if reference:
        from eval.reference import build_index, embeddings

        lc = embeddings()
        lc.embed_query("warm up")  # loaded, like ours, before the clock starts
        started = time.perf_counter()
        _, chunks = build_index(corpus, lc, settings.chunk_size, settings.chunk_overlap)
        out["reference"] = round(chunks / (time.perf_counter() - started), 1)
        out["reference_chunks"] = chunks
    return out


def _our_paths(
    data_dir: Path,
    scratch: Path,
    env: dict[str, str],
    work: Workload,
    levels: list[int],
    requests: int,
    backend: tuple[str, int] | None,
    bar: Any,
) -> dict[str, Any]:
    """Our own service on the bench's data: the two hit paths, the miss overhead (instant
    backend), and the real backend's misses when ``backend`` = (name, requests) is given."""
    with _service(data_dir, "instant", True, scratch / "service-cache.log", env) as service:
        paths = _hit_paths(service, work, levels, requests, bar, ours=True)
    with _service(data_dir, "instant", False, scratch / "service-miss.log", env) as service:
        paths["miss_overhead"] = measure(service, work.misses, levels, requests, None, bar)
    paths["miss_backend"] = None
    if backend is not None:
        name, backend_requests = backend
        with _service(data_dir, name, False, scratch / "service-backend.log", env) as service:
            paths["miss_backend"] = measure(service, work.misses, levels, backend_requests, None, bar)
    return paths


def _service_env(settings: Any) -> dict[str, str]:
    """The settings our servers take from the bench's own."""
    env = {
        "RAG_EMBEDDING_BATCH_SIZE": str(settings.embedding_batch_size),
        "RAG_EMBEDDING_ONNX": settings.embedding_onnx,
    }
    if settings.vllm_url:
        env["RAG_VLLM_URL"] = settings.vllm_url
    return env


def run_bench(
    corpus: Path,
    qa: Path | None,
    settings: Any,
    *,
    levels: list[int],
    requests: int,
    backend_requests: int,
    url: str | None = None,
    reference: bool = True,
    skip_backend: bool = False,
    progress: bool | None = None,
    redis: bool = False,
) -> dict[str, Any]:
    from eval.reference import available

    work = load_workload(corpus, qa)
    missing = available() if reference else "not asked for (--no-reference)"
    scratch = Path(tempfile.mkdtemp(prefix="rag-bench-"))
    data_dir = scratch / "data"
    bench_settings = settings.model_copy(update={"data_dir": data_dir})
    result: dict[str, Any] = {"paths": {}, "reference": None, "ratios": {}, "levels": levels}
    # One step a path and level: two hit paths, then (our own servers) the two miss paths,
    # then the reference's three.
    steps = len(levels) * (2 + (0 if url else 1 + (not skip_backend) + 2 * redis) + (3 if missing is None else 0))
    try:
        rates = ingest_rates(corpus, data_dir, bench_settings, reference=missing is None)
        result["ingest_chunks_per_s"] = rates["ours"]
        result["ingest"] = rates
        env = _service_env(settings)
        with tqdm(total=steps, desc="bench", unit="run", disable=None if progress is None else not progress) as bar:
            if url:  # someone else's server: its cache and backend are what they are
                result["paths"] = _hit_paths(url, work, levels, requests, bar, ours=True)
                result["paths"]["miss_overhead"] = None
                result["paths"]["miss_backend"] = None
            else:
                backend = None if skip_backend else (settings.backend, backend_requests)
                result["paths"] = _our_paths(data_dir, scratch, env, work, levels, requests, backend, bar)
                if backend is not None:
                    result["backend"] = settings.backend
                if redis:  # the same hit paths with the cache on Redis, and replicas' hit rates
                    result["redis"] = redis_paths(
                        lambda d, log, e: _service(d, "instant", True, log, e),
                        lambda u: _hit_paths(u, work, levels, requests, bar, ours=True),
                        data_dir, scratch, env, work, limit=400,
                    )  # fmt: skip
            if missing is None:
                with _reference(corpus, True, scratch / "reference-cache.log") as ref:
                    ref_paths = _hit_paths(ref, work, levels, requests, bar, ours=False)
                with _reference(corpus, False, scratch / "reference-miss.log") as ref:
                    ref_paths["miss_overhead"] = measure(ref, work.misses, levels, requests, None, bar)
                result["reference"] = {"paths": ref_paths, "ingest_chunks_per_s": rates["reference"]}
            else:
                result["reference_missing"] = missing
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result["ratios"] = ratios(result)
    result["scaling"] = scaling(result["paths"])
    return result

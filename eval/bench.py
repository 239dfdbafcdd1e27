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
import numpy as np
from tqdm import tqdm

from .processes import free_port, server_process
from .stats import latency_summary

PATHS = ("exact_hit", "semantic_hit", "miss_overhead", "miss_backend")
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
    steps = len(levels) * (2 + (0 if url else 1 + (not skip_backend)) + (3 if missing is None else 0))
    try:
        rates = ingest_rates(corpus, data_dir, bench_settings, reference=missing is None)
        result["ingest_chunks_per_s"] = rates["ours"]
        result["ingest"] = rates
        env = {
            "RAG_EMBEDDING_BATCH_SIZE": str(settings.embedding_batch_size),
            "RAG_EMBEDDING_ONNX": settings.embedding_onnx,
        }
        if settings.vllm_url:
            env["RAG_VLLM_URL"] = settings.vllm_url
        with tqdm(total=steps, desc="bench", unit="run", disable=None if progress is None else not progress) as bar:
            if url:  # someone else's server: its cache and backend are what they are
                result["paths"] = _hit_paths(url, work, levels, requests, bar, ours=True)
                result["paths"]["miss_overhead"] = None
                result["paths"]["miss_backend"] = None
            else:
                with _service(data_dir, "instant", True, scratch / "service-cache.log", env) as service:
                    result["paths"] = _hit_paths(service, work, levels, requests, bar, ours=True)
                with _service(data_dir, "instant", False, scratch / "service-miss.log", env) as service:
                    result["paths"]["miss_overhead"] = measure(service, work.misses, levels, requests, None, bar)
                if skip_backend:
                    result["paths"]["miss_backend"] = None
                else:
                    with _service(data_dir, settings.backend, False, scratch / "service-backend.log", env) as service:
                        result["paths"]["miss_backend"] = measure(
                            service, work.misses, levels, backend_requests, None, bar
                        )
                    result["backend"] = settings.backend
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


def _measured(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """A level's row if any request of it was answered (a level can be all errors)."""
    return row if row and "p50_ms" in row else None


def scaling(paths: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each path's requests/s at each level over its rate at the lowest level (what batching,
    here and in vLLM, buys)."""
    out: dict[str, dict[str, float]] = {}
    for path, levels in paths.items():
        rows = [(level, row) for level, row in (levels or {}).items() if _measured(row)]
        if len(rows) < 2:
            continue
        base = rows[0][1]["rps"]
        out[path] = {level: round(row["rps"] / base, 2) for level, row in rows[1:]}
    return out


def ratios(result: dict[str, Any]) -> dict[str, Any]:
    """Reference / ours: latency (p50) and ours / reference: throughput, where both ran."""
    ref = result.get("reference")
    if not ref:
        return {}
    out: dict[str, Any] = {}
    for path, levels in result["paths"].items():
        theirs = ref["paths"].get(path)
        if not levels or not theirs:
            continue
        for level, row in levels.items():
            row, other = _measured(row), _measured(theirs.get(level))
            if row and other:
                out.setdefault(path, {})[level] = {
                    "p50_speedup": round(other["p50_ms"] / row["p50_ms"], 2),
                    "rps_ratio": round(row["rps"] / other["rps"], 2),
                }
    if result.get("ingest_chunks_per_s") and ref.get("ingest_chunks_per_s"):
        out["ingest"] = round(result["ingest_chunks_per_s"] / ref["ingest_chunks_per_s"], 2)
    return out


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{'path':<14}{'level':>6}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'rps':>9}{'errors':>8}   "
        "reference p50 / rps / errors"
    ]
    ref = (result.get("reference") or {}).get("paths", {})
    for path in PATHS:
        for level, row in (result["paths"].get(path) or {}).items():
            if row is None:
                continue
            other = (ref.get(path) or {}).get(level) or {}
            theirs = (
                f"   {other['p50_ms']:.2f} ms / {other['rps']:.1f}" if _measured(other) else "   - / -" if other else ""
            ) + (f" / {other.get('errors', 0)}" if other else "")
            figures = (
                f"{row['p50_ms']:>9.2f}{row['p95_ms']:>9.2f}{row['p99_ms']:>9.2f}{row['rps']:>9.2f}"
                if _measured(row)
                else f"{'-':>9}{'-':>9}{'-':>9}{'-':>9}"
            )
            lines.append(f"{path:<14}{level:>6}{figures}{row.get('errors', 0):>8}{theirs}")
    for side, paths in (("", result["paths"]), ("reference ", ref)):
        for path, levels in (paths or {}).items():
            for level, row in (levels or {}).items():
                if row and row.get("errors"):
                    lines.append(f"{side}{path} {level}: {row['errors']} failed, e.g. {row['error_sample']}")
    for path, levels in (result.get("scaling") or {}).items():
        first = next(level for level, row in result["paths"][path].items() if _measured(row))
        lines.append(f"{path} throughput vs {first}: " + ", ".join(f"{lv} {x:.1f}x" for lv, x in levels.items()))
    ingest = result.get("ingest", {})
    ref_ingest = f" (reference {ingest['reference']:.0f})" if ingest.get("reference") else ""
    lines.append(f"ingest: {result.get('ingest_chunks_per_s', 0):.0f} chunks/s{ref_ingest}")
    if result.get("reference_missing"):
        lines.append(f"reference: {result['reference_missing']}")
    return "\n".join(lines)


def plot(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """bench-latency.png (p50/p95/p99 by path at each level, ours beside the reference) and
    bench-throughput.png (requests/s against concurrency)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    ref = (result.get("reference") or {}).get("paths", {})
    levels = [f"c{c}" for c in result["levels"]]
    paths = [p for p in PATHS if result["paths"].get(p)]
    fig, axes = plt.subplots(1, len(levels), figsize=(5 * len(levels), 4.5), squeeze=False)
    for ax, level in zip(axes[0], levels, strict=True):
        labels, bars = [], []
        for path in paths:
            for who, source in (("ours", result["paths"]), ("reference", ref)):
                row = _measured((source.get(path) or {}).get(level))
                if row:
                    labels.append(f"{path}\n{who}")
                    bars.append([row["p50_ms"], row["p95_ms"], row["p99_ms"]])
        x = np.arange(len(labels))
        for i, name in enumerate(("p50", "p95", "p99")):
            ax.bar(x + (i - 1) * 0.27, [b[i] for b in bars], 0.27, label=name)
        ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("latency (ms, log)")
        ax.set_title(f"concurrency {level[1:]}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    latency_png = out_dir / "bench-latency.png"
    fig.savefig(latency_png, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for colour, path in enumerate(paths):  # one colour a path; solid ours, dashed the reference
        for who, source, style in (("ours", result["paths"], "-o"), ("reference", ref, "--x")):
            rows = source.get(path) or {}
            points = [(int(level[1:]), rows[level]["rps"]) for level in levels if _measured(rows.get(level))]
            if points:
                ax.plot(*zip(*points, strict=True), style, color=f"C{colour}", label=f"{path} ({who})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrency")
    ax.set_ylabel("requests / s (log)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    throughput_png = out_dir / "bench-throughput.png"
    fig.savefig(throughput_png, dpi=110)
    plt.close(fig)
    return [latency_png, throughput_png]

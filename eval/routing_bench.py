"""`rag bench routing`: where a miss goes decides whether vLLM pays its prefill again.

Starts its own vLLM-CPU replicas (automatic prefix caching on, each pinned to its own
cores) and replays each question set's traffic through the production client
(:class:`rag.generators.vllm.VLLMGenerator`) under each routing policy:

- ``round_robin``: the replicas in turn, as a plain load balancer sends requests;
- ``prefix``: the service's own routing by document set (rag.generators.replicas);
- ``vllm_router_cache_aware``: one URL, vLLM's router (``vllm-router``, when installed)
  with its ``cache_aware`` policy (its own radix tree of the prompts each replica saw) in
  front of the same replicas;
- ``vllm_router_consistent_hash``: the same router hashing the ``X-Session-ID`` header that
  the service sends with each request (the prompt's ``prefix_key``): the service's routing
  key, applied by the router.

The prompts are built once by the pipeline (retrieval, then the few-shot prompt over the
whole retrieved chunks: RAG_LLM_CONTEXT=passages, RAG_CONTEXT_SENTENCES=0, in the order
RAG_PROMPT_ORDER sets) and every policy sends the same requests in the same order, at
a fixed concurrency, each replica's prefix cache emptied first. The traffic is skewed like
support traffic: a question's document (the one retrieval ranks first) is drawn with a Zipf
popularity (``skew``; 0 asks every question once), then a question of that document.
Figures per policy: the prefix-cache hit rate from vLLM's own /metrics (cached prompt
tokens over prompt tokens), time to first token p50/p95, answers per second, and how many
answers differ from round robin's (greedy decoding: routing must not change them).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from .processes import free_port, server_process, vllm_cpu
from .stats import latency_summary

_METRIC_RE = re.compile(r"^vllm:(prompt_tokens_total|prompt_tokens_cached_total)\{[^}]*\} ([0-9.e+]+)$", re.M)


@dataclass
class QuestionSet:
    name: str
    corpus: Path
    questions: list[Path]


def parse_set(spec: str) -> QuestionSet:
    """``NAME=CORPUS:QUESTIONS[,QUESTIONS...]`` (a corpus file or folder; JSONL questions with
    a ``question`` or ``query`` field)."""
    name, sep, rest = spec.partition("=")
    corpus, sep2, questions = rest.partition(":")
    if not (sep and sep2 and name and corpus and questions):
        raise ValueError(f"--set {spec!r}: write NAME=CORPUS:QUESTIONS[,QUESTIONS...]")
    return QuestionSet(name, Path(corpus), [Path(q) for q in questions.split(",")])


def _read_questions(paths: list[Path]) -> list[str]:
    import json

    found: list[str] = []
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                text = row.get("question") or row.get("query")
                if text:
                    found.append(str(text))
    return list(dict.fromkeys(found))


def vllm_router_binary(python: str) -> str | None:
    """``vllm-router`` beside the vLLM interpreter (make vllm-install), else on PATH."""
    beside = Path(python).parent / "vllm-router"
    return str(beside) if beside.exists() else shutil.which("vllm-router")


@contextmanager
def vllm_replicas(python: str, model_dir: str, count: int, logs: Path) -> Any:
    """``count`` vLLM-CPU servers, prefix caching on, each on its own share of the cores."""
    cores = sorted(os.sched_getaffinity(0))
    share = max(1, len(cores) // count)
    with ExitStack() as stack:
        urls = []
        for n in range(count):
            mine = cores[(n * share) % len(cores) :][:share] or cores[:1]
            port = free_port()
            cmd, env = vllm_cpu(
                python,
                model_dir,
                port,
                VLLM_CPU_OMP_THREADS_BIND=",".join(map(str, mine)),
                VLLM_SERVER_DEV_MODE="1",  # POST /reset_prefix_cache between policies
            )
            cmd.append("--enable-prefix-caching")
            urls.append(stack.enter_context(server_process(cmd, env, logs / f"vllm-{n}.log", port, health="/health")))
        yield urls


@contextmanager
def vllm_router(binary: str, urls: list[str], policy: str, logs: Path) -> Any:
    port = free_port()
    cmd = [binary, "--host", "127.0.0.1", "--port", str(port), "--policy", policy, "--worker-urls", *urls]
    with server_process(cmd, dict(os.environ), logs / f"router-{policy}.log", port, health="/health") as url:
        yield url


def _cache_config(url: str) -> tuple[int, int]:
    """(block size, KV cache capacity in blocks) of a replica, from its /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    block = int(re.search(r'[{,]block_size="(\d+)"', text).group(1))  # type: ignore[union-attr]
    tokens = int(re.search(r'kv_cache_size_tokens="(\d+)"', text).group(1))  # type: ignore[union-attr]
    return block, tokens // block


def _simulated(model_dir: str, requests: list[Any], replicas: int, block: int, capacity: int) -> dict[str, Any]:
    """The block-level replay (eval.prefix_sim) of the same prompts: on this bench's replicas,
    to check it against vLLM's own figures, and on GPU fleets of 1-8 replicas (16-token blocks)."""
    from .prefix_sim import fleet_table, simulate, tokenize

    prompts = tokenize(Path(model_dir), [str(r.prompt) for r in requests])
    keys = [r.prefix_key for r in requests]
    return {
        "here": {
            routing: round(simulate(prompts, keys, replicas, routing, block, capacity), 4)
            for routing in ("round_robin", "prefix")
        },
        "gpu_fleet": fleet_table(prompts, keys),
    }


def prefill_share(url: str, request: Any) -> dict[str, float]:
    """Time to first token of one prompt on an idle replica, cold and then with all of it in
    the prefix cache: the share of a miss's TTFT that prefill is, which prefix reuse removes."""
    from rag.generators.vllm import VLLMGenerator

    async def ttft() -> float:  # prefill and one token: the first token's time, text or not
        generator = VLLMGenerator([url], model="gemma3-270m")
        try:
            started = time.perf_counter()
            await generator.generate(replace(request, max_tokens=1, stop=[]))
            return (time.perf_counter() - started) * 1000
        finally:
            await generator.aclose()

    httpx.post(f"{url}/reset_prefix_cache", timeout=30).raise_for_status()
    cold, warm = asyncio.run(ttft()), asyncio.run(ttft())
    return {"cold_ttft_ms": round(cold, 1), "warm_ttft_ms": round(warm, 1), "prefill_share": round(1 - warm / cold, 3)}


def _prefix_counters(urls: list[str]) -> tuple[float, float]:
    """(prompt tokens, of them served from the prefix cache), summed over the replicas."""
    total = cached = 0.0
    for url in urls:
        for name, value in _METRIC_RE.findall(httpx.get(f"{url}/metrics", timeout=10).text):
            if name == "prompt_tokens_total":
                total += float(value)
            else:
                cached += float(value)
    return total, cached


async def _replay(generator: Any, requests: list[Any], concurrency: int) -> dict[str, Any]:
    slots = asyncio.Semaphore(concurrency)
    ttfts: list[float] = []
    answers: list[str] = [""] * len(requests)

    async def one(n: int, request: Any) -> None:
        async with slots:
            started = time.perf_counter()
            pieces: list[str] = []
            async for piece in generator.stream(request):
                if not pieces:
                    ttfts.append((time.perf_counter() - started) * 1000)
                pieces.append(piece)
            if not pieces:  # the first token was a stop ("\n"): it came as the stream ended
                ttfts.append((time.perf_counter() - started) * 1000)
            answers[n] = "".join(pieces)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(n, r) for n, r in enumerate(requests)))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "ttfts": ttfts, "answers": answers}


def run_policy(urls: list[str], replicas: list[str], routing: str, requests: list[Any], concurrency: int) -> dict:
    """One policy's replay over ``urls`` (the replicas, or one router in front of them)."""
    from rag.generators.vllm import VLLMGenerator

    for url in replicas:
        httpx.post(f"{url}/reset_prefix_cache", timeout=30).raise_for_status()
    before = _prefix_counters(replicas)

    async def replay() -> dict[str, Any]:
        generator = VLLMGenerator(urls, model="gemma3-270m", routing=routing)  # type: ignore[arg-type]
        try:
            return await _replay(generator, requests, concurrency)
        finally:
            await generator.aclose()

    out = asyncio.run(replay())
    after = _prefix_counters(replicas)
    prompt_tokens, cached = after[0] - before[0], after[1] - before[1]
    ttft = latency_summary(out["ttfts"])
    return {
        "requests": len(requests),
        "prefix_cache_hit_rate": round(cached / prompt_tokens, 4) if prompt_tokens else None,
        "prompt_tokens": int(prompt_tokens),
        "ttft_p50_ms": ttft.get("p50_ms"),
        "ttft_p95_ms": ttft.get("p95_ms"),
        "answers_per_s": round(len(requests) / out["wall_s"], 3),
        "answers": out["answers"],
    }


def build_requests(qset: QuestionSet, settings: Any, embedder: Any, count: int, skew: float, seed: int) -> dict:
    """The set's traffic as the pipeline would send it to vLLM: ``count`` requests, documents
    drawn with Zipf popularity ``skew`` (ranks shuffled by ``seed``)."""
    from ingest.runner import ingest
    from rag.pipeline import build_pipeline

    questions = _read_questions(qset.questions)
    with tempfile.TemporaryDirectory(prefix="rag-routing-") as scratch:
        base = settings.model_copy(update={"data_dir": Path(scratch)})
        ingest([qset.corpus], "bench", base, embedder, progress=False)
        pipeline = build_pipeline(base, embedder)

        async def prepare_all() -> list[tuple[str, Any]]:
            try:
                preps = []
                for question in questions:
                    prep = await pipeline.prepare(question, "bench")
                    await pipeline.ground(prep)  # retrieval, evidence, the prompt
                    preps.append(prep)
            finally:
                await pipeline.aclose()
            return [(p.chunks[0].document_id, p.request) for p in preps if p.request is not None and p.chunks]

        prepared = asyncio.run(prepare_all())
    by_doc: dict[str, list[Any]] = {}
    for doc, request in prepared:
        by_doc.setdefault(doc, []).append(request)
    if not prepared:
        raise ValueError(f"{qset.name}: no question of {len(questions)} retrieved anything to send vLLM")
    rng = random.Random(seed)
    if skew <= 0:
        stream = [r for _, r in prepared]
        rng.shuffle(stream)
        chosen = stream[:count]
    else:
        docs = list(by_doc)
        rng.shuffle(docs)  # which documents are popular: a seeded draw, not the corpus order
        weights = [1 / (rank + 1) ** skew for rank in range(len(docs))]
        chosen = [rng.choice(by_doc[d]) for d in rng.choices(docs, weights, k=count)]
    contexts = [str(r.prompt)[: str(r.prompt).rindex(r.question.strip())] for r in chosen]
    return {
        "requests": chosen,
        "questions": len(questions),
        "prompts": len(prepared),
        "documents": len(by_doc),
        "distinct_contexts": len(set(contexts)),
        "routing_keys": len({r.prefix_key for r in chosen}),
        "mean_prompt_chars": round(sum(len(str(r.prompt)) for r in chosen) / max(1, len(chosen))),
    }


POLICIES = ("round_robin", "prefix", "vllm_router_cache_aware", "vllm_router_consistent_hash")


def _bench_settings(settings: Any) -> Any:
    """Every question goes to the LLM with the whole retrieved chunks, in RAG_PROMPT_ORDER."""
    return settings.model_copy(
        update={
            "backend": "vllm",
            "cache_enabled": False,
            "llm_context": "passages",
            "context_sentences": 0,
            "llm_min_support": -100.0,
        }
    )


def _differing(answers: list[str], baseline: list[str] | None) -> dict[str, int]:
    """How many answers differ from round robin's to the same requests (none for round robin)."""
    if baseline is None:
        return {}
    return {"answers_differing_from_round_robin": sum(a != b for a, b in zip(answers, baseline, strict=True))}


def run_routing_bench(
    settings: Any,
    sets: list[QuestionSet],
    *,
    python: str,
    model_dir: str,
    replicas: int = 2,
    concurrency: int = 8,
    requests: int = 192,
    skew: float = 1.0,
    seed: int = 0,
    progress: Any = print,
) -> dict[str, Any]:
    from rag.embedder import SentenceTransformerEmbedder

    base = _bench_settings(settings)
    embedder = SentenceTransformerEmbedder.from_settings(base).load()
    traffic = {s.name: build_requests(s, base, embedder, requests, skew, seed) for s in sets}
    router = vllm_router_binary(python)
    result: dict[str, Any] = {
        "replicas": replicas,
        "concurrency": concurrency,
        "skew": skew,
        "max_tokens": base.max_tokens,
        "prompt_order": base.prompt_order,
        "vllm_router": router,
        "sets": {},
    }
    logs = Path(tempfile.mkdtemp(prefix="rag-routing-logs-"))
    progress(f"starting {replicas} vLLM replicas (logs in {logs})")
    with vllm_replicas(python, model_dir, replicas, logs) as urls:
        block, capacity = _cache_config(urls[0])
        result.update(block_size=block, kv_capacity_blocks=capacity)
        first = next(iter(traffic.values()))["requests"][0]
        result["prefill"] = prefill_share(urls[0], first)
        for name, work in traffic.items():
            rows: dict[str, Any] = {}
            answers: dict[str, list[str]] = {}
            for policy in POLICIES:
                if policy.startswith("vllm_router") and router is None:
                    continue
                progress(f"{name}: {policy}, {len(work['requests'])} requests at concurrency {concurrency}")
                if policy.startswith("vllm_router"):
                    kind = policy.removeprefix("vllm_router_")  # consistent_hash: on our X-Session-ID key
                    with vllm_router(router, urls, kind, logs) as url:  # type: ignore[arg-type]
                        row = run_policy([url], urls, "least_loaded", work["requests"], concurrency)
                else:
                    row = run_policy(urls, urls, policy, work["requests"], concurrency)
                rows[policy] = {**row, **_differing(row["answers"], answers.get("round_robin"))}
                answers[policy] = rows[policy].pop("answers")
            info = {k: v for k, v in work.items() if k != "requests"}
            simulated = _simulated(model_dir, work["requests"], replicas, block, capacity)
            result["sets"][name] = {**info, "policies": rows, "simulated": simulated}
    shutil.rmtree(logs, ignore_errors=True)
    return result


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("prefix_cache_hit_rate", "prefix-cache hit rate"), ("ttft_p50_ms", "TTFT p50 (ms)"),
               ("ttft_p95_ms", "TTFT p95 (ms)"), ("answers_per_s", "answers/s")]  # fmt: skip
    sets = list(result["sets"])
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.6))
    for ax, (key, label) in zip(axes, metrics, strict=True):
        policies = list(dict.fromkeys(p for s in sets for p in result["sets"][s]["policies"]))
        width = 0.8 / max(1, len(policies))
        for n, policy in enumerate(policies):
            values = [result["sets"][s]["policies"].get(policy, {}).get(key) or 0 for s in sets]
            ax.bar([i + n * width for i in range(len(sets))], values, width, label=policy)
        ax.set_xticks([i + width * (len(policies) - 1) / 2 for i in range(len(sets))], sets)
        ax.set_title(label)
    axes[0].legend(fontsize=7)
    fig.suptitle(
        f"{result['replicas']} vLLM-CPU replicas, concurrency {result['concurrency']}, Zipf skew {result['skew']}"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

"""The `rag` command. Thin: it parses flags into Settings and calls into the packages."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .errors import RagError
from .settings import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Grounded, cited answers from your documents.")

DataDir = Annotated[
    Optional[Path], typer.Option("--data-dir", help="Where indexes and the cache live [env RAG_DATA_DIR].")
]
Collection = Annotated[Optional[str], typer.Option("--collection", "-c", help="Collection name [env RAG_COLLECTION].")]
Backend = Annotated[
    Optional[str], typer.Option("--backend", "-b", help="Generator backend: llamacpp, extractive [env RAG_BACKEND].")
]


def _settings(**overrides: Any) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        _fail(f"invalid settings: {exc}")
        raise


def _fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _run(fn: Any) -> Any:
    try:
        return fn()
    except RagError as exc:
        _fail(exc.message)


@app.command()
def batch(
    questions: Annotated[Path, typer.Argument(help="JSONL, one question a line: id, question, history (optional).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Answers JSONL; re-running skips answered ids.")],
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="Questions in flight at once.")] = 8,
    collection: Collection = None,
    data_dir: DataDir = None,
    backend: Backend = None,
    progress: Annotated[Optional[bool], typer.Option(help="Progress bar (default: only on a terminal).")] = None,
) -> None:
    """Answer a file of questions: one line out per question, in input order, resumable."""
    from .batch import read_questions, run_batch
    from .pipeline import build_pipeline

    settings = _settings(data_dir=data_dir, collection=collection, backend=backend)
    try:
        items = read_questions(questions)
    except (OSError, ValueError) as exc:
        _fail(str(exc))
        return
    pipeline = _run(lambda: build_pipeline(settings))

    async def answer(item: dict[str, Any]) -> dict[str, Any]:
        result = await pipeline.answer(item["question"], item.get("collection"), history=item.get("history") or None)
        body = result.to_dict()
        return {key: body[key] for key in ("answer", "citations", "cache", "collection")}

    async def main() -> dict[str, int]:
        try:
            return await run_batch(items, output, answer, concurrency, progress)
        finally:
            await pipeline.aclose()

    counts = asyncio.run(main())
    typer.echo(f"{counts['answered']} answered, {counts['failed']} failed, {counts['skipped']} already in {output}")


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders (searched recursively).")],
    collection: Collection = None,
    data_dir: DataDir = None,
    prune: Annotated[
        bool, typer.Option(help="Drop chunks of files deleted from under PATHS since the last run.")
    ] = True,
    progress: Annotated[Optional[bool], typer.Option(help="Progress bars (default: only on a terminal).")] = None,
    index_type: Annotated[
        Optional[str],
        typer.Option(help="flat (exact), hnsw, ivfpq or sq8; default: the collection's own, flat when new."),
    ] = None,
) -> None:
    """Index documents (.txt .md .html .pdf .jsonl) into a collection, incrementally."""
    from ingest.runner import ingest as run_ingest
    from rag.embedder import SentenceTransformerEmbedder

    settings = _settings(data_dir=data_dir, collection=collection)
    embedder = SentenceTransformerEmbedder.from_settings(settings)
    report = _run(
        lambda: run_ingest(
            paths, settings.collection, settings, embedder, prune=prune, progress=progress, index_type=index_type
        )
    )
    for source, reason in report.failed:
        typer.secho(f"skipped {source}: {reason}", fg=typer.colors.YELLOW, err=True)
    for source, reason in report.skipped_lines:
        typer.secho(f"skipped in {source}: {reason}", fg=typer.colors.YELLOW, err=True)
    typer.echo(report.summary())


@app.command()
def serve(
    host: Annotated[Optional[str], typer.Option(help="Bind address [env RAG_HOST].")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port [env RAG_PORT].")] = None,
    backend: Backend = None,
    data_dir: DataDir = None,
    vllm_url: Annotated[
        Optional[str], typer.Option(help="vLLM base URL(s), comma-separated [env RAG_VLLM_URL].")
    ] = None,
    workers: Annotated[Optional[int], typer.Option(help="Worker processes [env RAG_WORKERS].")] = None,
) -> None:
    """Run the REST service."""
    import os
    import tempfile

    import uvicorn

    from serving.auth import KeyStore

    overrides = {"host": host, "port": port, "backend": backend, "data_dir": data_dir, "vllm_url": vllm_url}
    overrides["workers"] = workers
    settings = _settings(**overrides)
    # Every worker builds its app from the environment: hand the flags down that way.
    for name, value in overrides.items():
        if value is not None:
            os.environ[f"RAG_{name.upper()}"] = str(value)
    if settings.backend == "llamacpp":
        # Before any worker starts: a build this CPU cannot run is one line of advice here,
        # not a worker killed by SIGILL (the check runs once per build, CPU and model).
        from .generators.llamacpp import check_loads

        _run(lambda: check_loads(settings.llamacpp_model, settings.data_dir / "checks", models_dir=settings.models_dir))
    bind, message = bind_address(settings.host, KeyStore(settings.data_dir).active())
    typer.secho(message, fg=typer.colors.YELLOW if bind != settings.host else None, err=True)
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Workers write their metrics here; /metrics sums them. A fresh folder per run.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="rag-metrics-")
    uvicorn.run(
        "serving.app:app_from_env",
        factory=True,
        host=bind,
        port=settings.port,
        workers=settings.workers,
        log_config=None,  # the app logs JSON lines itself (RAG_LOG_FORMAT)
        access_log=False,  # one access line per request comes from the app, with its request id
    )


def bind_address(host: str, active_keys: int) -> tuple[str, str]:
    """Where `rag serve` may listen, and what it tells the operator: without API keys,
    only this machine can reach the service."""
    loopback = host in ("127.0.0.1", "localhost", "::1")
    if active_keys:
        return host, f"API keys required ({active_keys} active); listening on {host}"
    if loopback:
        return host, (
            f"no API keys configured: listening on {host} only (this machine). "
            "To serve other hosts, create a key with `rag keys create` and set RAG_HOST."
        )
    return "127.0.0.1", (
        f"no API keys configured: refusing to listen on {host}; listening on 127.0.0.1 only. "
        "Create a key with `rag keys create --collections NAME` (or --admin), then restart."
    )


keys_app = typer.Typer(no_args_is_help=True, help="API keys: create, list, revoke.")
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    collections: Annotated[
        Optional[str], typer.Option(help="Comma-separated collections the key reaches ('*' for all).")
    ] = None,
    admin: Annotated[bool, typer.Option("--admin", help="Every collection, plus admin routes.")] = False,
    name: Annotated[Optional[str], typer.Option(help="A label to recognise the key by.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Create a key and print it once; only its hash is stored."""
    from serving.auth import KeyStore

    settings = _settings(data_dir=data_dir)
    wanted = [c.strip() for c in (collections or "").split(",") if c.strip()]
    store = KeyStore(settings.data_dir)
    key, info = _run(lambda: store.create(wanted, admin=admin, name=name))
    store.close()
    scope = "admin, every collection" if info.admin else "collections: " + ", ".join(info.collections)
    typer.secho(f"key {info.id} ({scope}); shown only now, store it safely:", err=True)
    typer.echo(key)


@keys_app.command("list")
def keys_list(data_dir: DataDir = None) -> None:
    """Keys by id (never the keys themselves)."""
    from serving.auth import KeyStore

    store = KeyStore(_settings(data_dir=data_dir).data_dir)
    for info in store.list():
        state = "revoked" if info.revoked_at else "active"
        kind = "admin" if info.admin else ",".join(info.collections)
        typer.echo(f"{info.id}\t{state}\t{kind}\t{info.name or ''}")
    store.close()


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (from `rag keys list`).")], data_dir: DataDir = None
) -> None:
    """Revoke a key: it stops working within seconds, in every worker."""
    from serving.auth import KeyStore

    store = KeyStore(_settings(data_dir=data_dir).data_dir)
    revoked = store.revoke(key_id)
    store.close()
    if not revoked:
        _fail(f"no active key {key_id!r} - see `rag keys list`")
    typer.echo(f"revoked {key_id}")


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    collection: Collection = None,
    backend: Backend = None,
    data_dir: DataDir = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="Chunks to retrieve.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole response as JSON.")] = False,
) -> None:
    """Answer one question in-process (no server needed)."""
    from rag.pipeline import build_pipeline

    settings = _settings(collection=collection, backend=backend, data_dir=data_dir)

    async def main() -> Any:
        pipeline = build_pipeline(settings)
        try:
            return await pipeline.answer(question, settings.collection, top_k)
        finally:
            await pipeline.aclose()

    answer = _run(lambda: asyncio.run(main()))
    if as_json:
        typer.echo(json.dumps(answer.to_dict(), indent=2, ensure_ascii=False))
        return
    typer.echo(answer.answer)
    for n, c in enumerate(answer.citations, start=1):
        typer.echo(f"  [{n}] {c.title} ({c.document_id}, score {c.score:.2f})")
    status = f"cache {answer.cache.kind} hit" if answer.cache.hit else "cache miss"
    typer.secho(f"{status}, {answer.timings_ms['total']:.0f} ms", dim=True, err=True)


_BENCH_FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"


@app.command()
def bench(
    corpus: Annotated[
        Path, typer.Option(help="FAQ-shaped corpus (id, question, answer): ingested, its questions cached.")
    ] = _BENCH_FIXTURES / "covid_faq_slice.jsonl",
    qa: Annotated[Optional[Path], typer.Option(help="qa.jsonl: the questions of the miss paths.")] = _BENCH_FIXTURES
    / "covid_faq_queries_slice.jsonl",
    url: Annotated[
        Optional[str],
        typer.Option(
            help="Measure this running service (hit paths only; the corpus ingested as its default collection)."
        ),
    ] = None,
    backend: Backend = None,
    vllm_url: Annotated[
        Optional[str], typer.Option(help="vLLM base URL(s) for the miss_backend path [env RAG_VLLM_URL].")
    ] = None,
    concurrency: Annotated[str, typer.Option(help="Comma-separated levels.")] = "1,8,32",
    requests: Annotated[int, typer.Option(help="Requests per path and level (at least 4x the level).")] = 200,
    backend_requests: Annotated[int, typer.Option(help="Requests per level of the miss_backend path.")] = 32,
    skip_backend: Annotated[bool, typer.Option("--skip-backend", help="Leave out miss_backend.")] = False,
    reference: Annotated[
        bool, typer.Option(help="Run the LangChain + GPTCache reference too (pip install -e '.[reference]').")
    ] = True,
    out: Annotated[Optional[Path], typer.Option(help="Write bench.json and PNG plots here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Latency p50/p95/p99 and requests/s of exact hits, semantic hits and misses at each
    concurrency, over HTTP, beside the reference pipeline; ingest chunks/s."""
    from eval.bench import plot, run_bench, table

    settings = _settings(backend=backend, vllm_url=vllm_url)
    levels = [int(x) for x in concurrency.split(",") if x.strip()]
    result = _run(
        lambda: run_bench(
            corpus, qa if qa and qa.exists() else None, settings, levels=levels, requests=requests,
            backend_requests=backend_requests, url=url, reference=reference, skip_backend=skip_backend,
        )
    )  # fmt: skip
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
        pictures = plot(result, out)
        typer.secho(f"wrote {out / 'bench.json'}, " + ", ".join(str(p) for p in pictures), err=True, dim=True)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(table(result))
    for path, levels_ in result["ratios"].items():
        typer.echo(f"vs reference, {path}: {levels_}")


eval_app = typer.Typer(no_args_is_help=True, help="Measure quality and speed on a data set.")
app.add_typer(eval_app, name="eval")


@eval_app.command("retrieval")
def eval_retrieval(
    data: Annotated[
        Optional[Path], typer.Option(help="Folder with corpus.jsonl + qa.jsonl (shared/data shape).")
    ] = None,
    corpus: Annotated[Optional[list[Path]], typer.Option(help="Corpus files/folders (instead of --data).")] = None,
    qa: Annotated[Optional[Path], typer.Option(help="qa.jsonl (instead of --data).")] = None,
    collection: Annotated[
        Optional[str], typer.Option("--collection", "-c", help="Use this ingested collection instead of a corpus.")
    ] = None,
    k: Annotated[int, typer.Option(help="Passages ranked per question.")] = 10,
    limit: Annotated[Optional[int], typer.Option(help="A fixed random sample of this many questions.")] = None,
    index_type: Annotated[Optional[str], typer.Option(help="flat, hnsw, ivfpq or sq8.")] = None,
    mode: Annotated[Optional[str], typer.Option(help="hybrid, dense or lexical [env RAG_RETRIEVAL_MODE].")] = None,
    entity_filter: Annotated[
        Optional[bool], typer.Option(help="Entity carry-over from the conversation [env RAG_ENTITY_FILTER].")
    ] = None,
    reranker: Annotated[
        Optional[str], typer.Option(help="likelihood[:URL], cross-encoder:PATH or module:attr [env RAG_RERANKER].")
    ] = None,
    name: Annotated[Optional[str], typer.Option(help="Name of this run in --out.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write the JSON here and a PNG comparing the runs in it.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    data_dir: DataDir = None,
) -> None:
    """recall@1/5/10, MRR@10, nDCG@10 and retrieval latency on a corpus + qa set."""
    from eval.data import load_qa, resolve_dataset
    from eval.retrieval import METRICS, evaluate_retrieval, plot_runs, write_run

    settings = _settings(
        data_dir=data_dir, retrieval_mode=mode, entity_filter=entity_filter, reranker=reranker, collection=collection
    )
    corpus_paths: list[Path] | None = None
    if data is not None:
        corpus_paths, qa_path = resolve_dataset(data)
    elif qa is not None and (corpus or collection):
        corpus_paths, qa_path = corpus or None, qa
    else:
        _fail("give --data DIR, or --qa FILE with --corpus PATH or --collection NAME")
        return
    items = load_qa(qa_path, limit)
    try:
        result = _run(
            lambda: evaluate_retrieval(corpus_paths, items, settings, k=k, index_type=index_type, collection=collection)
        )
    except ValueError as exc:
        _fail(str(exc))
        return
    summary = result["summary"]
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo("  ".join(f"{m} {summary[m]:.3f}" for m in METRICS) + f"  (n={summary['n']})")
        typer.echo(f"latency p50 {summary['latency_ms']['p50']} ms, p95 {summary['latency_ms']['p95']} ms")
    if summary.get("rerank_failures"):
        typer.secho(
            f"the reranker failed on {summary['rerank_failures']} of {summary['n']} questions (hybrid order kept):"
            " these figures are not the reranker's - see the log",
            fg=typer.colors.YELLOW,
            err=True,
        )
    if out is not None:
        run_name = name or "-".join(
            [(data or qa_path.parent).name, summary["index_type"], summary["retrieval_mode"]]
            + ([] if summary["entity_filter"] else ["no-entity"])
            + ([f"rerank-{summary['reranker'].split(':')[0]}"] if summary.get("reranker") else [])
        )
        path = write_run(out, run_name, summary)
        typer.echo(f"wrote {path} and {plot_runs(out)}", err=as_json)


@eval_app.command("index")
def eval_index(
    n: Annotated[int, typer.Option(help="Synthetic vectors to index.")] = 1_000_000,
    types: Annotated[str, typer.Option(help="Comma-separated index types.")] = "flat,hnsw,ivfpq,sq8",
    queries: Annotated[int, typer.Option(help="Queries, one at a time.")] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Index types at scale on synthetic 384-d vectors: bytes/vector, recall@10 vs exact, latency."""
    from eval.index_bench import bench_index_types

    result = bench_index_types(n, [t.strip() for t in types.split(",") if t.strip()], queries=queries)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(f"{result['n']:,} vectors, {result['dimension']}-d, {result['queries']} queries")
    for name, row in result["types"].items():
        codes = (
            f" (codes alone {row['recall@10_approx']:.3f}, re-ranked from disk)" if row["reranked_from_disk"] else ""
        )
        typer.echo(
            f"{name:>6}: {row['bytes_per_vector']:8.1f} bytes/vector in memory  recall@10 {row['recall@10']:.3f}{codes}"
            f"  p50 {row['p50_ms']:.2f} ms  p95 {row['p95_ms']:.2f} ms  build {row['build_s']:.0f} s"
        )


@eval_app.command("answers")
def eval_answers(
    data: Annotated[
        Optional[Path], typer.Option(help="Folder with corpus.jsonl + qa.jsonl (shared/data shape).")
    ] = None,
    corpus: Annotated[Optional[list[Path]], typer.Option(help="Corpus files/folders (instead of --data).")] = None,
    qa: Annotated[Optional[Path], typer.Option(help="qa.jsonl (instead of --data).")] = None,
    limit: Annotated[
        Optional[int], typer.Option(help="Ask a fixed random sample of this many questions (0: all).")
    ] = 100,
    backend: Annotated[
        Optional[str],
        typer.Option(
            "--backend",
            "-b",
            help="Backends to compare, comma-separated, each NAME or NAME:MODEL "
            "(extractive, llamacpp:gemma3-270m, llamacpp:qwen2.5-1.5b, vllm) [env RAG_BACKEND].",
        ),
    ] = None,
    shots: Annotated[Optional[str], typer.Option(help="zero, one or few [env RAG_SHOTS].")] = None,
    out: Annotated[Path, typer.Option(help="Where per-question results and answers.png go.")] = Path("eval/results"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the summaries as JSON.")] = False,
    index_type: Annotated[Optional[str], typer.Option(help="flat, hnsw, ivfpq or sq8.")] = None,
    mode: Annotated[Optional[str], typer.Option(help="hybrid, dense or lexical [env RAG_RETRIEVAL_MODE].")] = None,
    progress: Annotated[Optional[bool], typer.Option(help="Progress bars (default: only on a terminal).")] = None,
) -> None:
    """Right, abstained or wrong, per backend: gold facts and forbidden claims where the set has
    them (eval/sets/), gold answers otherwise; every wrong answer is printed, answers.png drawn."""
    from eval.answers import evaluate_answers, format_summary, format_wrong, plot, write_results
    from eval.data import load_qa, resolve_dataset

    settings = _settings(
        shots=shots,
        retrieval_mode=mode,
        **({"backend": backend} if backend and "," not in backend and ":" not in backend else {}),
    )
    if data is not None:
        corpus_paths, qa_path = resolve_dataset(data)
    elif corpus and qa:
        corpus_paths, qa_path = corpus, qa
    else:
        _fail("give --data DIR, or --corpus PATH and --qa FILE")
        return
    items = load_qa(qa_path, limit or None)
    specs = [b.strip() for b in (backend or settings.backend).split(",") if b.strip()]
    results = _run(
        lambda: evaluate_answers(
            corpus_paths, items, settings, index_type=index_type, backends=specs, progress=progress
        )
    )
    for result in results:
        summary = result["summary"]
        name = f"{qa_path.parent.name}-{qa_path.stem}-" + summary["backend"].replace(":", "-")
        path = write_results(result, out, name)
        if as_json:
            typer.echo(json.dumps(summary, indent=2))
        else:
            typer.echo(format_summary(summary))
            typer.echo("wrong answers:\n" + format_wrong(result["rows"]))
        typer.echo(f"per-question results: {path}", err=True)
    typer.echo(f"plot: {plot(out)}", err=True)


@eval_app.command("latency")
def eval_latency(
    qa: Annotated[Path, typer.Option(help="qa.jsonl whose questions are sent.")],
    url: Annotated[str, typer.Option(help="The running service.")] = "http://127.0.0.1:8000",
    collection: Collection = None,
    limit: Annotated[Optional[int], typer.Option(help="Send a fixed random sample of this many questions.")] = 30,
) -> None:
    """p50/p95 latency over HTTP for cache misses, exact hits and semantic hits."""
    from eval.data import load_qa
    from eval.latency import measure_latency

    summary = measure_latency(url, load_qa(qa, limit), collection or "default")
    for kind, figures in summary.items():
        typer.echo(f"{kind:>9}: n={figures['n']:<4} p50 {figures['p50_ms']:.1f} ms   p95 {figures['p95_ms']:.1f} ms")


@eval_app.command("throughput")
def eval_throughput(
    qa: Annotated[Path, typer.Option(help="qa.jsonl whose questions are asked.")],
    collection: Collection = None,
    data_dir: DataDir = None,
    backend: Backend = None,
    vllm_url: Annotated[
        Optional[str], typer.Option(help="vLLM base URL(s), comma-separated [env RAG_VLLM_URL].")
    ] = None,
    concurrency: Annotated[str, typer.Option(help="Comma-separated levels.")] = "1,4,16",
    limit: Annotated[int, typer.Option(help="Questions per level.")] = 32,
) -> None:
    """Answers/s and tokens/s for cache misses at several concurrency levels."""
    from eval.data import load_qa
    from eval.throughput import measure_throughput

    settings = _settings(collection=collection, data_dir=data_dir, backend=backend, vllm_url=vllm_url)
    levels = [int(x) for x in concurrency.split(",")]
    items = load_qa(qa, 1 + limit * len(levels))  # a warm-up, then questions of each level's own
    rows = _run(lambda: measure_throughput(settings, items, levels, settings.collection, per_level=limit))
    typer.echo("concurrency  answers/s  tokens/s  vs 1")
    for row in rows:
        typer.echo(
            f"{row['concurrency']:>11}  {row['answers_per_s']:>9.2f}  {row['tokens_per_s']:>8.1f}  {row['speedup']:.1f}x"
        )


@eval_app.command("cache")
def eval_cache(
    pairs: Annotated[Optional[Path], typer.Option(help="Pairs file: text_a, text_b, label (1 = same request).")] = None,
    corpus: Annotated[
        Optional[Path], typer.Option(help="FAQ corpus (id, question, answer) to seed the cache with.")
    ] = None,
    qa: Annotated[Optional[Path], typer.Option(help="qa.jsonl asked against the seeded cache (with --corpus).")] = None,
    threshold: Annotated[Optional[float], typer.Option(help="Similarity threshold [env RAG_CACHE_THRESHOLD].")] = None,
    margin: Annotated[Optional[float], typer.Option(help="Margin over other answers [env RAG_CACHE_MARGIN].")] = None,
    confirmed_threshold: Annotated[
        Optional[float], typer.Option(help="Threshold for confirmed FAQ hits [env RAG_CACHE_CONFIRMED_THRESHOLD].")
    ] = None,
    sweep: Annotated[
        bool, typer.Option(help="Try thresholds 0.70-0.98: threshold only, and with the checks; write a PNG.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    out: Annotated[Path, typer.Option(help="Where the sweep plot goes.")] = Path("eval/results"),
) -> None:
    """Correct and wrong cache hits on labelled pairs or an FAQ with reworded questions, with
    the configured checks (guards, margin, calibrated verifier)."""
    from eval.cache import _embed_unique, eval_faq, eval_pairs, load_pairs, plot_sweep
    from rag.embedder import SentenceTransformerEmbedder
    from rag.pipeline import load_verifier

    settings = _settings(cache_threshold=threshold, cache_margin=margin, cache_confirmed_threshold=confirmed_threshold)
    if (pairs is None) == (corpus is None or qa is None):
        _fail("give --pairs FILE, or --corpus FILE and --qa FILE")
    verifier = _run(lambda: load_verifier(settings))
    embedder = SentenceTransformerEmbedder.from_settings(settings).load()
    thresholds = [round(0.70 + 0.02 * i, 2) for i in range(15)] if sweep else [settings.cache_threshold]
    rows: list[dict[str, Any]] = []
    if pairs is not None:
        records = load_pairs(pairs)
        vectors = _embed_unique(embedder, [p["text_a"] for p in records] + [p["text_b"] for p in records])
        for guards, check in ((False, None), (True, verifier)) if sweep else ((True, verifier),):
            rows += [eval_pairs(records, embedder, t, guards, vectors, check) for t in thresholds]
        x, y, name = "false_hit_rate", "hit_rate", pairs.stem
    else:
        assert corpus is not None and qa is not None
        # threshold only; the checks without, then with the FAQ confirmation (the service's).
        unconfirmed: tuple[float | None, float | None] = (None, None)
        confirmed = (settings.cache_confirmed_threshold, settings.cache_confirmed_margin)
        modes = [
            (False, False, 0.0, None, unconfirmed),
            (True, True, settings.cache_margin, verifier, unconfirmed),
            (True, True, settings.cache_margin, verifier, confirmed),
        ]
        for guards, check, m, v, (ct, cm) in modes if sweep else modes[2:]:
            rows += [eval_faq(corpus, qa, embedder, t, guards, check, m, v, ct, cm) for t in thresholds]
        x, y, name = "wrong_hit_rate", "correct_hit_rate", corpus.parent.name or corpus.stem
    if as_json:
        typer.echo(json.dumps(rows if sweep else rows[0], indent=2))
    else:
        for row in rows:
            checks = "checks" if row["guards"] else "threshold only"
            if row.get("confirmed_threshold") is not None:
                checks += f" + FAQ confirmed from {row['confirmed_threshold']:.2f}"
            typer.echo(
                f"threshold {row['threshold']:.2f} {checks:>14}: {y} {row[y]:.3f}  {x} {row[x]:.3f}  (n={row['n']})"
            )
    if sweep:
        typer.echo(
            f"plot: {plot_sweep(rows, x, y, out / f'cache-sweep-{name}.png', f'Semantic cache on {name}')}", err=as_json
        )


cache_app = typer.Typer(no_args_is_help=True, help="Look at or empty the response cache.")
app.add_typer(cache_app, name="cache")


def _open_cache(data_dir: Path | None) -> Any:
    from rag.embedder import EMBEDDING_MODELS
    from rag.pipeline import open_cache

    settings = _settings(data_dir=data_dir)
    return _run(lambda: open_cache(settings, EMBEDDING_MODELS[settings.embedding_model].dimension))


@cache_app.command("stats")
def cache_stats(data_dir: DataDir = None) -> None:
    """Entries and bytes on disk, per collection (JSON)."""
    cache = _open_cache(data_dir)
    stats = cache.stats()
    stats.pop("lookups")  # per process: see GET /v1/cache/stats on a running server
    typer.echo(json.dumps(stats, indent=2))


@cache_app.command("calibrate")
def cache_calibrate(
    pairs: Annotated[
        Optional[Path], typer.Option(help="Labelled pairs from your domain: text_a, text_b, label (1 = same request).")
    ] = None,
    questions: Annotated[
        Optional[Path],
        typer.Option(help="Labelled questions (CSV/JSONL: text, label): same label = same request; pairs are drawn."),
    ] = None,
    max_false_hit_rate: Annotated[
        float, typer.Option(help="Largest share of different-request pairs allowed to hit.")
    ] = 0.01,
    verifier: Annotated[bool, typer.Option(help="Train a pair verifier; kept only if it beats a threshold.")] = True,
    data_dir: DataDir = None,
    env_file: Annotated[Path, typer.Option(help="Where the chosen settings are written.")] = Path(".env"),
) -> None:
    """Choose the cache settings from labelled data of your domain and write them to .env.

    A fifth of the data is held out; the rates printed are measured on it."""
    from eval.cache import calibrate, load_labelled_questions, load_pairs, write_env
    from rag.embedder import SentenceTransformerEmbedder

    if pairs is None and questions is None:
        _fail("give --pairs FILE and/or --questions FILE")
    settings = _settings(data_dir=data_dir)
    try:
        labelled = load_labelled_questions(questions) if questions else None
        embedder = SentenceTransformerEmbedder.from_settings(settings).load()
        typer.echo("embedding and training (a minute on 10k questions)...", err=True)
        result = calibrate(embedder, max_false_hit_rate, load_pairs(pairs) if pairs else None, labelled, verifier)
    except (OSError, ValueError, KeyError) as exc:
        _fail(str(exc))
        return
    best = result["chosen"]
    if best is None:
        _fail(f"no setting keeps false hits under {max_false_hit_rate:.1%}: keep the cache exact-only")
        return
    for name in ("threshold_only", "with_verifier"):
        if result.get(name) is not None:
            row = result[name]
            typer.echo(
                f"{name.replace('_', ' ')}: threshold {row['threshold']:.2f} -> hit rate {row['hit_rate']:.3f}, "
                f"false-hit rate {row['false_hit_rate']:.3f}"
            )
    write_env(env_file, "RAG_CACHE_THRESHOLD", f"{best['threshold']:.2f}")
    path = None
    if result["verifier"] is not None:
        path = (settings.data_dir / "cache-verifier.npz").resolve()
        result["verifier"].save(path)
    write_env(env_file, "RAG_CACHE_VERIFIER", str(path) if path else None)
    typer.echo(
        f"RAG_CACHE_THRESHOLD={best['threshold']:.2f}"
        + (f", RAG_CACHE_VERIFIER={path}" if path else "")
        + f" written to {env_file}: hit rate {best['hit_rate']:.3f}, false-hit rate {best['false_hit_rate']:.3f}"
        f" on {result['n_holdout']} held-out pairs ({result['n_fit']} used to fit)"
    )


@cache_app.command("clear")
def cache_clear(collection: Collection = None, data_dir: DataDir = None) -> None:
    """Drop every cached answer, or one collection's."""
    cleared = _open_cache(data_dir).clear(collection)
    typer.echo(f"cleared {cleared} cached answers" + (f" of collection {collection!r}" if collection else ""))


@app.command("settings")
def show_settings(
    readme: Annotated[
        Optional[Path], typer.Option(help="Rewrite the table between the settings markers of this file.")
    ] = None,
) -> None:
    """List every setting with its environment variable, default and meaning (Markdown)."""
    if readme is None:
        typer.echo(settings_table())
        return
    text = readme.read_text()
    start, end = "<!-- settings:start -->\n", "<!-- settings:end -->"
    if start not in text or end not in text:
        _fail(f"{readme} has no {start.strip()} ... {end} markers")
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    readme.write_text(f"{head}{start}{settings_table()}\n{end}{tail}")


def settings_table() -> str:
    rows = ["| env | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "unset" if default is None else f"`{default.as_posix() if isinstance(default, Path) else default}`"
        rows.append(f"| `RAG_{name.upper()}` | {shown} | {' '.join((field.description or '').split())} |")
    return "\n".join(rows)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

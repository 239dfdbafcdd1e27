"""`rag eval`: quality and speed on a data set (retrieval, index, answers, latency, failover, throughput, cache)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .app import Backend, Collection, DataDir, counts, fail, index_types, load_settings, run_or_fail

RESULTS = Path("eval/results")

eval_app = typer.Typer(rich_markup_mode=None, no_args_is_help=True, help="Measure quality and speed on a data set.")


def _questions(path: Path, limit: int | None) -> list[Any]:
    """The questions of a qa file, or a clear failure (missing, unreadable, a bad line, none)."""
    from eval.data import load_qa

    try:
        items = load_qa(path, limit)
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
    except ValueError as exc:
        fail(str(exc))
    if not items:
        fail(f"{path} holds no questions")
    return items


def _dataset(data: Path) -> tuple[list[Path], Path]:
    from eval.data import resolve_dataset

    try:
        return resolve_dataset(data)
    except FileNotFoundError as exc:
        fail(str(exc))
        raise


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
    from eval.retrieval import evaluate_retrieval, plot_runs, write_run

    settings = load_settings(
        data_dir=data_dir, retrieval_mode=mode, entity_filter=entity_filter, reranker=reranker, collection=collection
    )
    corpus_paths: list[Path] | None = None
    if data is not None:
        corpus_paths, qa_path = _dataset(data)
    elif qa is not None and (corpus or collection):
        corpus_paths, qa_path = corpus or None, qa
    else:
        fail("give --data DIR, or --qa FILE with --corpus PATH or --collection NAME")
        return
    items = _questions(qa_path, limit)
    try:
        result = run_or_fail(
            lambda: evaluate_retrieval(corpus_paths, items, settings, k=k, index_type=index_type, collection=collection)
        )
    except ValueError as exc:
        fail(str(exc))
        return
    summary = result["summary"]
    _print_retrieval(summary, as_json)
    if out is not None:
        run_name = name or "-".join(
            [(data or qa_path.parent).name, summary["index_type"], summary["retrieval_mode"]]
            + ([] if summary["entity_filter"] else ["no-entity"])
            + ([f"rerank-{summary['reranker'].split(':')[0]}"] if summary.get("reranker") else [])
        )
        path = write_run(out, run_name, summary, result["questions"])
        typer.echo(f"wrote {path} and {plot_runs(out)}", err=as_json)


def _print_retrieval(summary: dict[str, Any], as_json: bool) -> None:
    from eval.retrieval import METRICS

    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo("  ".join(f"{m} {summary[m]:.3f}" for m in METRICS) + f"  (n={summary['n']})")
        typer.echo(f"latency p50 {summary['latency_ms']['p50']} ms, p95 {summary['latency_ms']['p95']} ms")
    if summary.get("warning"):
        typer.secho(summary["warning"], fg=typer.colors.YELLOW, err=True)
    if summary.get("rerank_failures"):
        typer.secho(
            f"the reranker failed on {summary['rerank_failures']} of {summary['n']} questions (hybrid order kept):"
            " these figures are not the reranker's - see the log",
            fg=typer.colors.YELLOW,
            err=True,
        )


@eval_app.command("index")
def eval_index(
    n: Annotated[int, typer.Option(help="Synthetic vectors to index.")] = 1_000_000,
    types: Annotated[str, typer.Option(help="Comma-separated index types.")] = "flat,hnsw,ivfpq,sq8",
    queries: Annotated[int, typer.Option(help="Queries, one at a time.")] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Index types at scale on synthetic 384-d vectors: bytes/vector, recall@10 vs exact, latency."""
    from eval.index_bench import bench_index_types

    try:
        result = bench_index_types(n, index_types(types, "--types"), queries=queries)
    except ValueError as exc:  # too few vectors to train a quantised index on
        fail(f"{exc} (or raise --n)")
        return
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

    settings = load_settings(
        shots=shots,
        retrieval_mode=mode,
        **({"backend": backend} if backend and "," not in backend and ":" not in backend else {}),
    )
    if data is not None:
        corpus_paths, qa_path = _dataset(data)
    elif corpus and qa:
        corpus_paths, qa_path = corpus, qa
    else:
        fail("give --data DIR, or --corpus PATH and --qa FILE")
        return
    items = _questions(qa_path, limit or None)
    specs = [b.strip() for b in (backend or settings.backend).split(",") if b.strip()]

    def report(result: dict[str, Any]) -> None:  # each backend as it finishes: a later one failing loses nothing
        summary = result["summary"]
        name = f"{qa_path.parent.name}-{qa_path.stem}-" + summary["backend"].replace(":", "-")
        path = write_results(result, out, name)
        if as_json:
            typer.echo(json.dumps(summary, indent=2))
        else:
            typer.echo(format_summary(summary))
            typer.echo("wrong answers:\n" + format_wrong(result["rows"]))
        for error in result["errors"]:
            typer.secho(f"  failed [{error['id']}] {error['question']}: {error['error']}", err=True, fg="yellow")
        if summary.get("warning"):
            typer.secho(summary["warning"], fg=typer.colors.YELLOW, err=True)
        typer.echo(f"per-question results: {path}", err=True)

    run_or_fail(
        lambda: evaluate_answers(
            corpus_paths, items, settings, index_type=index_type, backends=specs, progress=progress, on_result=report
        )
    )
    typer.echo(f"plot: {plot(out)}", err=True)


@eval_app.command("latency")
def eval_latency(
    qa: Annotated[Path, typer.Option(help="qa.jsonl whose questions are sent.")],
    url: Annotated[str, typer.Option(help="The running service.")] = "http://127.0.0.1:8000",
    collection: Collection = None,
    limit: Annotated[Optional[int], typer.Option(help="Send a fixed random sample of this many questions.")] = 30,
    api_key: Annotated[
        Optional[str], typer.Option(envvar="RAG_API_KEY", help="Key of a service that has keys.")
    ] = None,
) -> None:
    """p50/p95 latency over HTTP for cache misses, exact hits and semantic hits."""
    import httpx

    from eval.latency import measure_latency

    items = _questions(qa, limit)
    name = collection or load_settings().collection
    try:
        summary = measure_latency(url, items, name, api_key=api_key)
    except httpx.TransportError as exc:
        fail(f"cannot reach {url} ({exc}) - start the service (`rag serve`) or pass --url")
        return
    errors = summary.pop("errors", None)
    for kind, figures in summary.items():
        typer.echo(f"{kind:>9}: n={figures['n']:<4} p50 {figures['p50_ms']:.1f} ms   p95 {figures['p95_ms']:.1f} ms")
    if errors:
        typer.echo(f"   errors: n={errors['n']} by status {errors['by_status']}; first: {errors['first']}", err=True)


@eval_app.command("failover")
def eval_failover(
    corpus: Annotated[Path, typer.Option(help="Documents the two replicas serve.")] = Path("examples/help-center"),
    runs: Annotated[int, typer.Option(help="kill -9 runs.")] = 20,
    questions: Annotated[int, typer.Option(help="Questions per job.")] = 40,
    lease_s: Annotated[float, typer.Option(help="RAG_JOB_LEASE_S of the replicas.")] = 3.0,
    out: Annotated[Path, typer.Option(help="Write failover.json here.")] = RESULTS / "failover",
) -> None:
    """Jobs across a replica that dies: two replicas on PostgreSQL and Redis (started from their
    wheels), a job each run, kill -9 of the replica holding it; lost jobs and double results."""
    from eval.failover import run_failover

    summary = run_or_fail(lambda: run_failover(corpus, runs, questions, lease_s))
    out.mkdir(parents=True, exist_ok=True)
    (out / "failover.json").write_text(json.dumps(summary, indent=2) + "\n")
    typer.echo(
        f"{summary['runs']} kill -9 runs ({summary['killed_mid_job']} mid-job): {summary['lost_jobs']} lost jobs, "
        f"{summary['double_results']} with double results; finished at most {summary['seconds_after_kill_max']} s "
        f"after the kill (lease {lease_s} s)"
    )


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
    from eval.throughput import measure_throughput

    settings = load_settings(collection=collection, data_dir=data_dir, backend=backend, vllm_url=vllm_url)
    levels = counts(concurrency, "--concurrency")
    items = _questions(qa, 1 + limit * len(levels))  # a warm-up, then questions of each level's own
    rows = run_or_fail(lambda: measure_throughput(settings, items, levels, settings.collection, per_level=limit))
    typer.echo("concurrency  answers/s  tokens/s  vs 1")
    for row in rows:
        failed = f"  ({row['errors']} failed)" if row["errors"] else ""
        typer.echo(
            f"{row['concurrency']:>11}  {row['answers_per_s']:>9.2f}  {row['tokens_per_s']:>8.1f}  {row['speedup']:.1f}x"
            + failed
        )


def _print_cache_rows(rows: list[dict[str, Any]], x: str, y: str) -> None:
    for row in rows:
        checks = "checks" if row["guards"] else "threshold only"
        if row.get("confirmed_threshold") is not None:
            checks += f" + FAQ confirmed from {row['confirmed_threshold']:.2f}"
        typer.echo(f"threshold {row['threshold']:.2f} {checks:>14}: {y} {row[y]:.3f}  {x} {row[x]:.3f}  (n={row['n']})")


def _cache_pair_rows(
    records: list[dict[str, Any]], embedder: Any, thresholds: list[float], verifier: Any, sweep: bool, settings: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The policy's rows (with its audits replayed; swept, also the threshold alone's) on a
    pairs file, and the plain curve."""
    from eval.cache import Audits, _embed_unique, eval_pairs
    from eval.cache_bounds import plain_curve_pairs

    audits = Audits(settings.cache_audit_rate, settings.max_wrong_rate())
    vectors = _embed_unique(embedder, [p["text_a"] for p in records] + [p["text_b"] for p in records])
    rows: list[dict[str, Any]] = []
    for guards, check in ((False, None), (True, verifier)) if sweep else ((True, verifier),):
        rows += [
            eval_pairs(records, embedder, t, guards, vectors, check, audits if guards else None) for t in thresholds
        ]
    return rows, plain_curve_pairs(records, vectors)


def _cache_faq_rows(
    corpus: Path, qa: Path, embedder: Any, thresholds: list[float], verifier: Any, sweep: bool, settings: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Threshold only; the checks without, then with the FAQ confirmation and the audits (the
    service's policy), on an FAQ and reworded questions; and the plain curve."""
    from tqdm import tqdm

    from eval.cache import Audits, eval_faq
    from eval.cache_bounds import plain_curve_faq

    unconfirmed: tuple[float | None, float | None] = (None, None)
    confirmed = (settings.cache_confirmed_threshold, settings.cache_confirmed_margin)
    modes = [
        (False, False, 0.0, None, unconfirmed),
        (True, True, settings.cache_margin, verifier, unconfirmed),
        (True, True, settings.cache_margin, verifier, confirmed),
    ]
    rows: list[dict[str, Any]] = []
    audits = Audits(settings.cache_audit_rate, settings.max_wrong_rate())
    runs = [(mode, t) for mode in (modes if sweep else modes[2:]) for t in thresholds]
    for (guards, check, m, v, (ct, cm)), t in tqdm(runs, desc="policies x thresholds", unit="run", disable=None):
        replay = audits if ct is not None else None  # each run ingests the FAQ afresh: a few seconds
        rows.append(eval_faq(corpus, qa, embedder, t, guards, check, m, v, ct, cm, audits=replay))
    return rows, plain_curve_faq(corpus, qa, embedder)


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
    audit_rate: Annotated[
        Optional[float],
        typer.Option(help="Share of semantic hits audited, replayed in order [env RAG_CACHE_AUDIT_RATE]."),
    ] = None,
    sweep: Annotated[
        bool, typer.Option(help="Try thresholds 0.70-0.98: threshold only, and with the checks; write a PNG.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    out: Annotated[Path, typer.Option(help="Where the operating points (JSON, PNG) and sweep plot go.")] = RESULTS,
) -> None:
    """Correct and wrong cache hits (pairs, or an FAQ with reworded questions) under the
    configured policy, audits replayed in order; the hit rate at 0.5%, 1% and 2% wrong hits
    beside the best plain threshold on the same vectors."""
    from eval.cache import load_faq, load_pairs
    from eval.cache_bounds import format_report, report
    from rag.cache_policy import load_verifier
    from rag.embedder import SentenceTransformerEmbedder

    settings = load_settings(
        cache_threshold=threshold,
        cache_margin=margin,
        cache_confirmed_threshold=confirmed_threshold,
        cache_audit_rate=audit_rate,
    )
    if (pairs is None) == (corpus is None or qa is None):
        fail("give --pairs FILE, or --corpus FILE and --qa FILE")
    records: list[dict[str, Any]] = []
    try:  # a bad file says so before anything is embedded
        if pairs is not None:
            records = load_pairs(pairs)
        else:
            assert corpus is not None
            load_faq(corpus)
    except (OSError, ValueError) as exc:
        fail(str(exc))
    verifier = run_or_fail(lambda: load_verifier(settings))
    embedder = SentenceTransformerEmbedder.from_settings(settings).load()
    thresholds = sorted(
        {settings.cache_threshold} | ({round(0.70 + 0.02 * i, 2) for i in range(15)} if sweep else set())
    )
    if pairs is not None:
        rows, plain = _cache_pair_rows(records, embedder, thresholds, verifier, sweep, settings)
        x, y, name = "false_hit_rate", "hit_rate", pairs.stem
    else:
        assert corpus is not None and qa is not None
        rows, plain = _cache_faq_rows(corpus, qa, embedder, thresholds, verifier, sweep, settings)
        x, y, name = "wrong_hit_rate", "correct_hit_rate", corpus.parent.name or corpus.stem
    policy = [r for r in rows if r["guards"] and (pairs is not None or r.get("confirmed_threshold") is not None)]
    swept = policy if sweep else None
    points = report(plain, _configured(policy, settings.cache_threshold), x, y, swept)
    if as_json:
        typer.echo(json.dumps(rows if sweep else {**rows[0], "operating_points": points}, indent=2))
    else:
        _print_cache_rows(rows, x, y)
        for line in format_report(points, x, y):
            typer.echo(line)
    where = _write_cache_report(rows, plain, points, (x, y), out, name, swept)
    typer.echo("wrote " + ", ".join(str(w) for w in where), err=as_json)


def _write_cache_report(
    rows: list[dict[str, Any]],
    plain: list[dict[str, Any]],
    points: dict[str, Any],
    axes: tuple[str, str],
    out: Path,
    name: str,
    swept: list[dict[str, Any]] | None,
) -> list[Path]:
    """The operating points (JSON), their plot, and with a sweep the sweep's plot."""
    from eval.cache import plot_sweep
    from eval.cache_bounds import plot_bounds, write_report

    x, y = axes
    title = f"Semantic cache on {name}"
    where = [write_report(points, plain, out / f"cache-bounds-{name}.json")]
    where.append(plot_bounds(plain, points, x, y, out / f"cache-bounds-{name}.png", title, swept))
    if swept is not None:
        where.append(plot_sweep(rows, x, y, out / f"cache-sweep-{name}.png", title))
    return where


def _configured(policy: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """The policy's row at the configured threshold (every run measures it)."""
    return next(r for r in policy if abs(r["threshold"] - threshold) < 1e-9)

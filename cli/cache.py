"""`rag cache`: look at, calibrate or empty the response cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .app import Collection, DataDir, fail, load_settings, require_collection, run_or_fail

cache_app = typer.Typer(rich_markup_mode=None, no_args_is_help=True, help="Look at or empty the response cache.")


def _open_cache(data_dir: Path | None) -> Any:
    from rag.cache_policy import open_cache
    from rag.embedding_models import EMBEDDING_MODELS

    settings = load_settings(data_dir=data_dir)
    return run_or_fail(lambda: open_cache(settings, EMBEDDING_MODELS[settings.embedding_model].dimension))


@cache_app.command("stats")
def cache_stats(data_dir: DataDir = None) -> None:
    """Entries and bytes on disk, and the audited wrong-hit rate beside its bound, per collection (JSON)."""
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
        Optional[float],
        typer.Option(
            help="Largest share of different-request pairs allowed to hit [default: RAG_CACHE_MAX_WRONG_RATE]."
        ),
    ] = None,
    verifier: Annotated[
        bool,
        typer.Option(
            help="Train verifiers (request classifier from --questions, pair network from --pairs); one is kept only if it beats the threshold alone."
        ),
    ] = True,
    data_dir: DataDir = None,
    env_file: Annotated[Path, typer.Option(help="Where the chosen settings are written.")] = Path(".env"),
) -> None:
    """Choose the cache settings from labelled data of your domain and write them to .env.

    A fifth of the data is held out; the rates printed are measured on it."""
    from eval.cache import load_pairs
    from eval.calibrate import calibrate, load_labelled_questions, write_env
    from rag.embedder import SentenceTransformerEmbedder

    if pairs is None and questions is None:
        fail("give --pairs FILE and/or --questions FILE")
    settings = load_settings(data_dir=data_dir)
    if max_false_hit_rate is None:
        max_false_hit_rate = settings.max_wrong_rate()
    if not 0 < max_false_hit_rate < 1:
        fail(
            f"a false-hit rate of {max_false_hit_rate} cannot be calibrated: give one above 0 and below 1 (0.01 is 1%)"
        )
    try:
        labelled = load_labelled_questions(questions) if questions else None
        embedder = SentenceTransformerEmbedder.from_settings(settings).load()
        typer.echo("embedding and training (a minute on 10k questions)...", err=True)
        result = calibrate(embedder, max_false_hit_rate, load_pairs(pairs) if pairs else None, labelled, verifier)
    except (OSError, ValueError, KeyError) as exc:
        fail(str(exc))
        return
    best = result["chosen"]
    if best is None:
        fail(f"no setting keeps false hits under {max_false_hit_rate:.1%}: keep the cache exact-only")
        return
    _print_candidates(result)
    write_env(env_file, "RAG_CACHE_THRESHOLD", f"{best['threshold']:.2f}")
    path = None
    if result["verifier"] is not None:
        path = (settings.data_dir / "cache-verifier.npz").resolve()
        result["verifier"].save(path)
    write_env(env_file, "RAG_CACHE_VERIFIER", str(path) if path else None)
    typer.echo(
        f"RAG_CACHE_THRESHOLD={best['threshold']:.2f}"
        + (f", RAG_CACHE_VERIFIER={path}" if path else "")
        + f" written to {env_file} ({best.get('verifier', 'threshold only')}): hit rate {best['hit_rate']:.3f}, false-hit rate {best['false_hit_rate']:.3f}"
        f" on {result['n_holdout']} held-out pairs ({result['n_fit']} used to fit)"
    )


@cache_app.command("clear")
def cache_clear(collection: Collection = None, data_dir: DataDir = None) -> None:
    """Drop every cached answer, or one collection's; curated answers are put back (as
    `DELETE /v1/cache` does)."""
    import asyncio

    from serving.curation import sync_curated

    from .curated import curated_service

    settings = load_settings(data_dir=data_dir)
    require_collection(settings, collection)

    async def run() -> tuple[int, int]:
        async with curated_service(settings) as (pipe, store):
            assert pipe.cache is not None  # curated_service turns the cache on
            cleared = await asyncio.to_thread(pipe.cache.clear, collection)
            return cleared, await sync_curated(pipe, store, collection)

    cleared, curated = run_or_fail(lambda: asyncio.run(run()))
    typer.echo(
        f"cleared {cleared} cached answers"
        + (f" of collection {collection!r}" if collection else "")
        + (f"; {curated} curated answers put back" if curated else "")
    )


def _print_candidates(result: dict[str, Any]) -> None:
    for name, row in {"threshold only": result["threshold_only"], **result["candidates"]}.items():
        typer.echo(
            f"{name}: none keeps to the bound"
            if row is None
            else f"{name}: threshold {row['threshold']:.2f} -> hit rate {row['hit_rate']:.3f}, "
            f"false-hit rate {row['false_hit_rate']:.4f}"
        )

"""`rag ingest`: files and folders into a collection."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from .app import Collection, DataDir, load_settings, private_data_dir, run_or_fail

if TYPE_CHECKING:
    from rag.settings import Settings


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
    rebuild: Annotated[
        bool,
        typer.Option(
            "--rebuild",
            help="Build the collection afresh from PATHS alone (a damaged one, or another embedding model); "
            "the version serving now stays until the new one is whole.",
        ),
    ] = False,
    ray: Annotated[
        bool,
        typer.Option("--ray", help="Read and embed on a Ray cluster (pip install '.[ray]'); the writing stays here."),
    ] = False,
    ray_address: Annotated[
        Optional[str],
        typer.Option(
            help="The cluster's address (HOST:6379, or 'auto'); unset: RAY_ADDRESS, else a local Ray for this run."
        ),
    ] = None,
    ray_workers: Annotated[
        Optional[int], typer.Option(help="Embedding workers on Ray (default: one a CPU of the cluster, at most 8).")
    ] = None,
) -> None:
    """Index documents (.txt .md .html .pdf .jsonl .csv) into a collection, incrementally."""
    from ingest.runner import ingest as run_ingest
    from rag.embedder import SentenceTransformerEmbedder

    settings = load_settings(data_dir=data_dir, collection=collection)
    private_data_dir(settings.data_dir)
    embedder = SentenceTransformerEmbedder.from_settings(settings)
    stages = None
    if ray:
        from ingest.distributed import RayStages

        stages = run_or_fail(lambda: RayStages(ray_address, settings, embedder.dimension, workers=ray_workers))
    try:
        report = run_or_fail(
            lambda: run_ingest(
                paths, settings.collection, settings, embedder, prune=prune, progress=progress,
                index_type=index_type, stages=stages, rebuild=rebuild,
            )
        )  # fmt: skip
    finally:
        if stages is not None:
            stages.close()
    if report.rechunked:
        typer.secho(
            f"{report.rechunked}: every file under the paths given was chunked again "
            "(files ingested from other paths keep their chunks until they are ingested again)",
            fg=typer.colors.YELLOW, err=True,
        )  # fmt: skip
    for source, reason in report.failed:
        typer.secho(f"skipped {source}: {reason}", fg=typer.colors.YELLOW, err=True)
    for source, reason in report.skipped_lines:
        typer.secho(f"skipped in {source}: {reason}", fg=typer.colors.YELLOW, err=True)
    for line in report.duplicates[:5]:
        typer.secho(f"twice: {line}", fg=typer.colors.YELLOW, err=True)
    if report.duplicates:
        more = f" ({len(report.duplicates) - 5} more like them)" if len(report.duplicates) > 5 else ""
        typer.secho(
            f"both copies are searched and quoted{more}: remove an outdated or repeated copy from the folder",
            fg=typer.colors.YELLOW, err=True,
        )  # fmt: skip
    for source in report.not_english[:5]:
        typer.secho(f"not English? {source}", fg=typer.colors.YELLOW, err=True)
    if report.not_english:
        more = f" ({len(report.not_english) - 5} more like them)" if len(report.not_english) > 5 else ""
        typer.secho(
            f"this text does not read as English{more}: the bundled embedding model and judge read English, so "
            "questions about it will mostly be answered \"I don't know\" and some wrongly (README: Languages)",
            fg=typer.colors.YELLOW, err=True,
        )  # fmt: skip
    typer.echo(report.summary())
    if report.changed and settings.cache_enabled:
        _drop_stale_answers(settings, embedder)


def _drop_stale_answers(settings: Settings, embedder: Any) -> None:
    """The response cache's answers the new version no longer stands behind, dropped and
    counted: what a re-ingest changes for customers, said where the operator sees it."""
    from cache.stores import StoreUnavailable
    from rag.cache_policy import drop_stale
    from rag.errors import RagError

    try:
        dropped = drop_stale(settings, settings.collection, embedder.name, embedder.dimension)
    except (RagError, StoreUnavailable) as exc:  # the ingest stands; lookups refuse them instead
        message = getattr(exc, "message", str(exc))
        typer.secho(f"the response cache was not cleaned ({message}): its stale answers are refused when asked",
                    fg=typer.colors.YELLOW, err=True)  # fmt: skip
        return
    if dropped:
        typer.echo(
            f"response cache: {dropped} cached answer{'s' * (dropped != 1)} dropped (they rest on passages this "
            "ingest changed or removed): each is answered afresh when next asked"
        )

"""`rag ingest`: files and folders into a collection."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import Collection, DataDir, load_settings, run_or_fail


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

    settings = load_settings(data_dir=data_dir, collection=collection)
    embedder = SentenceTransformerEmbedder.from_settings(settings)
    report = run_or_fail(
        lambda: run_ingest(
            paths, settings.collection, settings, embedder, prune=prune, progress=progress, index_type=index_type
        )
    )
    for source, reason in report.failed:
        typer.secho(f"skipped {source}: {reason}", fg=typer.colors.YELLOW, err=True)
    for source, reason in report.skipped_lines:
        typer.secho(f"skipped in {source}: {reason}", fg=typer.colors.YELLOW, err=True)
    typer.echo(report.summary())

"""`rag ask`: one question from the command line."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any, Optional

import typer

from .app import Backend, Collection, DataDir, load_settings, run_or_fail


def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    collection: Collection = None,
    backend: Backend = None,
    data_dir: DataDir = None,
    top_k: Annotated[
        Optional[int], typer.Option("--top-k", min=1, max=50, help="Chunks to retrieve (1-50, as the API allows).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole response as JSON.")] = False,
) -> None:
    """Answer one question in-process (no server needed)."""
    from rag.pipeline import build_pipeline

    settings = load_settings(collection=collection, backend=backend, data_dir=data_dir)

    async def main() -> Any:
        pipeline = build_pipeline(settings)
        try:
            return await pipeline.answer(question, settings.collection, top_k)
        finally:
            await pipeline.aclose()

    answer = run_or_fail(lambda: asyncio.run(main()))
    if as_json:
        typer.echo(json.dumps(answer.to_dict(), indent=2, ensure_ascii=False))
        return
    typer.echo(answer.answer)
    for n, c in enumerate(answer.citations, start=1):
        page = f", p. {c.page}" if c.page else ""
        typer.echo(f"  [{n}] {c.title} ({c.document_id}{page}, score {c.score:.2f})")
    status = f"cache {answer.cache.kind} hit" if answer.cache.hit else "cache miss"
    typer.secho(f"{status}, {answer.timings_ms['total']:.0f} ms", dim=True, err=True)

"""`rag batch`: answer a file of questions offline, to a JSONL file."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .app import Backend, Collection, DataDir, fail, load_settings, run_or_fail


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
    from rag.batch import read_questions, run_batch
    from rag.pipeline import build_pipeline

    settings = load_settings(data_dir=data_dir, collection=collection, backend=backend)
    try:
        items = read_questions(questions)
    except (OSError, ValueError) as exc:
        fail(str(exc))
        return
    pipeline = run_or_fail(lambda: build_pipeline(settings))

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

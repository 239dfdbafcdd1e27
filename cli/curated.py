"""`rag curated import`: pin approved answers from a file."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from .app import Collection, DataDir, fail, load_settings, run_or_fail

curated_app = typer.Typer(
    rich_markup_mode=None, no_args_is_help=True, help="Curated answers: import approved answers from a file."
)


def _rows(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The (question, answer[, document_ids]) rows of a .jsonl file or of TSV lines
    ``question<TAB>answer``; and each bad line, with its number and reason."""
    rows, bad = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = (
                json.loads(line)
                if path.suffix == ".jsonl"
                else dict(zip(("question", "answer"), line.split("\t", 1), strict=False))
            )
        except json.JSONDecodeError as exc:
            bad.append(f"line {number}: not JSON ({exc.msg})")
            continue
        if (
            not isinstance(row, dict)
            or not str(row.get("question", "")).strip()
            or not str(row.get("answer", "")).strip()
        ):
            bad.append(f"line {number}: needs a question and an answer")
            continue
        rows.append(row)
    return rows, bad


@curated_app.command("import")
def curated_import(
    path: Annotated[
        Path, typer.Argument(help=".jsonl ({question, answer, document_ids?}) or TSV (question<TAB>answer).")
    ],
    collection: Collection = None,
    data_dir: DataDir = None,
) -> None:
    """Pin each line's answer to its question (and its rewordings) in a collection; a bad line
    is reported and skipped."""
    from rag.pipeline import build_pipeline
    from serving.curation import CuratedStore, cite_documents
    from serving.database import Database
    from serving.support_store import open_support_store

    settings = load_settings(data_dir=data_dir, collection=collection)
    if not path.is_file():
        fail(f"no file {path} - give a .jsonl or a TSV file of questions and answers")
    rows, bad = _rows(path)
    for problem in bad:
        typer.secho(f"{path}: {problem} (skipped)", err=True, fg="yellow")

    async def run() -> int:
        pipe = build_pipeline(settings)
        database = Database(settings.database_url).open() if settings.database_url else None
        support = open_support_store(settings.data_dir, database)
        store = CuratedStore(support.sql)
        try:
            index = pipe.get_index(settings.collection)
            for row in rows:
                citations = cite_documents(index, [str(d) for d in row.get("document_ids", [])])
                item = store.create(settings.collection, row["question"].strip(), row["answer"].strip(), citations,
                                    "rag curated import", "file")  # fmt: skip
                await pipe.curate(item.collection, item.question, item.answer, item.citations, item.id, item.version)
            return len(rows)
        finally:
            support.close()
            await pipe.aclose()
            if database is not None:
                database.close()

    count = run_or_fail(lambda: asyncio.run(run()))
    typer.echo(
        f"pinned {count} curated answers in {settings.collection}" + (f"; {len(bad)} lines skipped" if bad else "")
    )
    if bad and not count:
        raise typer.Exit(1)

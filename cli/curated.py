"""`rag curated import`: pin approved answers from a file."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .app import Collection, DataDir, fail, load_settings, run_or_fail

if TYPE_CHECKING:
    from rag.pipeline import Pipeline
    from rag.settings import Settings
    from serving.curation import CuratedStore

curated_app = typer.Typer(
    rich_markup_mode=None, no_args_is_help=True, help="Curated answers: import approved answers from a file."
)


WHO = "rag curated import"


def _rows(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The (question, answer[, document_ids]) rows of a .jsonl file or of TSV lines
    ``question<TAB>answer``, each with its line number; and each bad line, with its number
    and reason."""
    from cache.semantic import normalize_question
    from rag.wire import jsonl_lines
    from serving.schemas import bad_text

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        fail(f"{path} is not valid UTF-8 (byte {exc.start}) - re-save it as UTF-8")
    rows, bad = [], []
    for number, line in enumerate(jsonl_lines(text), 1):
        if not line.strip():
            continue
        if "\x00" in line or "\\u0000" in line:  # no database stores it (a request body is refused too)
            bad.append(f"line {number}: contains a NUL character - remove it")
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
        if not isinstance(row, dict) or not all(
            isinstance(row.get(k), str) and row[k].strip() for k in ("question", "answer")
        ):
            bad.append(f"line {number}: needs a question and an answer, as text")
            continue
        if (found := bad_text(row)) is not None:  # as a request body would be refused
            bad.append(f"line {number}: {found[0]} holds {found[1]} - remove it")
            continue
        if not normalize_question(row["question"]):
            bad.append(f"line {number}: the question has no words (it would match every question like it)")
            continue
        ids = row.get("document_ids", [])
        if not isinstance(ids, list) or not all(isinstance(d, str | int) for d in ids):
            bad.append(f"line {number}: document_ids must be a list of document ids")
            continue
        rows.append({**row, "line": number})
    return rows, bad


async def _pin_rows(pipe: Any, store: Any, collection: str, rows: list[dict[str, Any]], bad: list[str]) -> int:
    """Pin each row; a question already pinned gets a new version only if its answer or
    citations changed, so importing a file again repeats nothing (a row without
    ``document_ids``, as every TSV row, keeps the citations it had). One waiting for review stays
    there (edited if the file changes it): it is not pinned a second time. Returns how many changed."""
    from cache import normalize_question
    from rag.errors import RagError
    from serving.curation import cite_documents

    index = pipe.get_index(collection)
    pinned = {
        normalize_question(c.question): c
        for c in store.items(collection, "needs_review") + store.items(collection, "active")  # active ones win
    }
    done = 0
    for row in rows:
        question, answer = row["question"].strip(), row["answer"].strip()
        before = pinned.get(normalize_question(question))
        try:  # a line that names no documents (TSV) keeps what the answer cited
            kept = before.citations if before is not None and "document_ids" not in row else None
            citations = (
                kept if kept is not None else cite_documents(index, [str(d) for d in row.get("document_ids", [])])
            )
        except RagError as exc:  # an unknown document id: this line only
            bad.append(f"line {row['line']}: {exc.message}")
            continue
        if before is not None and (before.answer, before.citations) == (answer, citations):
            continue
        if before is None:
            item = store.create(collection, question, answer, citations, WHO, "file")
        else:
            item = store.change(before, WHO, "edit", answer=answer, citations=citations) or before
        pinned[normalize_question(question)] = item
        if item.status == "active":
            await pipe.curate(item.collection, item.question, item.answer, item.citations, item.id, item.version)
        done += 1
    return done


@asynccontextmanager
async def curated_service(settings: Settings) -> AsyncIterator[tuple[Pipeline, CuratedStore]]:
    """The pipeline (with its cache) and the curated answers' records, as `rag serve` has them,
    for a command that pins or puts back curated answers. No LLM is loaded: none is needed."""
    from rag.pipeline import build_pipeline
    from serving.curation import CuratedStore
    from serving.database import Database
    from serving.support_store import open_support_store

    pipe = build_pipeline(settings.model_copy(update={"backend": "extractive", "cache_enabled": True}))
    database = Database(settings.database_url).open() if settings.database_url else None
    support = open_support_store(settings.data_dir, database)
    try:
        yield pipe, CuratedStore(support.sql)
    finally:
        support.close()
        await pipe.aclose()
        if database is not None:
            database.close()


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
    settings = load_settings(data_dir=data_dir, collection=collection)
    if not path.is_file():
        fail(f"no file {path} - give a .jsonl or a TSV file of questions and answers")
    rows, bad = _rows(path)

    async def run() -> int:
        async with curated_service(settings) as (pipe, store):
            return await _pin_rows(pipe, store, settings.collection, rows, bad)

    count = run_or_fail(lambda: asyncio.run(run()))
    for problem in bad:
        typer.secho(f"{path}: {problem} (skipped)", err=True, fg="yellow")
    typer.echo(
        f"pinned {count} curated answers in {settings.collection}" + (f"; {len(bad)} lines skipped" if bad else "")
    )
    if bad and not count:
        raise typer.Exit(1)

"""The one job runner: many questions answered a few at a time through the pipeline (so a
vLLM backend batches them), each one's record kept as it is done, a failed question kept
with its error body. ``rag batch`` runs it over a JSONL file (:func:`run_batch`) and
``/v1/jobs`` over SQLite (``serving/jobs.py``), both with :func:`answer_each`.

`rag batch`, a file of questions offline:

Input: one question a line in the qa shape (``id``, ``question``, optional ``history``,
``collection``); other fields are ignored. Output: one JSON line per question, in input
order: ``id``, ``question``, ``answer``, ``citations``, ``cache``, or ``error`` (the error
body) for a question that failed, so nothing is lost. Re-running with the same output file
skips the questions already answered there (resumable); a line that failed is retried.

Up to ``concurrency`` questions are in flight together.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .errors import RagError, internal_error_body
from .wire import jsonl_lines

log = logging.getLogger("rag.batch")

Answerer = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
"""A question's item (``id``, ``question``, ...) to the fields of its record (answer, citations, ...)."""


async def answer_each(
    items: Iterable[tuple[Any, dict[str, Any]]],
    answer: Answerer,
    concurrency: int | asyncio.Semaphore,
    record: Callable[[Any, dict[str, Any]], Any],
    *,
    in_order: bool = False,
) -> dict[str, int]:
    """Answer every ``(key, item)``, ``concurrency`` at a time (a semaphore: shared with other
    runs), and ``record(key, result)``
    each as it is done (``in_order``: in the order given, the later ones running meanwhile).
    A result is ``{"id", "question", **answer(item)}``, or the error body for a question
    that failed: one bad question never stops the rest. Cancelled, it cancels what is still
    running (what was recorded stays)."""
    gate = concurrency if isinstance(concurrency, asyncio.Semaphore) else asyncio.Semaphore(concurrency)

    async def one(key: Any, item: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        async with gate:
            head = {"id": item["id"], "question": item["question"]}
            try:
                return key, {**head, **await answer(item)}
            except RagError as exc:
                return key, {**head, "error": exc.body()["error"]}
            except Exception:  # a bug must cost one question, not leave the run stuck
                log.exception("question %r failed", item["id"])
                internal = internal_error_body()
                return key, {**head, **internal}

    tasks = [asyncio.ensure_future(one(key, item)) for key, item in items]
    counts = {"answered": 0, "failed": 0}
    try:
        for done in tasks if in_order else asyncio.as_completed(tasks):
            key, result = await done
            kept = record(key, result)
            if inspect.isawaitable(kept):  # a store that writes off the event loop
                await kept
            counts["failed" if "error" in result else "answered"] += 1
    finally:
        for task in tasks:
            task.cancel()
    return counts


def read_questions(path: Path) -> list[dict[str, Any]]:
    """The questions of a JSONL file; a line that is no question, or whose id another line
    has (ids key the output, and what a rerun skips: one answer would be lost), is an error
    naming it before anything is asked."""
    items: list[dict[str, Any]] = []
    lines_of: dict[str, int] = {}
    for number, line in enumerate(jsonl_lines(path.read_text(encoding="utf-8")), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} line {number} is not JSON ({exc.msg})") from exc
        if not isinstance(record, dict) or not isinstance(record.get("question"), str):
            raise ValueError(f'{path} line {number}: need {{"id", "question"}}')
        history = record.get("history") or []
        if not isinstance(history, list) or not all(_is_turn(t) for t in history):
            raise ValueError(f'{path} line {number}: history is a list of {{"role": "user" or "assistant", "content"}}')
        if record.get("id") is None:  # none, or null: its line number
            record["id"] = f"line-{number}"
        if (first := lines_of.setdefault(str(record["id"]), number)) != number:
            raise ValueError(
                f"{path} line {number} repeats the id {record['id']!r} of line {first} - "
                "each question needs its own id (or none: its line number is used)"
            )
        items.append(record)
    return items


def _is_turn(turn: Any) -> bool:
    return isinstance(turn, dict) and turn.get("role") in ("user", "assistant") and isinstance(turn.get("content"), str)


def answered_ids(path: Path) -> set[str]:
    """Ids already answered (not failed) in an earlier run's output."""
    if not path.exists():
        return set()
    done = set()
    for line in jsonl_lines(path.read_text(encoding="utf-8")):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash: answered again
        if "answer" in record:
            done.add(str(record["id"]))
    return done


async def run_batch(
    items: list[dict[str, Any]],
    out: Path,
    answer: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
    concurrency: int = 8,
    progress: bool | None = None,
) -> dict[str, int]:
    """Answer ``items`` not yet answered in ``out``; append their lines in input order."""
    done = answered_ids(out)
    todo = [item for item in items if str(item["id"]) not in done]
    if out.exists():  # keep answered lines, drop failed or cut ones (they are redone)
        kept = [line for line in jsonl_lines(out.read_text(encoding="utf-8")) if _is_answer(line)]
        out.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
    skipped = len(items) - len(todo)
    out.parent.mkdir(parents=True, exist_ok=True)
    with (
        out.open("a", encoding="utf-8") as sink,
        tqdm(
            total=len(items),
            initial=skipped,
            desc="answering",
            unit="q",
            disable=None if progress is None else not progress,
        ) as bar,
    ):

        def write(_: Any, record: dict[str, Any]) -> None:
            sink.write(json.dumps(record, ensure_ascii=False) + "\n")
            sink.flush()
            bar.update()

        counts = {
            "skipped": skipped,
            **await answer_each(((None, i) for i in todo), answer, concurrency, write, in_order=True),
        }
    if skipped:  # a resumed run appended after the kept lines: restore input order
        lines = {str(json.loads(line)["id"]): line for line in jsonl_lines(out.read_text(encoding="utf-8")) if line}
        ordered = [lines[str(item["id"])] for item in items if str(item["id"]) in lines]
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text("".join(f"{line}\n" for line in ordered), encoding="utf-8")
        tmp.replace(out)
    return counts


def _is_answer(line: str) -> bool:
    try:
        return "answer" in json.loads(line)
    except json.JSONDecodeError:
        return False

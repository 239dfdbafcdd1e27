"""`rag batch`: answer a file of questions offline, many in flight at once.

Input: one question a line in the qa shape (``id``, ``question``, optional ``history``,
``collection``); other fields are ignored. Output: one JSON line per question, in input
order: ``id``, ``question``, ``answer``, ``citations``, ``cache``, or ``error`` (the error
body) for a question that failed, so nothing is lost. Re-running with the same output file
skips the questions already answered there (resumable); a line that failed is retried.

Up to ``concurrency`` questions are in flight together, so a vLLM backend batches them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .errors import RagError


def read_questions(path: Path) -> list[dict[str, Any]]:
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} line {number} is not JSON ({exc.msg})") from exc
        if not isinstance(record, dict) or not isinstance(record.get("question"), str):
            raise ValueError(f'{path} line {number}: need {{"id", "question"}}')
        record.setdefault("id", f"line-{number}")
        items.append(record)
    return items


def answered_ids(path: Path) -> set[str]:
    """Ids already answered (not failed) in an earlier run's output."""
    if not path.exists():
        return set()
    done = set()
    for line in path.read_text(encoding="utf-8").splitlines():
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
        kept = [line for line in out.read_text(encoding="utf-8").splitlines() if _is_answer(line)]
        out.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
    gate = asyncio.Semaphore(concurrency)

    async def one(item: dict[str, Any]) -> dict[str, Any]:
        async with gate:
            try:
                return {"id": item["id"], "question": item["question"], **await answer(item)}
            except RagError as exc:
                return {"id": item["id"], "question": item["question"], "error": exc.body()["error"]}

    tasks = [asyncio.ensure_future(one(item)) for item in todo]
    counts = {"skipped": len(items) - len(todo), "answered": 0, "failed": 0}
    out.parent.mkdir(parents=True, exist_ok=True)
    with (
        out.open("a", encoding="utf-8") as sink,
        tqdm(
            total=len(items),
            initial=counts["skipped"],
            desc="answering",
            unit="q",
            disable=None if progress is None else not progress,
        ) as bar,
    ):
        for task in tasks:  # in input order; later ones keep running meanwhile
            record = await task
            sink.write(json.dumps(record, ensure_ascii=False) + "\n")
            sink.flush()
            counts["failed" if "error" in record else "answered"] += 1
            bar.update()
    if counts["skipped"]:  # a resumed run appended after the kept lines: restore input order
        lines = {str(json.loads(line)["id"]): line for line in out.read_text(encoding="utf-8").splitlines()}
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

"""`rag eval answers`: answer quality and latency of a backend on a QA data set.

Ingests the corpus into a scratch data dir, asks every question with the cache off, and
scores each answer against the gold answers (SQuAD-normalised containment and token F1)
and its citations against the gold passages.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rag.prompts import NO_ANSWER
from rag.settings import Settings

from .data import QAItem, contains_answer, token_f1


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def _ask_all(pipeline: Any, items: list[QAItem], progress: bool | None) -> list[dict[str, Any]]:
    rows = []
    for item in tqdm(items, desc="answering", unit="q", disable=None if progress is None else not progress):
        started = time.perf_counter()
        answer = await pipeline.answer(item.question, "eval", history=item.history or None)
        elapsed = (time.perf_counter() - started) * 1000
        cited = [c.document_id for c in answer.citations]
        rows.append(
            {
                "id": item.id,
                "question": item.question,
                "gold": item.answers,
                "answer": answer.answer,
                "contains": contains_answer(answer.answer, item.answers)
                if item.answers
                else answer.answer == NO_ANSWER,
                "f1": token_f1(answer.answer, item.answers) if item.answers else float(answer.answer == NO_ANSWER),
                "no_answer": answer.answer == NO_ANSWER,
                "fell_back": not answer.grounded,
                "cited_gold": bool(set(cited) & set(item.gold_passage_ids)),
                "citation_recall": len(set(cited) & set(item.gold_passage_ids)) / len(set(item.gold_passage_ids))
                if item.gold_passage_ids
                else None,
                "answerable": bool(item.answers),
                "latency_ms": elapsed,
                "generate_ms": answer.timings_ms["generate"],
                "completion_tokens": answer.usage.get("completion_tokens") or 0,
            }
        )
    return rows


def evaluate_answers(
    corpus: list[Path],
    items: list[QAItem],
    settings: Settings,
    *,
    progress: bool | None = None,
    index_type: str | None = None,
) -> dict[str, Any]:
    from ingest.runner import ingest
    from rag.pipeline import build_pipeline

    with tempfile.TemporaryDirectory(prefix="rag-eval-") as scratch:
        settings = settings.model_copy(update={"data_dir": Path(scratch), "cache_enabled": False})
        pipeline = build_pipeline(settings)
        report = ingest(corpus, "eval", settings, pipeline.embedder, progress=progress, index_type=index_type)

        async def run() -> list[dict[str, Any]]:
            try:
                return await _ask_all(pipeline, items, progress)
            finally:
                await pipeline.aclose()

        rows = asyncio.run(run())
    n = len(rows) or 1
    answerable = [r for r in rows if r["answerable"]]
    unanswerable = [r for r in rows if not r["answerable"]]
    with_gold = [r["citation_recall"] for r in answerable if r["citation_recall"] is not None]

    def share(selected: list[dict[str, Any]], key: str) -> float | None:
        return sum(bool(r[key]) for r in selected) / len(selected) if selected else None

    latencies = [r["latency_ms"] for r in rows]
    gen_ms = sum(r["generate_ms"] for r in rows)
    tokens = sum(r["completion_tokens"] for r in rows)
    summary = {
        "backend": pipeline.generator.name,
        "shots": settings.shots,
        "questions": len(rows),
        "chunks": report.chunks_total,
        "n": len(rows),
        "contains": share(answerable, "contains"),
        "f1": sum(r["f1"] for r in answerable) / len(answerable) if answerable else None,
        "citation_recall": sum(with_gold) / len(with_gold) if with_gold else None,
        "abstain_rate": share(unanswerable, "no_answer"),
        "false_abstain_rate": share(answerable, "no_answer"),
        "answer_contains_gold": sum(r["contains"] for r in rows) / n,
        "token_f1": sum(r["f1"] for r in rows) / n,
        "said_no_answer": sum(r["no_answer"] for r in rows) / n,
        "grounding_fallbacks": sum(r["fell_back"] for r in rows) / n,
        "cited_gold_passage": sum(r["cited_gold"] for r in rows) / n,
        "latency_p50_ms": statistics.median(latencies) if latencies else 0.0,
        "latency_p95_ms": _pct(latencies, 0.95),
        "decode_tok_per_s": tokens / (gen_ms / 1000) if gen_ms else 0.0,
    }
    return {"summary": summary, "rows": rows}


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"{k:>22}: {v:.3f}" if isinstance(v, float) else f"{k:>22}: {'n/a' if v is None else v}"
        for k, v in summary.items()
    ]
    return "\n".join(lines)


def write_results(result: dict[str, Any], out_dir: Path, name: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"answers-{name}.json"
    path.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    return path

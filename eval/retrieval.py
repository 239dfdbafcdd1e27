"""`rag eval retrieval`: does retrieval find the gold passages? On any corpus + qa set.

Ingests the corpus into a scratch collection (or uses an existing one), then, for each
question (with its ``history`` when it has one), plans the search as the service does
(entity carry-over, filters), embeds, retrieves, and scores the ranked passages (chunks of
one passage count once) against ``gold_passage_ids``:

- ``recall@k``: share of a question's gold passages in the top k, averaged;
- ``mrr@10``: 1 / rank of the first gold passage;
- ``ndcg@10``: binary-relevance nDCG;
- ``latency_ms``: p50 / p95 of planning + embedding + search, one question at a time.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .data import QAItem, gold_id_warning
from .stats import percentile

METRICS = ("recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10")


def score_ranking(ranked: list[str], gold: list[str]) -> dict[str, float]:
    wanted = set(gold)
    scores = {f"recall@{k}": len(wanted & set(ranked[:k])) / len(wanted) for k in (1, 5, 10)}
    first = next((i for i, doc in enumerate(ranked[:10]) if doc in wanted), None)
    scores["mrr@10"] = 0.0 if first is None else 1.0 / (first + 1)
    dcg = sum(1.0 / math.log2(i + 2) for i, doc in enumerate(ranked[:10]) if doc in wanted)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(wanted), 10)))
    scores["ndcg@10"] = dcg / ideal
    return scores


def evaluate_retrieval(
    corpus: list[Path] | None,
    items: list[QAItem],
    settings: Any,
    *,
    k: int = 10,
    index_type: str | None = None,
    collection: str | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Metrics over ``items`` (those with gold passages). With ``corpus``, it is ingested into
    a scratch directory first; without, ``collection`` of ``settings.data_dir`` is used."""
    from ingest.runner import ingest
    from rag.embedder import SentenceTransformerEmbedder, embed_as_questions
    from rag.generators import get_generator
    from rag.pipeline import Pipeline

    items = [i for i in items if i.gold_passage_ids]
    if not items:
        raise ValueError("no question has gold_passage_ids: nothing to score")
    embedder = SentenceTransformerEmbedder.from_settings(settings).load()
    with tempfile.TemporaryDirectory() as tmp:
        if corpus is not None:
            settings = settings.model_copy(update={"data_dir": Path(tmp), "cache_enabled": False})
            collection = "eval"
            report = ingest(corpus, collection, settings, embedder, progress=progress, index_type=index_type)
            ingest_seconds = report.seconds
        else:
            ingest_seconds = 0.0
        pipeline = Pipeline(settings, embedder, get_generator("extractive", settings))  # retrieval only
        index = pipeline.get_index(collection or settings.collection)
        per_question: list[dict[str, Any]] = []
        latencies: list[float] = []
        for item in tqdm(items, desc="retrieving", unit="q", disable=None if progress is None else not progress):
            started = time.perf_counter()
            text, filters = pipeline.plan_search(index, item.question, item.history, None)
            vector = embed_as_questions(embedder, [text])[0]
            chunks = pipeline.retrieve(index, vector, text, 3 * k, filters)
            latencies.append((time.perf_counter() - started) * 1000)
            ranked = list(dict.fromkeys(c.document_id for c in chunks))[:k]
            per_question.append({"id": item.id, "ranked": ranked, **score_ranking(ranked, item.gold_passage_ids)})
        meta = dict(index.meta)
        warning = gold_id_warning(items, index.document_ids(), answered_only=False)
        index.close()
    summary: dict[str, Any] = {m: round(statistics.fmean(q[m] for q in per_question), 4) for m in METRICS}
    summary.update(
        n=len(per_question),
        latency_ms={"p50": round(percentile(latencies, 50), 2), "p95": round(percentile(latencies, 95), 2)},
        index_type=meta.get("index_type", "flat"),
        retrieval_mode=settings.retrieval_mode,
        entity_filter=settings.entity_filter,
        reranker=settings.reranker,
        **(
            {"rerank_pool": settings.rerank_pool, "rerank_failures": pipeline.rerank_failures}
            if settings.reranker
            else {}
        ),
        chunks=meta.get("chunks"),
        ingest_seconds=round(ingest_seconds, 1),
        **({"warning": warning} if warning else {}),
    )
    return {"summary": summary, "questions": per_question}


def write_run(out: Path, name: str, summary: dict[str, Any], questions: list[dict[str, Any]] | None = None) -> Path:
    """The run's summary (``retrieval-NAME.json``, what :func:`plot_runs` reads) and each
    question's ranking and scores beside it (``retrieval-NAME.questions.jsonl``)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"retrieval-{name}.json"
    path.write_text(json.dumps(summary, indent=2))
    if questions is not None:
        lines = (json.dumps(q, ensure_ascii=False) for q in questions)
        (out / f"retrieval-{name}.questions.jsonl").write_text("".join(line + "\n" for line in lines))
    return path


def plot_runs(out: Path) -> Path:
    """A grouped bar chart of every retrieval-*.json run in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {p.stem.removeprefix("retrieval-"): json.loads(p.read_text()) for p in sorted(out.glob("retrieval-*.json"))}
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / max(1, len(runs))
    for i, (name, run) in enumerate(runs.items()):
        xs = [m + i * width for m in range(len(METRICS))]
        ax.bar(xs, [run[m] for m in METRICS], width, label=f"{name} (n={run['n']})")
    ax.set_xticks([m + 0.4 - width / 2 for m in range(len(METRICS))], METRICS)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.set_title("rag eval retrieval")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "retrieval.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

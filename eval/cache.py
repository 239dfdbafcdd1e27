"""`rag eval cache`: how often the semantic cache serves the right answer, and how often
the wrong one.

- Pairs (``text_a``, ``text_b``, ``label``): put ``text_a`` in an empty cache, ask ``text_b``.
  hit_rate is measured on label-1 pairs, false_hit_rate on label-0 pairs (also per ``kind``).
- FAQ (corpus of ``id``/``question``/``answer`` + qa.jsonl): seed the cache with every FAQ
  question, ask every qa question: a correct hit serves the entry in ``gold_passage_ids``.

Both run the real cache (diskcache + FAISS, the guards) on real embeddings; the FAQ mode also
runs the retrieval check over an index of the FAQ corpus, as the service does.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from cache import SemanticCache


def load_pairs(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _embed_unique(embedder: Any, texts: list[str]) -> dict[str, np.ndarray]:
    unique = sorted(set(texts))
    return dict(zip(unique, embedder.embed_batch(unique), strict=True))


def eval_pairs(
    pairs: list[dict[str, Any]],
    embedder: Any,
    threshold: float,
    guards: bool = True,
    vectors: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    vectors = vectors or _embed_unique(embedder, [p["text_a"] for p in pairs] + [p["text_b"] for p in pairs])
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # kind -> [hits, n]
    with tempfile.TemporaryDirectory() as tmp:
        cache = SemanticCache(tmp, dimension=embedder.dimension, threshold=threshold, guards=guards)
        for i, pair in enumerate(pairs):
            scope = f"pair-{i}"  # one empty cache per pair, in one store
            cache.put(scope, pair["text_a"], vectors[pair["text_a"]], {"answer": i})
            hit = cache.get_exact(scope, pair["text_b"]) or cache.get_similar(
                scope, vectors[pair["text_b"]], question=pair["text_b"]
            )
            for key in (f"label{pair['label']}", f"kind:{pair.get('kind', 'unknown')}"):
                counts[key][0] += hit is not None
                counts[key][1] += 1
        cache.close()
    pos, neg = counts["label1"], counts["label0"]
    return {
        "threshold": threshold,
        "guards": guards,
        "n": len(pairs),
        "hit_rate": pos[0] / pos[1] if pos[1] else 0.0,
        "false_hit_rate": neg[0] / neg[1] if neg[1] else 0.0,
        "by_kind": {
            k[5:]: {"hit_rate": h / n, "n": n} for k, (h, n) in sorted(counts.items()) if k.startswith("kind:")
        },
    }


def calibrate(
    pairs: list[dict[str, Any]], embedder: Any, max_false_hit_rate: float, thresholds: list[float]
) -> dict[str, Any] | None:
    """The threshold with the most hits whose false-hit rate stays within the budget."""
    vectors = _embed_unique(embedder, [p["text_a"] for p in pairs] + [p["text_b"] for p in pairs])
    rows = [eval_pairs(pairs, embedder, t, True, vectors) for t in thresholds]
    ok = [r for r in rows if r["false_hit_rate"] <= max_false_hit_rate]
    return max(ok, key=lambda r: (r["hit_rate"], r["threshold"])) if ok else None


def write_env(path: Path, key: str, value: str) -> None:
    """Set ``key=value`` in a dotenv file, keeping its other lines."""
    lines = path.read_text().splitlines() if path.exists() else []
    lines = [line for line in lines if not line.startswith(f"{key}=")] + [f"{key}={value}"]
    path.write_text("\n".join(lines) + "\n")


def eval_faq(
    corpus: Path, qa: Path, embedder: Any, threshold: float, guards: bool = True, retrieval_check: bool = True
) -> dict[str, Any]:
    from ingest.runner import ingest
    from rag.index import CollectionIndex
    from rag.settings import Settings

    from .data import load_qa

    faq = [json.loads(line) for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    items = load_qa(qa)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp))
        ingest([corpus], "faq", settings, embedder, progress=False)
        index = CollectionIndex.load(settings.collections_dir, "faq", model=embedder.name, dimension=embedder.dimension)
        chunk_ids: dict[str, set[int]] = defaultdict(set)
        for chunk_id, doc_id in index._db.execute("SELECT id, document_id FROM chunks"):
            chunk_ids[doc_id].add(chunk_id)
        cache = SemanticCache(Path(tmp) / "cache", dimension=embedder.dimension, threshold=threshold, guards=guards)
        questions = [e["question"] for e in faq]
        for entry, vector in zip(faq, embedder.embed_batch(questions), strict=True):
            cache.put("faq", entry["question"], vector, {"id": entry["id"], "sources": sorted(chunk_ids[entry["id"]])})
        correct = wrong = 0
        for item, vector in zip(items, embedder.embed_batch([i.question for i in items]), strict=True):
            accept = None
            if retrieval_check:
                top = {c.id for c in index.search(vector, 1)}
                accept = lambda payload, top=top: bool(top & set(payload["sources"]))  # noqa: E731
            hit = cache.get_exact("faq", item.question) or cache.get_similar(
                "faq", vector, question=item.question, accept=accept
            )
            if hit is not None:
                correct += hit.payload["id"] in item.gold_passage_ids
                wrong += hit.payload["id"] not in item.gold_passage_ids
        cache.close()
        index.close()
    n = len(items) or 1
    return {
        "threshold": threshold,
        "guards": guards,
        "retrieval_check": retrieval_check,
        "n": len(items),
        "correct_hit_rate": correct / n,
        "wrong_hit_rate": wrong / n,
        "miss_rate": (n - correct - wrong) / n,
    }


def plot_sweep(rows: list[dict[str, Any]], x: str, y: str, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label, group in _group(rows).items():
        group.sort(key=lambda r: r["threshold"])
        ax.plot([r[x] for r in group], [r[y] for r in group], marker="o", label=label)
        for r in group[:: max(1, len(group) // 5)]:
            ax.annotate(f"{r['threshold']:.2f}", (r[x], r[y]), fontsize=7, textcoords="offset points", xytext=(3, 3))
    ax.axvline(0.01, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(y.replace("_", " "))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _group(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        parts = ["guards" if r["guards"] else "threshold only"]
        if r.get("retrieval_check"):
            parts.append("retrieval check")
        groups[" + ".join(parts)].append(r)
    return groups

"""`rag eval cache`: how often the semantic cache serves the right answer, and how often
the wrong one.

- Pairs (``text_a``, ``text_b``, ``label``): put ``text_a`` in an empty cache, ask ``text_b``.
  hit_rate is measured on label-1 pairs, false_hit_rate on label-0 pairs (also per ``kind``).
- FAQ (corpus of ``id``/``question``/``answer`` + qa.jsonl): seed the cache with every FAQ
  question, ask every qa question: a correct hit serves the entry in ``gold_passage_ids``.

Both run the real cache (diskcache + FAISS, the guards) on real embeddings; the FAQ mode also
runs the retrieval check over an index of the FAQ corpus, as the service does. With
:class:`Audits`, the service's audits of served hits are replayed in arrival order: each
question is scored first, then (for an audited share) the cache learns whether its hit was
right, so what it learns counts only for later questions.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cache import SemanticCache
from rag.embedder import embed_as_questions

_PAIR_ALIASES = {"question_1": "text_a", "question_2": "text_b", "similar": "label"}


def load_pairs(path: Path) -> list[dict[str, Any]]:
    """Labelled pairs, JSONL or CSV: ``text_a``, ``text_b``, ``label`` (1 = one answer serves
    both), ``kind`` optional; CSV headers ``question_1, question_2, similar`` work too."""
    if path.suffix.lower() == ".csv":
        import csv

        with path.open(newline="", encoding="utf-8") as f:
            rows: list[dict[str, Any]] = [{_PAIR_ALIASES.get(k, k): v for k, v in r.items()} for r in csv.DictReader(f)]
    else:
        rows = [
            _json_line(path, n, line)
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if line.strip()
        ]
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not {"text_a", "text_b", "label"} <= row.keys():
            raise ValueError(f"{path} row {number}: need text_a, text_b and label")
        if str(row["label"]).strip() not in ("0", "1"):
            raise ValueError(f"{path} row {number}: label is {row['label']!r}; write 1 (one answer serves both) or 0")
        row["label"] = int(row["label"])
    return rows


def _json_line(path: Path, number: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} line {number}: not JSON ({exc.msg}) - one JSON object per line") from exc


def load_faq(path: Path) -> list[dict[str, Any]]:
    """FAQ entries (faq_corpus.jsonl's shape: ``id``, ``question``, ``answer``), each line checked."""
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        entry = _json_line(path, number, line)
        if not isinstance(entry, dict) or not {"id", "question", "answer"} <= entry.keys():
            raise ValueError(
                f"{path} line {number}: an FAQ corpus needs id, question and answer on each line (faq_corpus.jsonl's "
                "shape); passages ({id, title, text}) have no questions to seed the cache with - score them with "
                "`rag eval retrieval` or `rag eval answers`, or the cache with --pairs"
            )
        entries.append(entry)
    return entries


@dataclass(frozen=True)
class Audits:
    """The audit replay: the share of semantic hits checked (RAG_CACHE_AUDIT_RATE) and the
    bound the cache keeps (RAG_CACHE_MAX_WRONG_RATE). An audit's verdict is what the fresh
    answer would say: the pair's label; for an FAQ, whether the passage retrieval finds first
    is one the hit cites (the service compares the fresh answer's citations)."""

    rate: float
    max_wrong_rate: float
    seed: int = 0

    def due(self, rng: np.random.Generator, hit: Any) -> bool:
        return bool(hit.kind == "semantic" and rng.random() < self.rate)


def _embed_unique(embedder: Any, texts: list[str]) -> dict[str, np.ndarray]:
    unique = sorted(set(texts))
    return dict(zip(unique, embed_as_questions(embedder, unique), strict=True))


def eval_pairs(
    pairs: list[dict[str, Any]],
    embedder: Any,
    threshold: float,
    guards: bool = True,
    vectors: dict[str, np.ndarray] | None = None,
    verifier: Any = None,
    audits: Audits | None = None,
) -> dict[str, Any]:
    vectors = vectors or _embed_unique(embedder, [p["text_a"] for p in pairs] + [p["text_b"] for p in pairs])
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # kind -> [hits, n]
    rng = np.random.default_rng(audits.seed if audits else 0)
    bound = audits.max_wrong_rate if audits else 1.0
    with tempfile.TemporaryDirectory() as tmp:
        cache = SemanticCache(
            tmp,
            dimension=embedder.dimension,
            threshold=threshold,
            guards=guards,
            verifier=verifier,
            max_wrong_rate=bound,
        )
        for i, pair in enumerate(pairs):
            scope = f"pair-{i}"  # one empty cache per pair, in one store: one collection's evidence
            cache.put(scope, pair["text_a"], vectors[pair["text_a"]], {"answer": i}, tag="pairs")
            hit = cache.get_exact(scope, pair["text_b"]) or cache.get_similar(
                scope, vectors[pair["text_b"]], question=pair["text_b"]
            )
            for key in (f"label{pair['label']}", f"kind:{pair.get('kind', 'unknown')}"):
                counts[key][0] += hit is not None
                counts[key][1] += 1
            if hit is not None and audits is not None and audits.due(rng, hit):  # scored above, learnt from now
                cache.learn(hit, agreed=bool(pair["label"]))
        evidence = cache.evidence.estimate("pairs")
        cache.close()
    pos, neg = counts["label1"], counts["label0"]
    return {
        "threshold": threshold,
        "guards": guards,
        "verifier": verifier is not None,
        "audits": {"rate": audits.rate, **evidence} if audits else None,
        "n": len(pairs),
        "hit_rate": pos[0] / pos[1] if pos[1] else 0.0,
        "false_hit_rate": neg[0] / neg[1] if neg[1] else 0.0,
        "by_kind": {
            k[5:]: {"hit_rate": h / n, "n": n} for k, (h, n) in sorted(counts.items()) if k.startswith("kind:")
        },
    }


def _seed_faq(cache: SemanticCache, index: Any, faq: list[dict[str, Any]], embedder: Any, top_k: int) -> None:
    """Cache every FAQ entry under its question, with its chunks as the answer's citations."""
    from rag.cache_policy import faq_entry

    citations: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for chunk_id, doc_id, title in index._db.execute("SELECT id, document_id, title FROM chunks ORDER BY id"):
        citations[doc_id].append({"id": chunk_id, "document_id": doc_id, "title": title})
    questions = [e["question"] for e in faq]
    for entry, vector in zip(faq, embed_as_questions(embedder, questions), strict=True):
        cited = citations[entry["id"]]
        # As the service stores an answer: with the FAQ entry both searches find first for
        # its question, when that is the entry the answer is.
        anchor = faq_entry(index.search_detailed(vector, top_k, entry["question"]))
        payload = {"id": entry["id"], "citations": cited, "faq_entry": anchor if anchor == entry["id"] else None}
        cache.put("faq", entry["question"], vector, payload, tag="faq", group=",".join(str(c["id"]) for c in cited))


def _ask_faq(
    cache: SemanticCache,
    index: Any,
    items: list[Any],
    embedder: Any,
    retrieval_check: bool,
    top_k: int,
    audits: Audits | None = None,
) -> tuple[int, int]:
    """Ask every question through the service's cache checks, in order; (correct hits, wrong
    hits). With ``audits``, a share of the semantic hits is checked after it is scored."""
    from rag.cache_policy import faq_confirmed, sources_agree

    correct = wrong = 0
    rng = np.random.default_rng(audits.seed if audits else 0)
    for item, vector in zip(items, embed_as_questions(embedder, [i.question for i in items]), strict=True):
        accept = confirm = None
        found = index.search_detailed(vector, top_k, item.question)
        if retrieval_check:
            accept, confirm = sources_agree(found), faq_confirmed(found)
        hit = cache.get_exact("faq", item.question) or cache.get_similar(
            "faq", vector, question=item.question, accept=accept, confirm=confirm
        )
        if hit is not None:
            correct += hit.payload["id"] in item.gold_passage_ids
            wrong += hit.payload["id"] not in item.gold_passage_ids
        if hit is not None and audits is not None and audits.due(rng, hit):
            fresh = found.chunks[0].id if found.chunks else None
            cache.learn(hit, agreed=fresh in {c["id"] for c in hit.payload["citations"]})
    return correct, wrong


def eval_faq(
    corpus: Path,
    qa: Path,
    embedder: Any,
    threshold: float,
    guards: bool = True,
    retrieval_check: bool = True,
    margin: float = 0.0,
    verifier: Any = None,
    confirmed_threshold: float | None = None,
    confirmed_margin: float | None = None,
    top_k: int = 4,
    audits: Audits | None = None,
) -> dict[str, Any]:
    """Seed the cache with every FAQ entry (its question, and its chunks as the answer's
    citations), ask every qa question through the checks the service runs: hybrid retrieval
    for the source check and the FAQ confirmation (``rag.cache_policy``)."""
    from ingest.runner import ingest
    from rag.settings import Settings
    from rag.store import CollectionIndex

    from .data import load_qa

    faq = load_faq(corpus)
    items = load_qa(qa)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp))
        ingest([corpus], "faq", settings, embedder, progress=False)
        index = CollectionIndex.load(settings.collections_dir, "faq", model=embedder.name, dimension=embedder.dimension)
        cache = SemanticCache(
            Path(tmp) / "cache",
            dimension=embedder.dimension,
            threshold=threshold,
            guards=guards,
            margin=margin,
            verifier=verifier,
            confirmed_threshold=confirmed_threshold,
            confirmed_margin=confirmed_margin,
            max_wrong_rate=audits.max_wrong_rate if audits else 1.0,
        )
        _seed_faq(cache, index, faq, embedder, top_k)
        correct, wrong = _ask_faq(cache, index, items, embedder, retrieval_check, top_k, audits)
        evidence = cache.evidence.estimate("faq")
        cache.close()
        index.close()
    n = len(items) or 1
    return {
        "threshold": threshold,
        "guards": guards,
        "retrieval_check": retrieval_check,
        "margin": margin,
        "confirmed_threshold": confirmed_threshold if retrieval_check else None,
        "confirmed_margin": confirmed_margin if retrieval_check else None,
        "verifier": verifier is not None,
        "audits": {"rate": audits.rate, **evidence} if audits else None,
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
        if r.get("margin"):
            parts.append(f"margin {r['margin']:.2f}")
        if r.get("verifier"):
            parts.append("verifier")
        if r.get("retrieval_check"):
            parts.append("retrieval check")
        if r.get("confirmed_threshold") is not None:
            parts.append(f"FAQ confirmed from {r['confirmed_threshold']:.2f}")
        groups[" + ".join(parts)].append(r)
    return groups

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
from collections.abc import Callable
from dataclasses import dataclass, field
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
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for number, row in enumerate(rows, 1):
        if not {"text_a", "text_b", "label"} <= row.keys():
            raise ValueError(f"{path} row {number}: need text_a, text_b and label")
        row["label"] = int(row["label"])
    return rows


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
) -> dict[str, Any]:
    vectors = vectors or _embed_unique(embedder, [p["text_a"] for p in pairs] + [p["text_b"] for p in pairs])
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # kind -> [hits, n]
    with tempfile.TemporaryDirectory() as tmp:
        cache = SemanticCache(tmp, dimension=embedder.dimension, threshold=threshold, guards=guards, verifier=verifier)
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
        "verifier": verifier is not None,
        "n": len(pairs),
        "hit_rate": pos[0] / pos[1] if pos[1] else 0.0,
        "false_hit_rate": neg[0] / neg[1] if neg[1] else 0.0,
        "by_kind": {
            k[5:]: {"hit_rate": h / n, "n": n} for k, (h, n) in sorted(counts.items()) if k.startswith("kind:")
        },
    }


def load_labelled_questions(path: Path) -> tuple[list[str], list[str]]:
    """Questions labelled with their request (CSV or JSONL): a text column (``text`` or
    ``question``) and a label column (``label``, ``intent`` or ``category``)."""
    if path.suffix.lower() == ".csv":
        import csv

        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    text_key = next((k for k in ("text", "question") if rows and k in rows[0]), None)
    label_key = next((k for k in ("label", "intent", "category") if rows and k in rows[0]), None)
    if text_key is None or label_key is None:
        raise ValueError(f"{path}: need a text (or question) column and a label (or intent, category) column")
    return [str(r[text_key]) for r in rows], [str(r[label_key]) for r in rows]


def _best_cut(
    cos: np.ndarray,
    prob: np.ndarray | None,
    blocked: np.ndarray,
    labels: np.ndarray,
    budget: float,
    floors: list[float],
) -> dict[str, Any] | None:
    """The (cosine floor, verifier cut) with the most hits on label-1 pairs whose false-hit
    rate on label-0 pairs stays within ``budget`` with 95% confidence (Clopper-Pearson upper
    bound): the rate measured on held-out pairs is an estimate, and unseen questions should
    stay within the budget too."""
    from scipy.stats import beta

    pos, neg = labels == 1, labels == 0
    n_neg = int(neg.sum())
    best: dict[str, Any] | None = None
    for floor in floors:
        ok = (cos >= floor) & ~blocked
        cuts = [0.0] if prob is None else sorted({0.5, *np.quantile(prob[neg], np.linspace(0.9, 1.0, 51)).tolist()})
        for cut in cuts:
            hit = ok if prob is None else ok & (prob >= cut)
            false_hits = int(hit[neg].sum())
            fhr, hr = false_hits / n_neg, float(hit[pos].mean())
            upper = float(beta.ppf(0.95, false_hits + 1, n_neg - false_hits)) if false_hits < n_neg else 1.0
            if upper <= budget and (best is None or hr > best["hit_rate"]):
                best = {"threshold": floor, "verifier_threshold": cut, "hit_rate": hr, "false_hit_rate": fhr}
    return best


Labelled = list[tuple[str, str, int]]


@dataclass
class _Split:
    """Calibration data cut in two: rows to fit on and rows to choose and report on (text a,
    text b, same request), and the labelled questions of the fit side."""

    fit: Labelled = field(default_factory=list)
    held: Labelled = field(default_factory=list)
    fit_pairs: int = 0  # rows of ``fit`` that came as labelled pairs
    fit_vectors: np.ndarray | None = None
    fit_labels: list[str] = field(default_factory=list)


def _split_labelled(
    embedder: Any,
    pairs: list[dict[str, Any]] | None,
    questions: tuple[list[str], list[str]] | None,
    holdout: float,
    seed: int,
) -> _Split:
    """(fit, held-out) rows from labelled pairs and questions: questions, not pairs, are split,
    so no text is on both sides."""
    from cache.verifier import pairs_from_labelled

    rng = np.random.default_rng(seed)
    split = _Split()
    if pairs:
        order = rng.permutation(len(pairs))
        cut = int(len(pairs) * (1 - holdout))
        for rank, i in enumerate(order):
            p = pairs[i]
            (split.fit if rank < cut else split.held).append((p["text_a"], p["text_b"], int(p["label"])))
        split.fit_pairs = len(split.fit)
    if questions:
        texts, labels = questions
        vectors = np.asarray(embed_as_questions(embedder, texts), dtype=np.float32)
        side = rng.random(len(texts)) >= holdout
        for part, target in ((side, split.fit), (~side, split.held)):
            idx = np.flatnonzero(part)
            left, right, same = pairs_from_labelled(vectors[idx], [labels[i] for i in idx], seed=seed)
            target += [(texts[idx[a]], texts[idx[b]], int(y)) for a, b, y in zip(left, right, same, strict=True)]
        split.fit_vectors = vectors[side]
        split.fit_labels = [label for label, s in zip(labels, side, strict=True) if s]
    return split


REQUEST_C = (1.0, 10.0, 100.0)
"""Inverse regularisation strengths tried for the request verifier, chosen on held-out data."""


def _verifiers(
    split: _Split, arrays: Callable[[Labelled], tuple[np.ndarray, np.ndarray, np.ndarray]], seed: int
) -> list[tuple[str, Any]]:
    """Candidate verifiers fitted on the fit side: the pair network (from 200 labelled pairs
    up) and the request classifier at each regularisation (when labelled questions name 2+
    requests). Pairs mined from labelled questions do not train the network: on banking77 it
    served 0.163 of held-out same-request pairs where the request classifier served 0.386, at
    the same false-hit budget, and took eight minutes of the nine."""
    from cache.verifier import PairVerifier, RequestVerifier

    found: list[tuple[str, Any]] = []
    if split.fit_pairs >= 200:
        fa, fb, fy = arrays(split.fit[: split.fit_pairs])
        found.append(("pair verifier", PairVerifier.train(fa, fb, fy, seed=seed)))  # symmetric in a and b
    if split.fit_vectors is not None and len(set(split.fit_labels)) >= 2:
        for c in REQUEST_C:
            found.append((f"request verifier (C={c:g})", RequestVerifier.train(split.fit_vectors, split.fit_labels, c)))
    return found


def calibrate(
    embedder: Any,
    max_false_hit_rate: float,
    pairs: list[dict[str, Any]] | None = None,
    questions: tuple[list[str], list[str]] | None = None,
    train_verifier: bool = True,
    holdout: float = 0.2,
    seed: int = 0,
) -> dict[str, Any]:
    """Settings for the user's domain from labelled pairs and/or labelled questions.

    A share of the data is held out: the verifiers are trained on the rest, and the threshold
    (and a verifier's cut) are chosen on the held-out pairs, with the near-miss guards on,
    so the reported rates are what unseen questions should see. A verifier is kept only where
    it wins over the threshold alone: the pair network (from pairs), the request classifier
    (from labelled questions)."""
    from cache.guards import conflict

    split = _split_labelled(embedder, pairs, questions, holdout, seed)
    held = split.held
    if not held or len({y for *_, y in held}) < 2:
        raise ValueError("need labelled data with both same-request and different-request examples")
    unique = _embed_unique(embedder, [t for a, b, _ in split.fit + held for t in (a, b)])

    def arrays(rows: Labelled) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a = np.vstack([unique[r[0]] for r in rows]).astype(np.float32)
        b = np.vstack([unique[r[1]] for r in rows]).astype(np.float32)
        return a, b, np.asarray([r[2] for r in rows])

    ha, hb, hy = arrays(held)
    negatives = int((hy == 0).sum())
    if 1 - 0.05 ** (1 / negatives) > max_false_hit_rate:  # even no false hit could not show the rate
        raise ValueError(
            f"{negatives} held-out different-request pairs cannot show a false-hit rate under "
            f"{max_false_hit_rate:.1%}: give at least {int(3 / max_false_hit_rate / holdout)} different-request "
            "pairs, or labelled questions with --questions"
        )
    cos = (ha * hb).sum(axis=1)
    blocked = np.asarray([conflict(a, b) is not None for a, b, _ in held])
    floors = [round(0.30 + 0.01 * i, 2) for i in range(70)]
    result: dict[str, Any] = {"n_fit": len(split.fit), "n_holdout": len(held), "verifier": None, "candidates": {}}
    result["threshold_only"] = best = _best_cut(cos, None, blocked, hy, max_false_hit_rate, floors)
    for name, verifier in _verifiers(split, arrays, seed) if train_verifier else []:
        row = _best_cut(cos, verifier.probability(ha, hb), blocked, hy, max_false_hit_rate, floors)
        result["candidates"][name] = row
        if row is not None and (best is None or row["hit_rate"] > best["hit_rate"]):
            verifier.threshold = row["verifier_threshold"]
            best, result["verifier"] = {**row, "verifier": name}, verifier
    result["chosen"] = best
    return result


def write_env(path: Path, key: str, value: str | None) -> None:
    """Set ``key=value`` in a dotenv file (``None`` removes the key), keeping its other lines."""
    lines = path.read_text().splitlines() if path.exists() else []
    lines = [line for line in lines if not line.startswith(f"{key}=")] + ([f"{key}={value}"] if value else [])
    path.write_text("\n".join(lines) + "\n")


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
        cache.put("faq", entry["question"], vector, payload, group=",".join(str(c["id"]) for c in cited))


def _ask_faq(
    cache: SemanticCache, index: Any, items: list[Any], embedder: Any, retrieval_check: bool, top_k: int
) -> tuple[int, int]:
    """Ask every question through the service's cache checks; (correct hits, wrong hits)."""
    from rag.cache_policy import faq_confirmed, sources_agree

    correct = wrong = 0
    for item, vector in zip(items, embed_as_questions(embedder, [i.question for i in items]), strict=True):
        accept = confirm = None
        if retrieval_check:
            found = index.search_detailed(vector, top_k, item.question)
            accept, confirm = sources_agree(found), faq_confirmed(found)
        hit = cache.get_exact("faq", item.question) or cache.get_similar(
            "faq", vector, question=item.question, accept=accept, confirm=confirm
        )
        if hit is not None:
            correct += hit.payload["id"] in item.gold_passage_ids
            wrong += hit.payload["id"] not in item.gold_passage_ids
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
) -> dict[str, Any]:
    """Seed the cache with every FAQ entry (its question, and its chunks as the answer's
    citations), ask every qa question through the checks the service runs: hybrid retrieval
    for the source check and the FAQ confirmation (``rag.cache_policy``)."""
    from ingest.runner import ingest
    from rag.settings import Settings
    from rag.store import CollectionIndex

    from .data import load_qa

    faq = [json.loads(line) for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
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
        )
        _seed_faq(cache, index, faq, embedder, top_k)
        correct, wrong = _ask_faq(cache, index, items, embedder, retrieval_check, top_k)
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

"""`rag cache calibrate`: the cache settings for a user's domain, from labelled pairs and/or
questions labelled with their request, chosen on a held-out share so that the rates it
reports are what unseen questions should see."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rag.embedder import embed_as_questions

from .cache import _embed_unique


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

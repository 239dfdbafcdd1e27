"""The cache's hit rate at a stated wrong-hit bound, beside the best a plain threshold could do.

A cache policy is only as good as the hits it serves at the error a user accepts. For each
bound (0.5%, 1% and 2% wrong hits by default) this reports:

- **the best plain threshold**: every cosine threshold over the same question vectors, the
  most hits whose wrong-hit rate stays at or under the bound. It is picked on the very data it
  is scored on, so it is an upper bound on what any single threshold can do (an oracle), and
  the fair yardstick for a policy that is *not* picked on the scored data;
- **the policy swept** (``rag eval cache --sweep``): the service's checks at each threshold
  of the sweep, the best at or under the bound: an oracle in the same way;
- **the policy as configured**: the one point the settings give, which is what a user gets.

Both shapes of ``../shared/data`` work: pairs (one cached question, one asked) and an FAQ
corpus with reworded questions (every FAQ question cached; a hit is correct when it serves
the gold entry).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cache import normalize_question
from rag.embedder import embed_as_questions

BOUNDS = (0.005, 0.01, 0.02)
EXACT = 1.0
"""The score of a question the exact tier serves (same words once normalised), at any threshold."""


def threshold_curve(
    scores: np.ndarray, good: np.ndarray, n_good: int, n_bad: int, x: str, y: str
) -> list[dict[str, Any]]:
    """Hit rates of ``cosine >= t`` for every distinct ``t`` in ``scores`` (highest first).
    ``good`` marks the candidates that would be right hits; the rest would be wrong ones.
    ``y`` is the right hits over ``n_good``, ``x`` the wrong ones over ``n_bad``."""
    order = np.argsort(-scores, kind="stable")
    ranked, right = scores[order], good[order]
    right_hits, wrong_hits = np.cumsum(right), np.cumsum(~right)
    last = np.r_[ranked[1:] != ranked[:-1], True]  # the end of each run of equal scores
    curve: list[dict[str, Any]] = []
    for t, r, w in zip(ranked[last], right_hits[last], wrong_hits[last], strict=True):
        if curve and r == curve[-1]["_right"]:
            continue  # a lower cut that adds only wrong hits: never the best at any bound
        curve.append(
            {"threshold": round(float(t), 4), y: float(r) / max(n_good, 1), x: float(w) / max(n_bad, 1), "_right": r}
        )
    for row in curve:
        del row["_right"]
    return curve


def plain_curve_pairs(pairs: list[dict[str, Any]], vectors: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Each pair's cosine as its own cache of one: hit rate on label-1 pairs, false-hit rate on
    label-0 pairs, at every threshold."""
    scores = np.asarray([float(np.dot(vectors[p["text_a"]], vectors[p["text_b"]])) for p in pairs], dtype=np.float64)
    labels = np.asarray([int(p["label"]) for p in pairs])
    same = np.asarray([normalize_question(p["text_a"]) == normalize_question(p["text_b"]) for p in pairs])
    scores = np.where(same, EXACT, scores)  # the exact tier serves these whatever the threshold
    positives, negatives = int((labels == 1).sum()), int((labels == 0).sum())
    return threshold_curve(scores, labels == 1, positives, negatives, "false_hit_rate", "hit_rate")


def plain_curve_faq(corpus: Path, qa: Path, embedder: Any) -> list[dict[str, Any]]:
    """Every FAQ question cached; each reworded question is served its nearest cached question
    when the cosine reaches the threshold: correct and wrong hits over all questions."""
    from .cache import load_faq
    from .data import load_qa

    faq = load_faq(corpus)
    items = load_qa(qa)
    cached = np.asarray(embed_as_questions(embedder, [e["question"] for e in faq]), dtype=np.float32)
    asked = np.asarray(embed_as_questions(embedder, [i.question for i in items]), dtype=np.float32)
    similarity = asked @ cached.T
    nearest = similarity.argmax(axis=1)
    scores = similarity[np.arange(len(items)), nearest].astype(np.float64)
    exact = {normalize_question(e["question"]): n for n, e in enumerate(faq)}
    for i, item in enumerate(items):
        if (n := exact.get(normalize_question(item.question))) is not None:
            nearest[i], scores[i] = n, EXACT
    correct = np.asarray([faq[n]["id"] in item.gold_passage_ids for n, item in zip(nearest, items, strict=True)])
    return threshold_curve(scores, correct, len(items), len(items), "wrong_hit_rate", "correct_hit_rate")


def at_bounds(rows: list[dict[str, Any]], x: str, y: str, bounds: tuple[float, ...] = BOUNDS) -> dict[str, Any]:
    """For each bound, the row with the most ``y`` whose ``x`` is at or under it (None: none is)."""
    best: dict[str, Any] = {}
    for bound in bounds:
        within = [r for r in rows if r[x] <= bound + 1e-12]
        best[f"{bound:g}"] = max(within, key=lambda r: (r[y], -r[x]), default=None)
    return best


def report(
    plain: list[dict[str, Any]],
    configured: dict[str, Any],
    x: str,
    y: str,
    policy_rows: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The operating points: the best plain threshold and the swept policy at each bound, and
    the configured policy's own point."""
    out: dict[str, Any] = {
        "bounds": [f"{b:g}" for b in BOUNDS],
        "best_plain_threshold": at_bounds(plain, x, y),
        "policy_as_configured": {k: configured[k] for k in ("threshold", x, y) if k in configured},
    }
    if policy_rows:
        out["policy_swept"] = at_bounds(policy_rows, x, y)
    return out


def format_report(points: dict[str, Any], x: str, y: str) -> list[str]:
    def cell(row: dict[str, Any] | None) -> str:
        return f"{row[y]:.3f} at {row[x]:.4f} (t {row['threshold']:.2f})" if row else "0 (no cut keeps to it)"

    head = f"{'best ' + y.replace('_', ' ') + ' with ' + x.replace('_', ' ') + ' at or under':<44}"
    lines = [head + "".join(f"{float(b):>28.1%}" for b in points["bounds"])]
    names = [
        ("best plain threshold (oracle)", "best_plain_threshold"),
        ("policy, threshold swept (oracle)", "policy_swept"),
    ]
    for label, key in names:
        if key in points:
            lines.append(f"{label:<44}" + "".join(f"{cell(points[key][b]):>28}" for b in points["bounds"]))
    mine = points["policy_as_configured"]
    lines.append(f"policy as configured (threshold {mine['threshold']:.2f}): {y} {mine[y]:.3f}, {x} {mine[x]:.4f}")
    return lines


def plot_bounds(
    plain: list[dict[str, Any]],
    points: dict[str, Any],
    x: str,
    y: str,
    path: Path,
    title: str,
    policy_rows: list[dict[str, Any]] | None = None,
) -> Path:
    """The plain threshold's curve (and the swept policy's), the configured point and the bounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.plot([r[x] for r in plain], [r[y] for r in plain], label="plain threshold (every cut)", color="C0")
    if policy_rows:
        rows = sorted(policy_rows, key=lambda r: r["threshold"])
        ax.plot([r[x] for r in rows], [r[y] for r in rows], "o-", color="C1", label="policy, threshold swept")
    mine = points["policy_as_configured"]
    ax.plot(
        [mine[x]], [mine[y]], "*", markersize=14, color="C3", label=f"policy as configured ({mine['threshold']:.2f})"
    )
    for bound in points["bounds"]:
        ax.axvline(float(bound), color="grey", linestyle=":", linewidth=1)
    ax.set_xlim(0, max(0.05, float(points["bounds"][-1]) * 2))
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(y.replace("_", " "))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(points: dict[str, Any], plain: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**points, "plain_curve": plain}, indent=1), encoding="utf-8")
    return path

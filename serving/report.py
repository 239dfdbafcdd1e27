"""What the support loop shows a team (the admin page, `rag report`): per collection and day,
how many answers resolved the question (answered, and not voted down), how many abstained,
the cache hit rate and p50/p95 latency; the questions it could not answer, grouped by
meaning; the answers people voted down, with their citations; the curated answers.

One read of the support store a report (answers in the range, their thumbs-downs); the rates
and percentiles are computed here, the same for SQLite and PostgreSQL. The unanswered
questions are grouped by their embeddings: the 300 most frequent texts, greedily, a group
being every text within cosine ``GROUP_SIMILARITY`` of its first (most frequent) member.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np

from rag.errors import InvalidRequestError

from .support_store import SupportStore

DAY_S = 86_400
GROUP_SIMILARITY = 0.75
MOST_FREQUENT = 300


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def _scoped(collection: str | None, since: float, until: float, prefix: str = "") -> tuple[str, list[Any]]:
    where = f" WHERE {prefix}created_at >= ? AND {prefix}created_at < ?"
    params: list[Any] = [since, until]
    if collection is not None:
        where += f" AND {prefix}collection = ?"
        params.append(collection)
    return where, params


_ASKED = " AND a.answer_kind <> 'small_talk'"  # "thanks!" is not a question, resolved or not


def daily(store: SupportStore, collection: str | None, since: float, until: float) -> list[dict[str, Any]]:
    where, params = _scoped(collection, since, until, "a.")
    sql = (
        "SELECT a.created_at, CASE WHEN a.answer_kind = 'no_answer' THEN 1 ELSE 0 END, "
        f"CASE WHEN a.cache_kind IS NULL THEN 0 ELSE 1 END, a.latency_ms FROM answers a{where}{_ASKED}"
    )
    rows = np.asarray(store.sql.query(sql, params), dtype=np.float64).reshape(-1, 4)
    if not len(rows):
        return []
    # The answers voted down (once each), by the day they were given on: a few, not a scan.
    down_sql = (
        "SELECT DISTINCT a.id, a.created_at, CASE WHEN a.answer_kind = 'no_answer' THEN 1 ELSE 0 END "
        f"FROM answers a JOIN feedback f ON f.answer_id = a.id{where} AND f.rating = 'down'{_ASKED}"
    )
    down = np.asarray([r[1:] for r in store.sql.query(down_sql, params)], dtype=np.float64).reshape(-1, 2)
    day_of = np.floor(rows[:, 0] / DAY_S).astype(np.int64)
    down_day = np.floor(down[:, 0] / DAY_S).astype(np.int64)
    order = np.argsort(day_of, kind="stable")
    days, starts = np.unique(day_of[order], return_index=True)
    out = []
    for day, group in zip(days, np.split(rows[order], starts[1:]), strict=True):
        n = len(group)
        abstained, hits, latency = group[:, 1], group[:, 2], group[:, 3]
        voted = down[down_day == day]
        out.append({
            "day": _day(float(day) * DAY_S), "answers": n,
            "resolution_rate": round(float((abstained == 0).sum() - (voted[:, 1] == 0).sum()) / n, 4),
            "abstention_rate": round(float(abstained.sum()) / n, 4), "voted_down": len(voted),
            "cache_hit_rate": round(float(hits.sum()) / n, 4),
            "p50_ms": round(float(np.percentile(latency, 50)), 1),
            "p95_ms": round(float(np.percentile(latency, 95)), 1),
        })  # fmt: skip
    return out


_VECTORS: dict[tuple[str, str], np.ndarray] = {}  # (model, text): each unanswered text embedded once


def _embed(embedder: Any, texts: list[str]) -> np.ndarray:
    name = str(getattr(embedder, "name", ""))
    missing = [t for t in texts if (name, t) not in _VECTORS]
    if missing:
        if len(_VECTORS) > 50_000:
            _VECTORS.clear()
        _VECTORS.update({(name, t): v for t, v in zip(missing, embedder.embed_batch(missing), strict=True)})
    return np.vstack([_VECTORS[(name, t)] for t in texts])


def unanswered(store: SupportStore, embedder: Any, collection: str | None, since: float, until: float,
               top: int = 20) -> list[dict[str, Any]]:  # fmt: skip
    """The questions answered "I don't know", grouped by meaning, biggest group first."""
    where, params = _scoped(collection, since, until)
    sql = (
        f"SELECT question, COUNT(*) AS n FROM answers{where} AND answer_kind = 'no_answer' "
        f"GROUP BY question ORDER BY n DESC, question LIMIT {MOST_FREQUENT}"
    )
    rows = store.sql.query(sql, params)
    if not rows:
        return []
    vectors = _embed(embedder, [str(q) for q, _ in rows])
    groups: list[dict[str, Any]] = []
    members: list[int] = []  # the row that leads each group
    for i, (question, count) in enumerate(rows):
        if members:
            similarity = vectors[members] @ vectors[i]
            best = int(np.argmax(similarity))
            if similarity[best] >= GROUP_SIMILARITY:
                groups[best]["count"] += int(count)
                groups[best]["examples"] += [question] if len(groups[best]["examples"]) < 5 else []
                continue
        members.append(i)
        groups.append({"question": question, "count": int(count), "examples": [question]})
    return sorted(groups, key=lambda g: -g["count"])[:top]


def voted_down(store: SupportStore, collection: str | None, since: float, until: float,
               limit: int = 50) -> list[dict[str, Any]]:  # fmt: skip
    where, params = _scoped(collection, since, until, "f.")
    sql = (
        "SELECT a.id, a.collection, a.question, a.answer, a.citations, f.reason, f.correction, f.created_at, f.id "
        f"FROM feedback f JOIN answers a ON a.id = f.answer_id{where} AND f.rating = 'down' "
        f"ORDER BY f.created_at DESC LIMIT {int(limit)}"
    )
    keys = ("answer_id", "collection", "question", "answer", "citations", "reason", "correction", "at", "feedback_id")
    out = [dict(zip(keys, row, strict=True)) for row in store.sql.query(sql, params)]
    for item in out:
        item["citations"] = json.loads(item["citations"])
    return out


def build_report(store: SupportStore, embedder: Any, collection: str | None, since: float | None = None,
                 until: float | None = None) -> dict[str, Any]:  # fmt: skip
    """The whole report for ``[since, until)`` (default: the last 30 days)."""
    until = until or time.time()
    since = since if since is not None else until - 30 * DAY_S
    if since >= until:  # until is the day after the last
        raise InvalidRequestError(
            f"no days from {_day(since)} up to {_day(until)} (--until is the day after the last) - "
            "give a --since before --until (and before today without --until)"
        )
    days = daily(store, collection, since, until)
    total = sum(d["answers"] for d in days)

    def overall(rate: str) -> float | None:
        return round(sum(d[rate] * d["answers"] for d in days) / total, 4) if total else None

    return {
        "collection": collection, "since": _day(since), "until": _day(until),
        "last_day": _day(until - 1e-3), "answers": total,  # until is the day after the last, or now
        "resolution_rate": overall("resolution_rate"), "abstention_rate": overall("abstention_rate"),
        "cache_hit_rate": overall("cache_hit_rate"), "days": days,
        "unanswered": unanswered(store, embedder, collection, since, until),
        "voted_down": voted_down(store, collection, since, until),
    }  # fmt: skip


def plot_report(report: dict[str, Any], out_dir: Any) -> list[Any]:
    """The report's per-day rates and latency as two PNG charts in ``out_dir``."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    days = [d["day"] for d in report["days"]]
    charts = (
        ("report-rates.png", "share of answers", [("resolution_rate", "resolved"), ("abstention_rate", "abstained"),
                                                  ("cache_hit_rate", "cache hits")]),
        ("report-latency.png", "ms", [("p50_ms", "p50"), ("p95_ms", "p95")]),
    )  # fmt: skip
    written = []
    for name, unit, series in charts:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        for key, label in series:
            ax.plot(days, [d[key] for d in report["days"]], marker="o", label=label)
        ax.set_ylabel(unit)
        ax.set_title(f"{report['collection'] or 'all collections'}, {report['since']} to {report['until']}")
        ax.legend()
        ax.tick_params(axis="x", labelrotation=45)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)
    return written

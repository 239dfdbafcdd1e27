"""`rag eval index`: the index types on synthetic vectors at scale: memory per vector,
recall@10 against exact search, single-query latency, build time.

The vectors are a mixture of Gaussian clusters on the unit sphere (like sentence embeddings:
topics, not uniform noise), 384-d by default. Queries come from the same mixture, not from
the indexed set. Exact top-10 (flat inner product) is the reference.

The compressed types (IVF-PQ, SQ8) are searched as the service searches them: their
candidates are re-scored exactly from float32 vectors in a SQLite ``chunks`` table on disk
(``rag.store.rerank_exact``), so ``recall@10`` is the service's and ``recall@10_approx`` the
compressed codes' alone; ``bytes_per_vector`` is the FAISS index, the part held in memory.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .stats import latency_summary


def synthetic(n: int, dimension: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dimension)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    out = np.empty((n, dimension), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        noise = rng.standard_normal((stop - start, dimension)).astype(np.float32) * 0.06
        out[start:stop] = centers[rng.integers(0, clusters, stop - start)] + noise
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def bench_index_types(
    n: int,
    types: list[str],
    dimension: int = 384,
    queries: int = 200,
    k: int = 10,
    clusters: int | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    import faiss

    from rag.store import COMPRESSED_TYPES, REFINE, fetch_vectors, new_faiss_index, rerank_exact

    # One topic per 500 vectors, at most 2,000 (1M: 2,000 topics of ~500).
    base = synthetic(n, dimension, clusters or max(10, min(2000, n // 500)), seed=0)
    rng = np.random.default_rng(1)  # queries: near indexed points, never indexed themselves
    query = base[rng.integers(0, n, queries)] + rng.standard_normal((queries, dimension)).astype(np.float32) * 0.05
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    exact = faiss.IndexFlatIP(dimension)
    exact.add(base)
    _, truth = exact.search(query, k)
    del exact
    ids = np.arange(n, dtype=np.int64)
    results: dict[str, Any] = {"n": n, "dimension": dimension, "queries": queries, "k": k, "types": {}}
    store = tempfile.TemporaryDirectory(prefix="rag-eval-index-")
    db = _vector_store(Path(store.name), base) if COMPRESSED_TYPES & set(types) else None
    pool = max(4 * k, 40)  # what CollectionIndex asks the dense side for
    for index_type in tqdm(types, desc="index types", disable=None if progress is None else not progress):
        refined = index_type in COMPRESSED_TYPES
        started = time.perf_counter()
        index = new_faiss_index(index_type, dimension, base)
        index.add_with_ids(base, ids)
        build_s = time.perf_counter() - started
        size = len(faiss.serialize_index(index))
        latencies, found, approx = [], [], []
        for q in query:
            t = time.perf_counter()
            _, got = index.search(q.reshape(1, -1), REFINE * pool if refined else k)
            if db is not None and refined:
                approx.append(got[0][:k])
                got = [rerank_exact(got[0], q, lambda wanted: fetch_vectors(db, wanted, dimension), k)]
            latencies.append((time.perf_counter() - t) * 1000)
            found.append(got[0])
        recall = _recall(found, truth, k)
        results["types"][index_type] = {
            "bytes_per_vector": round(size / n, 1),
            f"recall@{k}": round(recall, 4),
            f"recall@{k}_approx": round(_recall(approx, truth, k), 4) if approx else round(recall, 4),
            "reranked_from_disk": refined,
            **latency_summary(latencies, (50, 95), digits=3),
            "build_s": round(build_s, 1),
        }
        del index
    if db is not None:
        db.close()
    store.cleanup()
    return results


def _recall(found: list[Any], truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(map(int, g)) & set(map(int, t))) / k for g, t in zip(found, truth, strict=True)]))


def _vector_store(folder: Path, base: np.ndarray) -> sqlite3.Connection:
    """The vectors as a collection's chunks table keeps them (one float32 blob a row)."""
    db = sqlite3.connect(folder / "chunks.sqlite", check_same_thread=False)
    db.execute("CREATE TABLE chunks (id INTEGER PRIMARY KEY, vector BLOB)")
    for start in range(0, len(base), 50_000):
        rows = base[start : start + 50_000]
        db.executemany("INSERT INTO chunks VALUES (?, ?)", ((start + i, v.tobytes()) for i, v in enumerate(rows)))
    db.commit()
    return db

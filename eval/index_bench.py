"""`rag eval index`: the index types on synthetic vectors at scale: memory per vector,
recall@10 against exact search, single-query latency, build time.

The vectors are a mixture of Gaussian clusters on the unit sphere (like sentence embeddings:
topics, not uniform noise), 384-d by default. Queries come from the same mixture, not from
the indexed set. Exact top-10 (flat inner product) is the reference.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
from tqdm import tqdm


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
    clusters: int = 2000,
    progress: bool | None = None,
) -> dict[str, Any]:
    import faiss

    from rag.index import new_faiss_index

    base = synthetic(n, dimension, clusters, seed=0)
    rng = np.random.default_rng(1)  # queries: near indexed points, never indexed themselves
    query = base[rng.integers(0, n, queries)] + rng.standard_normal((queries, dimension)).astype(np.float32) * 0.05
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    exact = faiss.IndexFlatIP(dimension)
    exact.add(base)
    _, truth = exact.search(query, k)
    del exact
    ids = np.arange(n, dtype=np.int64)
    results: dict[str, Any] = {"n": n, "dimension": dimension, "queries": queries, "k": k, "types": {}}
    for index_type in tqdm(types, desc="index types", disable=None if progress is None else not progress):
        started = time.perf_counter()
        index = new_faiss_index(index_type, dimension, base)
        index.add_with_ids(base, ids)
        build_s = time.perf_counter() - started
        size = len(faiss.serialize_index(index))
        latencies, found = [], []
        for q in query:
            t = time.perf_counter()
            _, got = index.search(q.reshape(1, -1), k)
            latencies.append((time.perf_counter() - t) * 1000)
            found.append(got[0])
        recall = float(np.mean([len(set(g) & set(t)) / k for g, t in zip(found, truth, strict=True)]))
        results["types"][index_type] = {
            "bytes_per_vector": round(size / n, 1),
            f"recall@{k}": round(recall, 4),
            "p50_ms": round(statistics.median(latencies), 3),
            "p95_ms": round(float(np.percentile(latencies, 95)), 3),
            "build_s": round(build_s, 1),
        }
        del index
    return results

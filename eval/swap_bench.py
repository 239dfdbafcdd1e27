"""`rag bench swap`: what a live index swap costs a serving process: its memory while the old
and the new version are both held, how long from publish to serving the new one, and whether
any search failed meanwhile.

A collection of ``n`` synthetic chunks (:func:`eval.index_bench.synthetic` vectors, one
short text each) is written by a separate process, as an ingest run on another host would
write a shared folder. This process loads it through :class:`rag.retrieval.Retrieval` (the
query path's own loader and version watcher), searches it from a thread without pause,
and samples its resident memory (``/proc/self/statm``) every few milliseconds while a second
writer process publishes the next version (the same chunks and 1% more).

``index_mb`` is what loading and searching one version added to the process;
``peak_mb`` the most the process held above its start while both were loaded; the ratio of
the two is the figure to keep under 2 (no third copy, no load buffer on top). ``after_mb``
is after the old version was freed.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from .index_bench import synthetic

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * _PAGE / 2**20


def write_version(collections_dir: Path, name: str, model: str, dimension: int, n: int, index_type: str) -> None:
    """Publish a version of ``n`` synthetic chunks (the first call) or the live one and 1% more
    (each later call), through the writer every ingest run uses."""
    from rag.store import NewVersion, new_faiss_index

    with NewVersion(collections_dir, name, model=model, dimension=dimension) as version:
        start = int(version.meta["next_id"])
        count = n if start == 1 else max(1, n // 100)
        vectors = synthetic(count, dimension, clusters=max(10, min(2000, count // 500)), seed=start)
        ids = np.arange(start, start + count, dtype=np.int64)
        version.db.executemany(
            "INSERT INTO chunks (id, file, source, document_id, title, position, text, vector) "
            "VALUES (?, 'synthetic.txt', 'synthetic.txt', ?, ?, 0, ?, ?)",
            (
                (int(i), f"doc-{i}", f"Topic {i // 50}", f"Synthetic chunk {i}.", v.tobytes())
                for i, v in zip(ids, vectors, strict=True)
            ),
        )
        if start == 1:
            version.index = new_faiss_index(index_type, dimension, vectors)
        version.index.add_with_ids(vectors, ids)
        version.publish(
            {
                **version.meta,
                "embedding_model": model,
                "dimension": dimension,
                "next_id": start + count,
                "index_type": index_type,
                "chunks": int(version.index.ntotal),
                "fingerprint": uuid.uuid4().hex[:16],
                "created_at": time.time(),
            }
        )


def _in_child(*args: Any) -> Any:
    child = multiprocessing.get_context("spawn").Process(target=write_version, args=args)
    child.start()
    return child


def run_swap_bench(settings: Any, n: int, index_type: str) -> dict[str, Any]:
    from rag.embedder import SentenceTransformerEmbedder
    from rag.retrieval import Retrieval
    from rag.store import collection_dir, current_version_dir

    embedder = SentenceTransformerEmbedder.from_settings(settings)  # its name and size; no model loaded
    scratch = tempfile.TemporaryDirectory(prefix="rag-bench-swap-")
    local = settings.model_copy(update={"data_dir": Path(scratch.name)})
    args = (local.collections_dir, "bench", embedder.name, embedder.dimension, n, index_type)
    writer = _in_child(*args)
    writer.join()
    if writer.exitcode:
        raise RuntimeError(f"the writer process failed (exit {writer.exitcode})")
    queries = synthetic(64, embedder.dimension, clusters=8, seed=99)
    retrieval = Retrieval(local, embedder)
    start_mb = rss_mb()
    first = retrieval.get_index("bench")
    for q in queries:
        first.search(q, 10, mode="dense")
    index_mb = rss_mb() - start_mb
    del first
    stop = threading.Event()
    samples: list[float] = []
    outcome = {"searches": 0, "failed": 0}

    cdir = collection_dir(local.collections_dir, "bench")
    serving_dir = current_version_dir(cdir)
    published: list[float] = []

    def sample() -> None:
        while not stop.is_set():
            samples.append(rss_mb())
            if not published and current_version_dir(cdir) != serving_dir:
                published.append(time.monotonic())  # CURRENT switched: the new version is published
            time.sleep(0.002)

    def search() -> None:
        while not stop.is_set():
            try:
                retrieval.get_index("bench").search(queries[outcome["searches"] % len(queries)], 10, mode="dense")
            except Exception:
                outcome["failed"] += 1
            outcome["searches"] += 1

    threads = [threading.Thread(target=sample, daemon=True), threading.Thread(target=search, daemon=True)]
    for thread in threads:
        thread.start()
    try:
        old_version = retrieval.get_index("bench").version
        writer = _in_child(*args)
        writer.join()
        deadline = time.monotonic() + 30
        while retrieval.get_index("bench").version == old_version:
            if time.monotonic() > deadline:
                raise RuntimeError("the new version was not served within 30 s of its publish")
            time.sleep(0.002)
        swap_s = time.monotonic() - (published[0] if published else deadline - 30)
        time.sleep(1.0)  # the searches that held the old version end; it is freed
    finally:
        stop.set()  # a failure above must not leave the sampler and the searcher running
        for thread in threads:
            thread.join()
    after_mb = rss_mb() - start_mb
    retrieval.close_indexes()
    scratch.cleanup()
    peak_mb = max(samples) - start_mb
    return {
        "n": n,
        "index_type": index_type,
        "index_mb": round(index_mb, 1),
        "peak_mb": round(peak_mb, 1),
        "peak_over_index": round(peak_mb / index_mb, 2) if index_mb > 0 else None,
        "after_mb": round(after_mb, 1),
        "publish_to_serving_s": round(swap_s, 3),
        "searches_during": outcome["searches"],
        "failed": outcome["failed"],
    }

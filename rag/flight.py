"""Single flight: concurrent identical misses make one generation.

In one process the first asker generates and the others await its future. With a cache
that several hosts share (Redis), the first asker on any host also takes a claim on the
question in the cache's store; an asker on another host that finds the claim taken polls
the exact cache until the answer is there (a hit, as if it had come a moment later), or
until the claim is gone without one (the other host failed, or its answer is not one to
cache, such as "I don't know"), and then answers it itself. A streamed question shares the
same way, with streamed and plain ones alike (a follower gets the answer whole, as a hit). :class:`rag.pipeline.Pipeline` is one (the generation
stage it builds on is :class:`rag.generation.Generating`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import aclosing, asynccontextmanager, contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

from cache import normalize_question

from .cache_policy import still_valid
from .generation import Generating
from .wire import Answer, CacheStatus

if TYPE_CHECKING:
    from cache import SemanticCache

    from .pipeline import Prepared

POLL_S = 0.05
CLAIM_TTL_S = 6.0  # renewed every third of it while the host generates; a dead host's lapses
MAX_WAIT_S = 120.0  # past this, a waiting host answers the question itself


def _key(prep: Prepared) -> str:
    return f"{prep.scope}\0{normalize_question(prep.question)}"


class SingleFlight(Generating):
    _inflight: dict[str, asyncio.Future[Answer]]

    async def _follow(self, prep: Prepared) -> Answer | None:
        """The answer of whoever generates this question now, as this caller's own; None when
        no one does (a leader whose client went away hands over to one of its followers: the
        others follow that one), and this caller leads."""
        while (leader := self._inflight.get(_key(prep))) is not None:
            try:
                shared = await asyncio.shield(leader)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not leader.cancelled() or (task is not None and task.cancelling()):
                    raise
                continue
            break
        else:
            return None
        prep.timings["total"] = (time.perf_counter() - prep.started) * 1000
        if prep.streamed:  # the whole answer is its first token
            prep.timings.setdefault("first_token", prep.timings["total"])
        joined = replace(  # an answer of its own: feedback on it is this caller's
            shared, cache=CacheStatus(True, "exact", 1.0), timings_ms=dict(prep.timings), usage={},
            answer_id=uuid.uuid4().hex,
        )  # fmt: skip
        self._notify(joined, True)
        return joined

    async def stream(self, prep: Prepared) -> AsyncGenerator[str | Answer, None]:
        """:meth:`Generating.stream`, sharing a generation with identical questions in flight
        in this process, streamed or not: a follower gets the leader's answer whole, as a hit."""
        if prep.result is not None or not prep.cacheable:  # answered already (a hit, small talk); a follow-up
            async with aclosing(super().stream(prep)) as items:  # closed at once when the client goes
                async for item in items:
                    yield item
            return
        prep.streamed = True
        joined = await self._follow(prep)
        if joined is not None:
            yield joined.answer
            yield joined
            return
        with self._leading(_key(prep)) as future:
            async with self._host_claim(prep) as other:
                if other is not None:  # another host answered it meanwhile: whole, as a hit
                    future.set_result(other)
                    yield other.answer
                    yield other
                    return
                async with aclosing(super().stream(prep)) as items:
                    async for item in items:
                        if isinstance(item, Answer):
                            future.set_result(item)
                        yield item

    async def _answer_once(self, prep: Prepared) -> Answer:
        joined = await self._follow(prep)
        if joined is not None:
            return joined
        with self._leading(_key(prep)) as future:
            answer = await self._across_hosts(prep)
            future.set_result(answer)
            return answer

    @contextmanager
    def _leading(self, key: str) -> Iterator[asyncio.Future[Answer]]:
        """This caller generates for ``key``: the future its followers await, for the leader to
        set. Cancelled when the leader's client goes away (or it ends without an answer): the
        followers then answer themselves; failed with the leader's error."""
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            yield future
        except (asyncio.CancelledError, GeneratorExit):
            future.cancel()
            raise
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
                future.exception()  # waiters re-raise it; nobody waiting is fine too
            raise
        finally:
            future.cancel()  # no answer came (a no-op once it has one)
            if self._inflight.get(key) is future:
                del self._inflight[key]

    async def _across_hosts(self, prep: Prepared) -> Answer:
        """Generate, unless another host sharing the cache is generating the same answer."""
        async with self._host_claim(prep) as other:
            return other if other is not None else await self._generate_prepared(prep)

    @asynccontextmanager
    async def _host_claim(self, prep: Prepared) -> AsyncIterator[Answer | None]:
        """This question claimed for this host among the hosts sharing the cache, kept while
        the body generates (None); or, where another host had it, that host's answer once it
        is cached. Without a shared cache: None, at once."""
        cache = self.cache
        if cache is None or not cache.shared:
            yield None
            return
        deadline = time.monotonic() + MAX_WAIT_S
        while not await self.in_store(cache.claim, prep.scope, prep.question, CLAIM_TTL_S):
            answer = await self._await_other_host(prep, cache)
            if answer is not None:
                yield answer
                return
            if time.monotonic() >= deadline:  # the other host holds it this long: answer it here, unclaimed
                yield None
                return
        renewing = asyncio.create_task(self._keep_claim(prep, cache))
        try:
            yield None
        finally:
            renewing.cancel()
            await self.in_store(cache.release, prep.scope, prep.question)

    async def _keep_claim(self, prep: Prepared, cache: SemanticCache) -> None:
        while True:
            await asyncio.sleep(CLAIM_TTL_S / 3)
            await self.in_store(cache.renew, prep.scope, prep.question)

    async def _await_other_host(self, prep: Prepared, cache: SemanticCache) -> Answer | None:
        """The other host's answer once it is cached; None once its claim is gone without one."""
        assert prep.index is not None
        valid = still_valid(prep.index)
        deadline = time.monotonic() + MAX_WAIT_S
        while time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
            hit = await self.in_store(cache.get_exact, prep.scope, prep.question, valid)
            if hit is not None:
                return self._cached(prep, hit.payload, CacheStatus(True, "exact", 1.0))
            if not await self.in_store(cache.claimed, prep.scope, prep.question):
                return None
        return None

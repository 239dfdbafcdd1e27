"""Putting back what the response cache's store lost.

Curated answers and the blocks a thumbs-down made live in the cache's store (Redis for every
replica, or this host's diskcache), and both are kept elsewhere too: curated answers' records
and a copy of each block in the support store (SQLite or PostgreSQL). A store that loses its
state (a Redis restarted without persistence, or flushed; a cache file set aside as corrupt)
gets a new identity (:meth:`cache.SemanticCache.identity`). Each replica looks every few
seconds, and when the identity is not the one it saw, puts both back: a voted-down answer is
never served again for want of its block. Cache work asked for while the store was away (a
thumbs-down's eviction, a curated answer pinned, edited or removed) waits in the support store
(``pending_cache_work``) and is done at the first look that finds it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from cache.stores import StoreUnavailable
from rag.pipeline import Pipeline, scope_today

from .curation import CuratedStore, sync_curated
from .feedback import evict_answer
from .support_store import SupportStore

log = logging.getLogger("rag.serving")


async def restore(pipe: Pipeline, support: SupportStore, curated: CuratedStore) -> tuple[int, int]:
    """Put the kept blocks and the curated answers back where they are missing: (blocks,
    curated answers) put back."""
    cache = pipe.cache
    assert cache is not None
    kept = await asyncio.to_thread(support.blocks)
    blocks = await asyncio.to_thread(lambda: sum(cache.blocks.restore(skey, block) for skey, block in kept))
    return blocks, await sync_curated(pipe, curated)


async def catch_up(pipe: Pipeline, support: SupportStore, curated: CuratedStore) -> int:
    """The cache work that waited for the store (kept in the support store): a thumbs-down's
    eviction (:mod:`serving.feedback`), a curated answer's change (:mod:`serving.curation`).
    How many were done; raises StoreUnavailable while the store is still away."""
    done = 0
    for key in await asyncio.to_thread(support.deferred):
        try:
            await _do(pipe, support, curated, key)
        except StoreUnavailable:
            raise  # still away: this one and the rest at the next look
        except Exception:  # it will never work (its collection went): logged, and not tried again
            log.exception("response cache: the waiting change %s cannot be made; dropped", key)
        await asyncio.to_thread(support.done, key)
        done += 1
    return done


async def _do(pipe: Pipeline, support: SupportStore, curated: CuratedStore, key: str) -> None:
    kind, _, what = key.partition(":")
    if kind == "evict" and (record := await asyncio.to_thread(support.answer, what)) is not None:
        await evict_answer(pipe, support, curated, record)
    elif kind == "sync":
        await sync_curated(pipe, curated, what)
    elif kind == "drop":
        collection, question, curated_id = json.loads(what)
        await pipe.uncurate(collection, question, curated_id)


def carry_blocks_over(pipe: Pipeline, support: SupportStore) -> int:
    """Blocks an earlier release made in its own scope (its number in it, up to 0.2.0), moved
    to the scope this release's answers are checked against: a rejected answer stays out of
    the cache after an upgrade. Idempotent (an interrupted move is finished at the next start).
    How many moved."""
    cache = pipe.cache
    assert cache is not None
    moves = {
        cache.blocks_key(scope): cache.blocks_key(scope_today(scope))
        for scope in support.voted_down_scopes()
        if scope_today(scope) != scope
    }
    moved = 0
    for skey, block in cache.blocks.each() if moves else []:
        if skey in moves:
            cache.blocks.lift(block["id"])
            cache.blocks.restore(moves[skey], block)
            moved += 1
    for skey, block in support.blocks() if moves else []:
        if skey in moves:
            support.rekey_block(block["id"], moves[skey])
    return moved


async def _look(pipe: Pipeline, support: SupportStore, curated: CuratedStore, seen: str | None) -> str | None:
    """One look: the identity, and what follows from it; the deferred evictions. Returns the
    identity seen."""
    assert pipe.cache is not None
    identity = await asyncio.to_thread(pipe.cache.identity)
    if seen is None:  # blocks made before copies were kept: copied now; an earlier release's moved
        for skey, block in await asyncio.to_thread(pipe.cache.blocks.each):
            await asyncio.to_thread(support.keep_block, skey, block)
        if moved := await asyncio.to_thread(carry_blocks_over, pipe, support):
            log.info("response cache: %d blocks an earlier release made now apply to this release's answers", moved)
    if identity != seen:
        blocks, answers = await restore(pipe, support, curated)
        if seen is not None or blocks:
            log.warning(
                "the response cache's store lost its state: %d blocks and %d curated answers put back", blocks, answers
            )
    if done := await catch_up(pipe, support, curated):
        log.info("%d cache changes made now that the cache's store is back", done)
    return identity


async def watch(
    pipe: Pipeline, support: SupportStore, curated: CuratedStore, stop: asyncio.Event, every_s: float = 5.0
) -> None:
    """Every ``every_s`` until ``stop``: whether the store lost its state since the last look;
    if so, restore. The first look (at start-up) restores too: the store may have lost it while
    this replica was down. A look in progress ends before ``stop`` does (its worker threads use
    the stores the shutdown closes next)."""
    seen: str | None = None
    while pipe.cache is not None and not stop.is_set():
        try:
            seen = await _look(pipe, support, curated, seen)
        except StoreUnavailable:
            pass  # away: the next look
        except Exception:
            log.exception("response cache: putting back blocks and curated answers failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)

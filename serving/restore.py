"""Putting back what the response cache's store lost.

Curated answers and the blocks a thumbs-down made live in the cache's store (Redis for every
replica, or this host's diskcache), and both are kept elsewhere too: curated answers' records
and a copy of each block in the support store (SQLite or PostgreSQL). A store that loses its
state (a Redis restarted without persistence, or flushed; a cache file set aside as corrupt)
gets a new identity (:meth:`cache.SemanticCache.identity`). Each replica looks every few
seconds, and when the identity is not the one it saw, puts both back: a voted-down answer is
never served again for want of its block.
"""

from __future__ import annotations

import asyncio
import logging

from cache.stores import StoreUnavailable
from rag.pipeline import Pipeline

from .curation import CuratedStore, sync_curated
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


async def watch(pipe: Pipeline, support: SupportStore, curated: CuratedStore, every_s: float = 5.0) -> None:
    """Every ``every_s``: whether the store lost its state since the last look; if so, restore.
    The first look (at start-up) restores too: the store may have lost it while this replica
    was down."""
    seen: str | None = None
    while True:
        try:
            identity = await asyncio.to_thread(pipe.cache.identity) if pipe.cache is not None else None
            if identity is not None and identity != seen:
                blocks, answers = await restore(pipe, support, curated)
                if seen is not None or blocks:
                    log.warning(
                        "the response cache's store lost its state: %d blocks and %d curated answers put back",
                        blocks, answers,
                    )  # fmt: skip
                seen = identity
        except StoreUnavailable:
            pass  # away: the next look
        except Exception:
            log.exception("response cache: putting back blocks and curated answers failed")
        await asyncio.sleep(every_s)

"""Answers people rejected: what a thumbs-down keeps out of the cache.

A block is one rejected answer in one scope (every release's: the cache keys its entries by
its code's release too, its blocks not): the question it was given to (its vector), the
answer's text and its ``group`` (the chunks it cites). An answer matches a block when it is
the same answer from the same chunks, either word for word or to a question in the rejected
one's neighbourhood (cosine at or above ``near``, the lowest similarity a hit is ever served
at). A matching answer is never admitted, and a matching entry is never served.

Chunk ids never repeat within a collection's lineage, so once the cited documents change,
the answer's group changes and the block no longer matches: the next answer is new evidence.
An admin lifts a block by its id (:meth:`Blocks.lift`). A copy of each is kept in the support
store, to put back into a store that lost them (:meth:`Blocks.restore`).

Blocks live in the store's counters (diskcache, or Redis for every replica at once), one list
per scope, read on each admission and hit: a few hundred bytes a block. Adding and lifting
are atomic read-modify-writes (``Counters.update``), so replicas blocking in one scope at
the same moment lose nothing.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from .stores import Counters


class Blocks:
    def __init__(self, counters: Counters, near: float) -> None:
        self.counters = counters
        self.near = near

    @staticmethod
    def _key(skey: str) -> str:
        return f"blocks:{skey}"

    def add(self, skey: str, question: str, vector: np.ndarray, answer: str, group: str, tag: str | None) -> str:
        """Block this answer here; a block it already falls under is reused (the same
        answer voted down again adds nothing)."""
        known = self.matching(skey, vector, answer, group)
        if known is not None:
            return str(known["id"])
        block = {
            "id": uuid.uuid4().hex[:16],
            "question": question,
            "vector": base64.b64encode(np.asarray(vector, dtype=np.float32).tobytes()).decode(),
            "answer": answer,
            "group": group,
            "tag": tag,
            "created_at": time.time(),
        }
        self.counters.set(f"block:{block['id']}", skey)
        self.counters.update(self._key(skey), lambda blocks: [*blocks, block], [])  # replicas add at once
        return str(block["id"])

    def of(self, skey: str) -> list[dict[str, Any]]:
        return list(self.counters.get(self._key(skey), []))

    def matching(self, skey: str, vector: np.ndarray, answer: str, group: str) -> dict[str, Any] | None:
        """The block this answer (to a question with ``vector``) falls under, or None."""
        return self.matcher(skey)(vector, answer, group)

    def matcher(self, skey: str) -> Callable[[np.ndarray, str, str], dict[str, Any] | None]:
        """:meth:`matching` for many answers against one read of the scope's blocks."""
        blocks = [(b, np.frombuffer(base64.b64decode(b["vector"]), dtype=np.float32)) for b in self.of(skey)]

        def match(vector: np.ndarray, answer: str, group: str) -> dict[str, Any] | None:
            for block, stored in blocks:
                if block["group"] == group and (
                    block["answer"] == answer
                    or float(stored @ np.asarray(vector, dtype=np.float32).reshape(-1)) >= self.near
                ):
                    return block
            return None

        return match

    def each(self) -> list[tuple[str, dict[str, Any]]]:
        """Every block, with its scope key (and its vector)."""
        out = []
        for key in list(self.counters.iterkeys()):
            if str(key).startswith("blocks:"):
                out += [(str(key).removeprefix("blocks:"), b) for b in self.counters.get(key, [])]
        return out

    def all(self, tag: str | None = None) -> list[dict[str, Any]]:
        """Every block (of collection ``tag``), newest first, without vectors."""
        out = [{k: v for k, v in b.items() if k != "vector"} for _, b in self.each()]
        return sorted((b for b in out if tag is None or b["tag"] == tag), key=lambda b: -b["created_at"])

    def find(self, block_id: str) -> tuple[str, dict[str, Any]] | None:
        """(its scope key, the block), or None."""
        skey = self.counters.get(f"block:{block_id}")
        found = [b for b in self.of(skey) if b["id"] == block_id] if skey is not None else []
        return (str(skey), found[0]) if found else None

    def restore(self, skey: str, block: dict[str, Any]) -> bool:
        """Put back a block the store lost (a Redis restarted without persistence); False if
        it is there."""
        added = False

        def put_back(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
            nonlocal added
            added = all(b["id"] != block["id"] for b in blocks)
            return [*blocks, block] if added else blocks

        self.counters.update(self._key(skey), put_back, [])
        self.counters.set(f"block:{block['id']}", skey)
        return added

    def lift(self, block_id: str) -> bool:
        """An admin approved the answer: the block goes (the next answer may be cached)."""
        skey = self.counters.get(f"block:{block_id}")
        if skey is None:
            return False
        self.counters.update(self._key(skey), lambda blocks: [b for b in blocks if b["id"] != block_id], [])
        self.counters.delete(f"block:{block_id}")
        return True

"""What a fleet's prefix caches would hit on the same traffic, for replica counts this
machine cannot run: vLLM's automatic prefix caching replayed block by block.

vLLM caches a prompt's KV in blocks of ``block_size`` tokens, each named by a hash chained
over every token before it, and a request reuses the longest run of leading blocks its
replica still holds (only full blocks; the last prompt token is always computed). Each
replica here is an LRU set of block hashes of ``capacity_blocks`` (None: unbounded), fed
the real tokenizer's tokens of the real prompts, routed by the service's own
:class:`rag.generators.replicas.ReplicaPool` (no load: a simulation has no requests in
flight, so prefix routing never spills). ``rag bench routing`` checks it against the hit
rate vLLM itself reports on two replicas.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class _BlockCache:
    def __init__(self, capacity_blocks: int | None) -> None:
        self.capacity = capacity_blocks
        self.blocks: OrderedDict[bytes, None] = OrderedDict()

    def serve(self, hashes: list[bytes]) -> int:
        """Blocks of this prompt found (the leading run), then all of them cached."""
        found = 0
        for h in hashes:
            if h not in self.blocks:
                break
            found += 1
        for h in hashes:
            self.blocks[h] = None
            self.blocks.move_to_end(h)
        while self.capacity is not None and len(self.blocks) > self.capacity:
            self.blocks.popitem(last=False)
        return found


def block_hashes(tokens: Sequence[int], block_size: int) -> list[bytes]:
    """The chained hashes of the prompt's full blocks, leaving its last token to compute."""
    hashes: list[bytes] = []
    parent = b""
    usable = max(0, len(tokens) - 1)
    for start in range(0, usable - block_size + 1, block_size):
        block = ",".join(map(str, tokens[start : start + block_size])).encode()
        parent = hashlib.blake2b(parent + block, digest_size=16).digest()
        hashes.append(parent)
    return hashes


def simulate(
    prompts: list[list[int]],
    keys: list[str | None],
    replicas: int,
    routing: str,
    block_size: int,
    capacity_blocks: int | None = None,
) -> float:
    """The share of prompt tokens served from the prefix cache."""
    from rag.generators.replicas import ReplicaPool

    pool = ReplicaPool([f"r{n}" for n in range(replicas)], routing=routing)  # type: ignore[arg-type]
    caches = {r.url: _BlockCache(capacity_blocks) for r in pool.replicas}
    total = cached = 0
    for tokens, key in zip(prompts, keys, strict=True):
        replica = pool.pick(key=key)
        cached += caches[replica.url].serve(block_hashes(tokens, block_size)) * block_size
        total += len(tokens)
    return cached / total if total else 0.0


def tokenize(model_dir: Path, texts: list[str]) -> list[list[int]]:
    """The served model's own tokens (its tokenizer.json), with its BOS as vLLM adds it."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    return [encoding.ids for encoding in tokenizer.encode_batch(texts)]


def fleet_table(
    prompts: list[list[int]],
    keys: list[str | None],
    replica_counts: Sequence[int] = (1, 2, 4, 8),
    block_size: int = 16,
    capacity_blocks: int | None = None,
) -> list[dict[str, Any]]:
    """Hit rate of round robin and prefix routing at each fleet size."""
    return [
        {
            "replicas": n,
            "block_size": block_size,
            **{
                f"{routing}_hit_rate": round(simulate(prompts, keys, n, routing, block_size, capacity_blocks), 4)
                for routing in ("round_robin", "prefix")
            },
        }
        for n in replica_counts
    ]

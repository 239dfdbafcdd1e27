"""Routing across vLLM replicas, and failover: failed replicas sit out with exponential
backoff and come back through a single probe request (half-open).

vLLM's automatic prefix caching reuses a prompt's KV blocks only on the replica that
computed them, so where a request goes decides whether its prefill is paid again. Under the
``prefix`` policy a request's ``prefix_key`` (the passage its context begins with) picks the
replica by rendezvous hashing, a consistent hash: every key has a fixed order of preference
over the replicas, a replica that fails or leaves moves only its own keys (to their next
choice), and a new one takes about 1/n of them. Affinity is bounded by load, as in
consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2018): a replica
is busy when it holds ``load_factor`` times its fair share of the requests in flight (this
one included). A busy preferred replica shares the key with its second choice, and the less
busy of the two takes the request (the power of two choices), so a hot document set warms
two replicas instead of queueing on one.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from ..errors import BackendUnavailableError

Routing = Literal["least_loaded", "round_robin", "prefix"]


@dataclass
class Replica:
    url: str
    in_flight: int = 0
    failures: int = 0
    down_until: float = 0.0
    probing: bool = False

    @property
    def healthy(self) -> bool:
        return self.failures == 0


def _weight(key: str, url: str) -> int:
    """Rendezvous (highest random weight) score of ``url`` for ``key``."""
    return int.from_bytes(hashlib.blake2b(f"{key}|{url}".encode(), digest_size=8).digest(), "big")


def _ranked(replicas: list[Replica], key: str) -> list[Replica]:
    """``replicas`` in ``key``'s order of preference."""
    return sorted(replicas, key=lambda r: _weight(key, r.url), reverse=True)


class ReplicaPool:
    def __init__(
        self,
        urls: list[str],
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        routing: Routing = "least_loaded",
        load_factor: float = 1.25,
    ) -> None:
        if not urls:
            raise ValueError("at least one vLLM URL is needed")
        self.replicas = [Replica(url.rstrip("/")) for url in urls]
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.routing = routing
        self.load_factor = load_factor
        self._turn = itertools.count()

    def pick(self, exclude: set[str] | frozenset[str] = frozenset(), key: str | None = None) -> Replica:
        """A healthy replica chosen by the routing policy, else one due for a probe."""
        now = time.monotonic()
        candidates = [r for r in self.replicas if r.url not in exclude]
        healthy = [r for r in candidates if r.healthy]
        if healthy:
            return self._route(healthy, key)
        due = [r for r in candidates if not r.probing and r.down_until <= now]
        if due:
            replica = min(due, key=lambda r: r.down_until)
            replica.probing = True  # one request at a time tries a replica that was down
            return replica
        soonest = min((r.down_until for r in self.replicas), default=now) - now
        raise BackendUnavailableError(
            f"all {len(self.replicas)} vLLM replicas are down (next retry in {max(soonest, 0):.1f} s) - "
            "check that `vllm serve` is running at " + ", ".join(r.url for r in self.replicas) + " (RAG_VLLM_URL)",
            retry_after_s=max(1, math.ceil(soonest)),
        )

    def _route(self, healthy: list[Replica], key: str | None) -> Replica:
        if self.routing == "round_robin":
            return healthy[next(self._turn) % len(healthy)]
        least = min(healthy, key=lambda r: r.in_flight)
        if self.routing != "prefix" or key is None:
            return least
        first, *rest = _ranked(healthy, key)
        fair = (sum(r.in_flight for r in healthy) + 1) / len(healthy)
        if rest and first.in_flight + 1 > math.ceil(self.load_factor * fair):
            return min((first, rest[0]), key=lambda r: r.in_flight)
        return first

    def preference(self, key: str) -> list[str]:
        """The replicas in ``key``'s order of preference (for tests and the docs)."""
        return [r.url for r in _ranked(self.replicas, key)]

    @contextmanager
    def track(self, replica: Replica) -> Iterator[None]:
        replica.in_flight += 1
        try:
            yield
        finally:
            replica.in_flight -= 1

    def mark_ok(self, replica: Replica) -> None:
        replica.failures = 0
        replica.down_until = 0.0
        replica.probing = False

    def mark_failed(self, replica: Replica) -> None:
        replica.failures += 1
        replica.probing = False
        replica.down_until = time.monotonic() + min(self.max_backoff_s, self.backoff_s * 2 ** (replica.failures - 1))

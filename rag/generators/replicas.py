"""Routing across vLLM replicas: least in-flight first, failed replicas sit out with
exponential backoff and come back through a single probe request (half-open)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import BackendUnavailableError


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


class ReplicaPool:
    def __init__(self, urls: list[str], backoff_s: float = 0.5, max_backoff_s: float = 30.0) -> None:
        if not urls:
            raise ValueError("at least one vLLM URL is needed")
        self.replicas = [Replica(url.rstrip("/")) for url in urls]
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s

    def pick(self, exclude: set[str] | frozenset[str] = frozenset()) -> Replica:
        """The healthy replica with the fewest requests in flight, else one due for a probe."""
        now = time.monotonic()
        candidates = [r for r in self.replicas if r.url not in exclude]
        healthy = [r for r in candidates if r.healthy]
        if healthy:
            return min(healthy, key=lambda r: r.in_flight)
        due = [r for r in candidates if not r.probing and r.down_until <= now]
        if due:
            replica = min(due, key=lambda r: r.down_until)
            replica.probing = True  # one request at a time tries a replica that was down
            return replica
        soonest = min((r.down_until for r in self.replicas), default=now) - now
        raise BackendUnavailableError(
            f"all {len(self.replicas)} vLLM replicas are down (next retry in {max(soonest, 0):.1f} s) - "
            "check that `vllm serve` is running at " + ", ".join(r.url for r in self.replicas)
        )

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

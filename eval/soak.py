"""Soak test: drive a running service for minutes with a mixed load and watch it hold up.

    python -m eval.soak --url http://127.0.0.1:8000 --pid PID --minutes 5 --max-requests 50000 [--json] [--out DIR]

A fixed number of concurrent clients (``--concurrency``) send, in the proportions of ``--mix``:

- ``exact``: a question already answered, again (case, spacing and end punctuation varied,
  which the exact cache ignores): an exact cache hit;
- ``semantic``: a rewording of one of the seed questions ("Hi, how long does a refund take,
  please?"): a semantic cache hit;
- ``miss``: a question never asked before (templates over the example help centre's topics
  with fresh numbers, items and countries): retrieval and generation;
- ``bad``: a malformed request (empty question, wrong types, bad JSON, unknown collection,
  ``top_k`` out of range, wrong method, ...), for which the right answer is its 4xx with
  the error body ``{"error": {"message", "type", "param", "code"}}``.

The seed questions are asked once first (kind ``seed``), so there is something to hit.

An error is a 5xx, a transport failure, a timeout, a good request that did not get its 200
answer, or a bad request that did not get its 4xx and error body. The report gives counts
by kind, the cache outcome the server reported for each kind, errors (target 0), p50/p95/p99
latency by kind, throughput and, with ``--pid``, the server's resident memory (VmRSS from
/proc) sampled over the run: growth = (final RSS - RSS after warm-up) / RSS after warm-up,
the warm-up being the first 20% of the run (or ``--warmup-s``); target under 5%.

Bounded in time (``--minutes``) and count (``--max-requests``), and it stops by itself. It
sends traffic to loopback addresses only, unless ``--allow-remote`` is given.
Exit status 1 when there were errors or memory grew by 5% or more.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import random
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from tqdm import tqdm

from .soak_load import DEFAULT_MIX, Call, LoadMix, Outcome, SoakConfig, judge
from .soak_report import format_report, summarize, write_outputs


def read_memory_kib(pid: int) -> tuple[int, int, int] | None:
    """The process's resident memory in KiB from /proc: (VmRSS, RssAnon, RssFile), or None
    if it is gone. RssAnon is heap and the like; RssFile is mapped files (libraries, model
    weights, SQLite pages), which the kernel can drop."""
    fields: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "RssAnon", "RssFile"):
                    fields[name] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    if "VmRSS" not in fields:
        return None
    return fields["VmRSS"], fields.get("RssAnon", 0), fields.get("RssFile", 0)


def read_rss_kib(pid: int) -> int | None:
    """The process's resident set size in KiB (VmRSS), or None if it is gone."""
    memory = read_memory_kib(pid)
    return memory[0] if memory is not None else None


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Soak:
    """One soak run: the load, its outcomes and the memory readings, with one method per job."""

    def __init__(self, config: SoakConfig) -> None:
        self.config = config
        self.seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**31)
        self.load = LoadMix(random.Random(self.seed), config.mix, config.collection)
        self.outcomes: list[Outcome] = []
        self.rss: list[tuple[float, int, int, int]] = []  # (t, VmRSS, RssAnon, RssFile) in KiB
        self.started = time.perf_counter()
        self.deadline = self.started + config.duration_s
        self.issued = 0
        self.errors = 0
        self.server_gone = asyncio.Event()
        self.bar = tqdm(
            total=config.max_requests,
            desc="soak",
            unit="req",
            disable=None if config.progress is None else not config.progress,
        )

    def client(self) -> httpx.AsyncClient:
        config = self.config
        return httpx.AsyncClient(
            base_url=config.url.rstrip("/"),
            timeout=config.timeout_s,
            headers={"Authorization": f"Bearer {config.api_key}"} if config.api_key else {},
            trust_env=False,  # loopback stays loopback: no proxy from the environment
            limits=httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency),
        )

    async def send(self, client: httpx.AsyncClient, call: Call) -> None:
        sent = time.perf_counter()
        status: int | None = None
        cache: str | None = None
        cited = False
        try:
            response = await client.request(call.method, call.path, **call.body)
            status = response.status_code
            error, cache = judge(call, response)
            cited = error is None and call.kind != "bad" and bool(response.json().get("citations"))
        except httpx.TimeoutException:
            error = f"{call.kind}: timeout after {self.config.timeout_s:g} s"
        except httpx.HTTPError as exc:
            error = f"{call.kind}: transport failure: {type(exc).__name__}: {exc}"
        latency = (time.perf_counter() - sent) * 1000
        self.outcomes.append(Outcome(sent - self.started, call.kind, call.label, status, latency, error, cache))
        if cited and call.kind in ("seed", "miss") and call.question is not None:
            self.load.remember(call.question)  # answered with citations: cached, so asking again is an exact hit
        self.errors += error is not None
        self.bar.update(1)
        if self.errors:
            self.bar.set_postfix(errors=self.errors, refresh=False)

    def read_memory(self) -> bool:
        """Record one memory reading; False when the server process is gone."""
        assert self.config.pid is not None
        kib = read_memory_kib(self.config.pid)
        if kib is None:
            return False
        self.rss.append((time.perf_counter() - self.started, *kib))
        return True

    async def sample_memory(self, stop: asyncio.Event) -> None:
        while self.read_memory():
            try:
                await asyncio.wait_for(stop.wait(), self.config.sample_s)
                return
            except TimeoutError:
                pass
        self.server_gone.set()  # the server died: nothing left to soak

    def may_send(self) -> bool:
        return (
            self.issued < self.config.max_requests
            and time.perf_counter() < self.deadline
            and not self.server_gone.is_set()
        )

    async def worker(self, client: httpx.AsyncClient) -> None:
        while self.may_send():
            self.issued += 1
            await self.send(client, self.load.next())

    async def drive(self) -> float:
        """Send the seeds, then the mixed load; returns the run's length in seconds."""
        config = self.config
        stop = asyncio.Event()
        sampler = asyncio.create_task(self.sample_memory(stop)) if config.pid is not None else None
        async with self.client() as client:
            try:
                for call in self.load.seeds():  # one by one: the exact and semantic hits need them cached
                    if not self.may_send():
                        break
                    self.issued += 1
                    await self.send(client, call)
                await asyncio.gather(*(self.worker(client) for _ in range(config.concurrency)))
            finally:
                ended = time.perf_counter()
                stop.set()
                if sampler is not None:
                    await sampler
                if config.pid is not None and not self.server_gone.is_set():
                    self.read_memory()  # the final reading, after the load
                self.bar.close()
        return ended - self.started


async def run_soak(config: SoakConfig) -> dict[str, Any]:
    """Drive the service as configured; returns the report (see ``summarize``)."""
    if not config.allow_remote and not _is_loopback(config.url):
        raise ValueError(f"{config.url} is not a loopback address: pass --allow-remote to soak another host")
    soak = _Soak(config)
    elapsed = await soak.drive()
    report = summarize(config, soak.outcomes, soak.rss, elapsed, soak.seed)
    if soak.server_gone.is_set():
        report["server_exited"] = True
        report["passed"] = False
        report["error_samples"].insert(0, f"the server process {config.pid} exited during the run")
    return report


def wait_ready(url: str, timeout_s: float, pid: int | None = None) -> None:
    """Poll GET /readyz until it answers 200; fail early if the server process ``pid`` is gone."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with httpx.Client(base_url=url.rstrip("/"), timeout=5, trust_env=False) as client:
        while True:
            if pid is not None and read_rss_kib(pid) is None:
                raise RuntimeError(f"the server process {pid} is gone")
            try:
                response = client.get("/readyz")
                if response.status_code == 200:
                    return
                last = f"{response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url}/readyz not ready after {timeout_s:g} s ({last})")
            time.sleep(0.5)


def soak(config: SoakConfig) -> dict[str, Any]:
    return asyncio.run(run_soak(config))


def _parse_mix(text: str) -> dict[str, float]:
    try:
        return {k.strip(): float(v) for k, v in (part.split("=") for part in text.split(",") if part.strip())}
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r}: write the mix like exact=0.35,semantic=0.25,miss=0.25,bad=0.15"
        ) from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="base URL of the running service, e.g. http://127.0.0.1:8000")
    parser.add_argument("--pid", type=int, help="the server's process id, to sample its RSS from /proc")
    parser.add_argument("--minutes", type=float, default=5.0, help="how long to drive it (default 5)")
    parser.add_argument("--max-requests", type=int, default=100_000, help="stop after this many requests")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (default 8)")
    parser.add_argument("--warmup-s", type=float, help="warm-up before the memory baseline (default: 20%% of the run)")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="a request slower than this is an error")
    parser.add_argument("--sample-s", type=float, default=1.0, help="seconds between RSS samples")
    parser.add_argument("--mix", type=_parse_mix, default=DEFAULT_MIX, help="weights, e.g. exact=0.35,semantic=0.25,miss=0.25,bad=0.15")  # fmt: skip
    parser.add_argument("--seed", type=int, help="random seed (default: a new one, printed in the report)")
    parser.add_argument("--collection", help="collection to ask (default: the server's)")
    parser.add_argument("--api-key", help="API key, for a service with keys")
    parser.add_argument("--out", type=Path, help="write soak.json and soak.png here")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--wait-ready", type=float, default=0, metavar="S", help="first wait up to S s for /readyz")
    parser.add_argument("--allow-remote", action="store_true", help="allow a URL that is not a loopback address")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.max_requests < 1 or args.concurrency < 1:
        parser.error("--minutes, --max-requests and --concurrency must be positive")
    config = SoakConfig(
        url=args.url,
        pid=args.pid,
        duration_s=args.minutes * 60,
        max_requests=args.max_requests,
        concurrency=args.concurrency,
        warmup_s=args.warmup_s,
        timeout_s=args.timeout_s,
        sample_s=args.sample_s,
        mix=args.mix,
        seed=args.seed,
        api_key=args.api_key,
        collection=args.collection,
        allow_remote=args.allow_remote,
    )
    if not args.allow_remote and not _is_loopback(args.url):
        parser.error(f"{args.url} is not a loopback address: pass --allow-remote to soak another host")
    try:
        LoadMix(random.Random(0), config.mix, None)  # a bad --mix fails now, not after the wait
    except ValueError as exc:
        parser.error(str(exc))
    if args.wait_ready > 0:
        try:
            wait_ready(args.url, args.wait_ready, args.pid)
        except RuntimeError as exc:
            print(f"soak: {exc}", file=sys.stderr)
            return 2
    try:
        report = soak(config)
    except ValueError as exc:
        parser.error(str(exc))
    if args.out is not None:
        json_path, png_path = write_outputs(report, args.out)
        print(f"wrote {json_path} and {png_path}", file=sys.stderr)
    public = {k: v for k, v in report.items() if k != "_series"}
    print(json.dumps(public, indent=2) if args.json else format_report(public))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

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
import itertools
import json
import random
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from tqdm import tqdm

from .stats import latency_summary

KINDS = ("seed", "exact", "semantic", "miss", "bad")
DEFAULT_MIX = {"exact": 0.35, "semantic": 0.25, "miss": 0.25, "bad": 0.15}
MAX_GROWTH = 0.05
ERROR_KEYS = {"message", "type", "param", "code"}

# Seed questions the example help centre answers, each with rewordings that embed within
# the cache's threshold of it (cosine >= 0.89 with all-MiniLM-L6-v2).
SEEDS: dict[str, list[str]] = {
    "How long do refunds take?": ["How long does a refund take?", "how long do refunds usually take"],
    "How do I reset my password?": ["How can I reset my password?", "I forgot my password, how do I reset it?"],
    "How can I track my parcel?": ["How do I track my parcel?", "Where can I track my parcel?"],
    "What payment methods do you accept?": ["Which payment methods do you accept?", "What payment methods are accepted?"],
    "How do I cancel an order?": ["How can I cancel an order?", "how do i cancel my order"],
    "Do you ship internationally?": ["Do you ship abroad?", "Do you deliver internationally?"],
    "How do gift cards work?": ["How does a gift card work?", "how do your gift cards work"],
    "How do I contact customer support?": ["How can I contact customer support?", "How do I get in touch with customer support?"],
    "What does the warranty cover?": ["What is covered by the warranty?", "what does your warranty cover"],
    "What should I do if my item arrived damaged?": ["What do I do if my item arrived damaged?", "My item arrived damaged, what should I do?"],
}  # fmt: skip
# Politeness around a rewording: new text for the exact cache, the same question for the semantic one.
WRAPPERS = ("{q}", "Hi, {lower_first}", "{bare}, please?", "Hello! {q} Thanks.", "Quick question: {lower}")

ITEMS = ("sofa", "lamp", "mattress", "rug", "kettle", "armchair", "duvet", "bookcase", "mirror", "desk", "wardrobe", "vase")  # fmt: skip
COUNTRIES = ("Norway", "Switzerland", "France", "Germany", "Spain", "Italy", "Ireland", "Poland", "Portugal", "Austria")
METHODS = ("PayPal", "Klarna", "Apple Pay", "Google Pay", "a Visa card", "American Express", "a gift card")
# Every template states a standalone number, which the cache's guards never let two
# different questions share: a new number is a new question.
TEMPLATES = (
    "Can I return a {item} I bought {n} days ago?",
    "How much is delivery of a {item} to {country} for an order of £{n}?",
    "My parcel with the {item} has not arrived after {n} days, what should I do?",
    "Can I pay for an order of £{n} with {method}?",
    "How many Hearth Points do I get for spending £{n} on a {item}?",
    "Can I still cancel order number {n} for a {item}?",
    "Does the warranty cover a {item} that broke after {n} months?",
    "Can I use a gift card worth £{n} to buy a {item}?",
    "Is there a discount on {n} {item}s delivered to {country}?",
)


@dataclass(frozen=True)
class Call:
    """One request to send and what counts as its correct answer."""

    kind: str
    label: str
    method: str
    path: str
    body: dict[str, Any] = field(default_factory=dict)  # httpx keyword arguments: json, content, headers
    expect: int = 200
    question: str | None = None


@dataclass
class Outcome:
    t: float  # seconds since the start of the run, when the request was sent
    kind: str
    label: str
    status: int | None
    latency_ms: float
    error: str | None
    cache: str | None = None


@dataclass
class SoakConfig:
    url: str
    pid: int | None = None
    duration_s: float = 300.0
    max_requests: int = 100_000
    concurrency: int = 8
    warmup_s: float | None = None
    timeout_s: float = 30.0
    sample_s: float = 1.0
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    seed: int | None = None
    api_key: str | None = None
    collection: str | None = None
    progress: bool | None = None  # None: a bar when stderr is a terminal
    allow_remote: bool = False


class LoadMix:
    """Draws the next request; remembers answered questions for exact hits."""

    def __init__(self, rng: random.Random, mix: dict[str, float], collection: str | None) -> None:
        unknown = set(mix) - set(DEFAULT_MIX)
        if unknown or not mix or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
            raise ValueError(f"--mix takes weights for {', '.join(DEFAULT_MIX)}, e.g. exact=0.35,semantic=0.25,...")
        self.rng = rng
        self.kinds = list(mix)
        self.weights = [mix[k] for k in self.kinds]
        self.collection = collection
        self.answered: list[str] = []  # questions the cache holds (answered with citations)
        self._numbers = itertools.count(rng.randrange(10, 1_000_000, 7))
        self._bad = itertools.cycle(range(len(self._bad_calls("x"))))

    def _query(self, question: str) -> dict[str, Any]:
        body: dict[str, Any] = {"question": question}
        if self.collection is not None:
            body["collection"] = self.collection
        return {"json": body}

    def seeds(self) -> list[Call]:
        return [Call("seed", "seed", "POST", "/v1/query", self._query(q), question=q) for q in SEEDS]

    def remember(self, question: str) -> None:
        if len(self.answered) < 1000:
            self.answered.append(question)
        else:  # a bounded pool: replace one at random
            self.answered[self.rng.randrange(len(self.answered))] = question

    def next(self) -> Call:
        kind = self.rng.choices(self.kinds, self.weights)[0]
        if kind == "exact" and self.answered:
            question = self.rng.choice(self.answered)
            variant = self.rng.choice(
                (question, question.lower(), f"  {question.upper()}  ", question.rstrip("?.!") + " ?!")
            )
            return Call("exact", "exact", "POST", "/v1/query", self._query(variant), question=question)
        if kind == "semantic" or kind == "exact":  # nothing answered yet: reword a seed instead
            q = self.rng.choice(self.rng.choice(list(SEEDS.values())))
            bare = q.rstrip("?.! ")
            text = self.rng.choice(WRAPPERS).format(q=q, bare=bare, lower=q.lower(), lower_first=q[:1].lower() + q[1:])
            return Call("semantic", "semantic", "POST", "/v1/query", self._query(text), question=text)
        if kind == "miss":
            template = self.rng.choice(TEMPLATES)
            text = template.format(
                n=next(self._numbers),
                item=self.rng.choice(ITEMS),
                country=self.rng.choice(COUNTRIES),
                method=self.rng.choice(METHODS),
            )
            return Call("miss", "miss", "POST", "/v1/query", self._query(text), question=text)
        calls = self._bad_calls(self.rng.choice(list(SEEDS)))
        return calls[next(self._bad)]

    def _bad_calls(self, q: str) -> list[Call]:
        """Malformed requests, each with the 4xx it must get."""
        json_type = {"content-type": "application/json"}

        def query(label: str, expect: int, **body: Any) -> Call:
            return Call("bad", label, "POST", "/v1/query", {"json": body}, expect)

        return [
            query("empty question", 400, question=""),
            query("blank question", 400, question="   \n "),
            query("question not a string", 400, question=42),
            query("question missing", 400, top_k=3),
            query("question too long", 400, question="refund " * 5000),
            query("top_k 0", 400, question=q, top_k=0),
            query("top_k 51", 400, question=q, top_k=51),
            query("top_k not a number", 400, question=q, top_k="many"),
            query("unknown collection", 404, question=q, collection="no-such-collection"),
            query("bad collection name", 400, question=q, collection="../etc"),
            query("unknown field", 400, question=q, colour="blue"),
            query("history not a list", 400, question=q, history="earlier"),
            Call(
                "bad",
                "bad JSON",
                "POST",
                "/v1/query",
                {"content": b'{"question": "How long', "headers": json_type},
                400,
            ),
            Call("bad", "body not an object", "POST", "/v1/query", {"json": ["question"]}, 400),
            Call("bad", "wrong method", "GET", "/v1/query", {}, 405),
            Call("bad", "unknown route", "GET", "/v1/no-such-route", {}, 404),
        ]


def judge(call: Call, response: httpx.Response) -> tuple[str | None, str | None]:
    """(error, cache outcome): error is None when the response is the right one."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if call.kind == "bad":
        error = body.get("error") if isinstance(body, dict) else None
        if status != call.expect:
            return f"{call.label}: got {status}, expected {call.expect}: {response.text[:200]}", None
        if not (isinstance(error, dict) and set(error) == ERROR_KEYS and error.get("message")):
            return f"{call.label}: {status} without the error body: {response.text[:200]}", None
        return None, None
    if status != 200:
        return f"{call.kind}: got {status}: {response.text[:200]}", None
    if not (isinstance(body, dict) and isinstance(body.get("answer"), str) and isinstance(body.get("cache"), dict)):
        return f"{call.kind}: 200 without an answer: {response.text[:200]}", None
    return None, body["cache"].get("kind") or "miss"


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


async def run_soak(config: SoakConfig) -> dict[str, Any]:
    """Drive the service as configured; returns the report (see ``summarize``)."""
    if not config.allow_remote and not _is_loopback(config.url):
        raise ValueError(f"{config.url} is not a loopback address: pass --allow-remote to soak another host")
    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**31)
    rng = random.Random(seed)
    load = LoadMix(rng, config.mix, config.collection)
    outcomes: list[Outcome] = []
    rss: list[tuple[float, int, int, int]] = []  # (t, VmRSS, RssAnon, RssFile) in KiB
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    started = time.perf_counter()
    deadline = started + config.duration_s
    issued = 0
    bar = tqdm(
        total=config.max_requests,
        desc="soak",
        unit="req",
        disable=None if config.progress is None else not config.progress,
    )
    errors = 0

    async with httpx.AsyncClient(
        base_url=config.url.rstrip("/"),
        timeout=config.timeout_s,
        headers=headers,
        trust_env=False,  # loopback stays loopback: no proxy from the environment
        limits=httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency),
    ) as client:

        async def send(call: Call) -> None:
            nonlocal errors
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
                error = f"{call.kind}: timeout after {config.timeout_s:g} s"
            except httpx.HTTPError as exc:
                error = f"{call.kind}: transport failure: {type(exc).__name__}: {exc}"
            latency = (time.perf_counter() - sent) * 1000
            outcomes.append(Outcome(sent - started, call.kind, call.label, status, latency, error, cache))
            if cited and call.kind in ("seed", "miss") and call.question is not None:
                load.remember(call.question)  # answered with citations: cached, so asking again is an exact hit
            errors += error is not None
            bar.update(1)
            if errors:
                bar.set_postfix(errors=errors, refresh=False)

        async def sample_memory(stop: asyncio.Event) -> None:
            assert config.pid is not None
            while True:
                kib = read_memory_kib(config.pid)
                if kib is None:  # the server died: nothing left to soak
                    server_gone.set()
                    return
                rss.append((time.perf_counter() - started, *kib))
                try:
                    await asyncio.wait_for(stop.wait(), config.sample_s)
                    return
                except TimeoutError:
                    pass

        async def worker() -> None:
            nonlocal issued
            while issued < config.max_requests and time.perf_counter() < deadline and not server_gone.is_set():
                issued += 1
                await send(load.next())

        stop = asyncio.Event()
        server_gone = asyncio.Event()
        sampler = asyncio.create_task(sample_memory(stop)) if config.pid is not None else None
        try:
            for call in load.seeds():  # one by one: the exact and semantic hits need them cached
                if issued >= config.max_requests or time.perf_counter() >= deadline:
                    break
                issued += 1
                await send(call)
            await asyncio.gather(*(worker() for _ in range(config.concurrency)))
        finally:
            ended = time.perf_counter()
            stop.set()
            if sampler is not None:
                await sampler
            if config.pid is not None and (kib := read_memory_kib(config.pid)) is not None:
                rss.append((time.perf_counter() - started, *kib))  # the final reading, after the load
            bar.close()
    report = summarize(config, outcomes, rss, ended - started, seed)
    if server_gone.is_set():
        report["server_exited"] = True
        report["passed"] = False
        report["error_samples"].insert(0, f"the server process {config.pid} exited during the run")
    return report


def _latency(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {
        "n": len(values),
        **latency_summary(values),
        "max_ms": round(values[-1], 2),
    }


def summarize(
    config: SoakConfig,
    outcomes: list[Outcome],
    rss: list[tuple[float, int, int, int]],
    elapsed_s: float,
    seed: int,
) -> dict[str, Any]:
    counts = Counter(o.kind for o in outcomes)
    errors = [o for o in outcomes if o.error is not None]
    by_kind: dict[str, list[float]] = defaultdict(list)
    cache_outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    for o in outcomes:
        by_kind[o.kind].append(o.latency_ms)
        if o.cache is not None:
            cache_outcomes[o.kind][o.cache] += 1
    bad = [o for o in outcomes if o.kind == "bad"]
    bad_labels: dict[str, Counter[str]] = defaultdict(Counter)
    for o in bad:
        bad_labels[o.label]["correct" if o.error is None else "wrong"] += 1
    warmup_s = config.warmup_s if config.warmup_s is not None else 0.2 * elapsed_s
    memory: dict[str, Any] | None = None
    if config.pid is not None:
        memory = {"pid": config.pid, "samples": len(rss), "warmup_s": round(warmup_s, 1)}
        if rss:
            after = next((sample for sample in rss if sample[0] >= warmup_s), rss[-1])
            final = rss[-1]

            def growth(i: int) -> float:
                return (final[i] - after[i]) / after[i] if after[i] else 0.0

            memory.update(
                {
                    "rss_start_mib": round(rss[0][1] / 1024, 1),
                    "rss_after_warmup_mib": round(after[1] / 1024, 1),
                    "rss_final_mib": round(final[1] / 1024, 1),
                    "rss_peak_mib": round(max(sample[1] for sample in rss) / 1024, 1),
                    "growth": round(growth(1), 4),
                    "growth_pct": round(100 * growth(1), 2),
                    # Where it went: anonymous memory (heap) or mapped files (SQLite pages, ...).
                    "anon_after_warmup_mib": round(after[2] / 1024, 1),
                    "anon_growth_pct": round(100 * growth(2), 2),
                    "file_after_warmup_mib": round(after[3] / 1024, 1),
                    "file_growth_pct": round(100 * growth(3), 2),
                }
            )
        else:
            memory["error"] = f"could not read /proc/{config.pid}/status"
    growth_ok = memory is None or ("growth" in memory and memory["growth"] < MAX_GROWTH)
    report: dict[str, Any] = {
        "url": config.url,
        "seed": seed,
        "concurrency": config.concurrency,
        "duration_s": round(elapsed_s, 1),
        "requests": len(outcomes),
        "throughput_rps": round(len(outcomes) / elapsed_s, 2) if elapsed_s > 0 else 0.0,
        "counts": {k: counts[k] for k in KINDS if counts[k]},
        "errors": len(errors),
        "errors_by_kind": dict(Counter(o.kind for o in errors)),
        "error_samples": [o.error for o in errors[:10]],
        "bad_requests": {
            "total": len(bad),
            "correct_4xx": sum(1 for o in bad if o.error is None),
            "by_case": {label: dict(c) for label, c in sorted(bad_labels.items())},
        },
        "cache_outcomes": {k: dict(cache_outcomes[k]) for k in KINDS if cache_outcomes[k]},
        "latency": {"all": _latency([o.latency_ms for o in outcomes])} if outcomes else {},
        "memory": memory,
        "targets": {"errors": 0, "memory_growth_below": MAX_GROWTH},
        "passed": bool(outcomes) and not errors and growth_ok,
    }
    for kind in KINDS:
        if by_kind[kind]:
            report["latency"][kind] = _latency(by_kind[kind])
    report["_series"] = {
        "requests": [(round(o.t, 3), o.kind, round(o.latency_ms, 2), o.error is not None) for o in outcomes],
        "rss": [(round(t, 2), kib, anon, file) for t, kib, anon, file in rss],
    }
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


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"soak of {report['url']}: {report['requests']} requests in {report['duration_s']} s "
        f"({report['throughput_rps']} req/s, concurrency {report['concurrency']}, seed {report['seed']})",
        "  counts: " + ", ".join(f"{k} {n}" for k, n in report["counts"].items()),
        f"  errors: {report['errors']} (target 0)"
        + (f" by kind {report['errors_by_kind']}" if report["errors"] else ""),
        f"  bad requests answered with their 4xx and error body: {report['bad_requests']['correct_4xx']}"
        f"/{report['bad_requests']['total']}",
        "  cache outcome by kind: " + "; ".join(f"{k} {dict(v)}" for k, v in report["cache_outcomes"].items()),
        "  latency (ms)       n      p50      p95      p99      max",
    ]
    for kind, s in report["latency"].items():
        lines.append(
            f"    {kind:<10} {s['n']:>7} {s['p50_ms']:>8.1f} {s['p95_ms']:>8.1f} {s['p99_ms']:>8.1f} {s['max_ms']:>8.1f}"
        )
    memory = report["memory"]
    if memory is None:
        lines.append("  memory: not measured (no --pid)")
    elif "growth" in memory:
        lines.append(
            f"  memory (pid {memory['pid']}, {memory['samples']} samples): RSS {memory['rss_start_mib']} MiB at start, "
            f"{memory['rss_after_warmup_mib']} after warm-up ({memory['warmup_s']} s), {memory['rss_final_mib']} at the "
            f"end, peak {memory['rss_peak_mib']}: growth {memory['growth_pct']}% (target < {100 * MAX_GROWTH:g}%); "
            f"of which anonymous {memory['anon_after_warmup_mib']} MiB after warm-up, {memory['anon_growth_pct']:+}%, "
            f"mapped files {memory['file_after_warmup_mib']} MiB, {memory['file_growth_pct']:+}%"
        )
    else:
        lines.append(f"  memory: {memory.get('error')}")
    for sample in report["error_samples"]:
        lines.append(f"  error: {sample}")
    lines.append("PASS" if report["passed"] else "FAIL")
    return "\n".join(lines)


def write_outputs(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """soak.json (the report) and soak.png (latency and RSS over time) in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    series = report["_series"]
    json_path = out / "soak.json"
    json_path.write_text(json.dumps({k: v for k, v in report.items() if k != "_series"}, indent=2))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    colours = {
        "seed": "tab:gray",
        "exact": "tab:green",
        "semantic": "tab:blue",
        "miss": "tab:orange",
        "bad": "tab:purple",
    }
    for kind in KINDS:
        points = [(t, ms) for t, k, ms, _ in series["requests"] if k == kind]
        if points:
            top.scatter(*zip(*points, strict=True), s=3, alpha=0.4, color=colours[kind], label=kind)
    failed = [(t, ms) for t, _, ms, err in series["requests"] if err]
    if failed:
        top.scatter(*zip(*failed, strict=True), s=18, marker="x", color="red", label="error")
    top.set_yscale("log")
    top.set_ylabel("latency (ms)")
    p99 = report["latency"].get("all", {}).get("p99_ms")
    top.set_title(f"rag-service soak: {report['requests']} requests, {report['errors']} errors, p99 {p99} ms")
    top.legend(fontsize=7, markerscale=3, loc="upper right")
    top.grid(alpha=0.3)
    memory = report["memory"]
    if series["rss"]:
        ts, kib, anon, mapped = zip(*series["rss"], strict=True)
        bottom.plot(ts, [k / 1024 for k in kib], color="tab:red", label="RSS")
        bottom.plot(ts, [k / 1024 for k in anon], color="tab:brown", linestyle=":", label="of which anonymous")
        bottom.plot(ts, [k / 1024 for k in mapped], color="tab:olive", linestyle=":", label="of which mapped files")
        bottom.axvline(memory["warmup_s"], color="gray", linestyle="--", label="end of warm-up")
        if "growth_pct" in memory:
            bottom.set_title(f"server memory: RSS growth after warm-up {memory['growth_pct']}%")
        bottom.legend(fontsize=7)
    else:
        bottom.set_title("server RSS: not measured (no --pid)")
    bottom.set_ylabel("MiB")
    bottom.set_xlabel("seconds since start")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    png_path = out / "soak.png"
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return json_path, png_path


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

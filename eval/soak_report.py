"""The soak test's report: counts, errors, latency by kind, throughput and memory growth
(:func:`summarize`), as text (:func:`format_report`), JSON and a PNG (:func:`write_outputs`)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from .soak_load import KINDS, MAX_GROWTH, Outcome, SoakConfig
from .stats import latency_summary


def _latency(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {
        "n": len(values),
        **latency_summary(values),
        "max_ms": round(values[-1], 2),
    }


def _memory_summary(config: SoakConfig, rss: list[tuple[float, int, int, int]], warmup_s: float) -> dict[str, Any]:
    """RSS at start, after the warm-up, at the end and at peak, and the growth in between."""
    memory: dict[str, Any] = {"pid": config.pid, "samples": len(rss), "warmup_s": round(warmup_s, 1)}
    if not rss:
        memory["error"] = f"could not read /proc/{config.pid}/status"
        return memory
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
    return memory


def _bad_requests(outcomes: list[Outcome]) -> dict[str, Any]:
    """How the malformed requests were answered, by case."""
    bad = [o for o in outcomes if o.kind == "bad"]
    by_case: dict[str, Counter[str]] = defaultdict(Counter)
    for o in bad:
        by_case[o.label]["correct" if o.error is None else "wrong"] += 1
    return {
        "total": len(bad),
        "correct_4xx": sum(1 for o in bad if o.error is None),
        "by_case": {label: dict(c) for label, c in sorted(by_case.items())},
    }


def _by_kind(outcomes: list[Outcome]) -> tuple[dict[str, Any], dict[str, dict[str, int]]]:
    """Latency percentiles overall and per kind, and the cache outcomes per kind."""
    latencies: dict[str, list[float]] = defaultdict(list)
    cache_outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    for o in outcomes:
        latencies[o.kind].append(o.latency_ms)
        if o.cache is not None:
            cache_outcomes[o.kind][o.cache] += 1
    latency = {"all": _latency([o.latency_ms for o in outcomes])} if outcomes else {}
    latency.update({kind: _latency(latencies[kind]) for kind in KINDS if latencies[kind]})
    return latency, {k: dict(cache_outcomes[k]) for k in KINDS if cache_outcomes[k]}


def summarize(
    config: SoakConfig,
    outcomes: list[Outcome],
    rss: list[tuple[float, int, int, int]],
    elapsed_s: float,
    seed: int,
) -> dict[str, Any]:
    counts = Counter(o.kind for o in outcomes)
    errors = [o for o in outcomes if o.error is not None]
    warmup_s = config.warmup_s if config.warmup_s is not None else 0.2 * elapsed_s
    memory = _memory_summary(config, rss, warmup_s) if config.pid is not None else None
    growth_ok = memory is None or ("growth" in memory and memory["growth"] < MAX_GROWTH)
    latency, cache_outcomes = _by_kind(outcomes)
    return {
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
        "bad_requests": _bad_requests(outcomes),
        "cache_outcomes": cache_outcomes,
        "latency": latency,
        "memory": memory,
        "targets": {"errors": 0, "memory_growth_below": MAX_GROWTH},
        "passed": bool(outcomes) and not errors and growth_ok,
        "_series": {
            "requests": [(round(o.t, 3), o.kind, round(o.latency_ms, 2), o.error is not None) for o in outcomes],
            "rss": [(round(t, 2), kib, anon, file) for t, kib, anon, file in rss],
        },
    }


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

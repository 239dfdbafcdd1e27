"""`rag bench`'s report: the scaling and the ratios to the reference, the table, the plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

PATHS = ("exact_hit", "semantic_hit", "miss_overhead", "miss_backend")


def _measured(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """A level's row if any request of it was answered (a level can be all errors)."""
    return row if row and "p50_ms" in row else None


def scaling(paths: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each path's requests/s at each level over its rate at the lowest level (what batching,
    here and in vLLM, buys)."""
    out: dict[str, dict[str, float]] = {}
    for path, levels in paths.items():
        rows = [(level, row) for level, row in (levels or {}).items() if _measured(row)]
        if len(rows) < 2:
            continue
        base = rows[0][1]["rps"]
        out[path] = {level: round(row["rps"] / base, 2) for level, row in rows[1:]}
    return out


def ratios(result: dict[str, Any]) -> dict[str, Any]:
    """Reference / ours: latency (p50) and ours / reference: throughput, where both ran."""
    ref = result.get("reference")
    if not ref:
        return {}
    out: dict[str, Any] = {}
    for path, levels in result["paths"].items():
        theirs = ref["paths"].get(path)
        if not levels or not theirs:
            continue
        for level, row in levels.items():
            row, other = _measured(row), _measured(theirs.get(level))
            if row and other:
                out.setdefault(path, {})[level] = {
                    "p50_speedup": round(other["p50_ms"] / row["p50_ms"], 2),
                    "rps_ratio": round(row["rps"] / other["rps"], 2),
                }
    if result.get("ingest_chunks_per_s") and ref.get("ingest_chunks_per_s"):
        out["ingest"] = round(result["ingest_chunks_per_s"] / ref["ingest_chunks_per_s"], 2)
    return out


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{'path':<14}{'level':>6}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'rps':>9}{'errors':>8}   "
        "reference p50 / rps / errors"
    ]
    ref = (result.get("reference") or {}).get("paths", {})
    for path in PATHS:
        for level, row in (result["paths"].get(path) or {}).items():
            if row is None:
                continue
            other = (ref.get(path) or {}).get(level) or {}
            theirs = (
                f"   {other['p50_ms']:.2f} ms / {other['rps']:.1f}" if _measured(other) else "   - / -" if other else ""
            ) + (f" / {other.get('errors', 0)}" if other else "")
            figures = (
                f"{row['p50_ms']:>9.2f}{row['p95_ms']:>9.2f}{row['p99_ms']:>9.2f}{row['rps']:>9.2f}"
                if _measured(row)
                else f"{'-':>9}{'-':>9}{'-':>9}{'-':>9}"
            )
            lines.append(f"{path:<14}{level:>6}{figures}{row.get('errors', 0):>8}{theirs}")
    for side, paths in (("", result["paths"]), ("reference ", ref)):
        for path, levels in (paths or {}).items():
            for level, row in (levels or {}).items():
                if row and row.get("errors"):
                    lines.append(f"{side}{path} {level}: {row['errors']} failed, e.g. {row['error_sample']}")
    for path, levels in (result.get("scaling") or {}).items():
        first = next(level for level, row in result["paths"][path].items() if _measured(row))
        lines.append(f"{path} throughput vs {first}: " + ", ".join(f"{lv} {x:.1f}x" for lv, x in levels.items()))
    lines += _redis_lines(result)
    ingest = result.get("ingest", {})
    ref_ingest = f" (reference {ingest['reference']:.0f})" if ingest.get("reference") else ""
    lines.append(f"ingest: {result.get('ingest_chunks_per_s', 0):.0f} chunks/s{ref_ingest}")
    if result.get("reference_missing"):
        lines.append(f"reference: {result['reference_missing']}")
    return "\n".join(lines)


def _redis_lines(result: dict[str, Any]) -> list[str]:
    """`--redis`: the hit paths on Redis beside diskcache's, and the replicas' hit rates."""
    redis = result.get("redis")
    if not redis:
        return []
    lines = []
    for path in ("exact_hit", "semantic_hit"):
        for level, measured in (redis.get(path) or {}).items():
            row, disk = _measured(measured), _measured((result["paths"].get(path) or {}).get(level))
            if row and disk:
                lines.append(
                    f"{path} {level} on Redis: p50 {row['p50_ms']:.2f} ms, {row['rps']:.1f} rps "
                    f"(diskcache {disk['p50_ms']:.2f} ms, {disk['rps']:.1f} rps)"
                )
    for name, figures in (redis.get("replicas") or {}).items():
        if isinstance(figures, dict) and "hit_rate" in figures:
            lines.append(f"hit rate, {name.replace('_', ' ')}: {figures['hit_rate']:.3f} of {figures['requests']}")
    return lines


def plot(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """bench-latency.png (p50/p95/p99 by path at each level, ours beside the reference) and
    bench-throughput.png (requests/s against concurrency)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    ref = (result.get("reference") or {}).get("paths", {})
    levels = [f"c{c}" for c in result["levels"]]
    paths = [p for p in PATHS if result["paths"].get(p)]
    fig, axes = plt.subplots(1, len(levels), figsize=(5 * len(levels), 4.5), squeeze=False)
    for ax, level in zip(axes[0], levels, strict=True):
        labels, bars = [], []
        for path in paths:
            for who, source in (("ours", result["paths"]), ("reference", ref)):
                row = _measured((source.get(path) or {}).get(level))
                if row:
                    labels.append(f"{path}\n{who}")
                    bars.append([row["p50_ms"], row["p95_ms"], row["p99_ms"]])
        x = np.arange(len(labels))
        for i, name in enumerate(("p50", "p95", "p99")):
            ax.bar(x + (i - 1) * 0.27, [b[i] for b in bars], 0.27, label=name)
        ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("latency (ms, log)")
        ax.set_title(f"concurrency {level[1:]}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    latency_png = out_dir / "bench-latency.png"
    fig.savefig(latency_png, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for colour, path in enumerate(paths):  # one colour a path; solid ours, dashed the reference
        for who, source, style in (("ours", result["paths"], "-o"), ("reference", ref, "--x")):
            rows = source.get(path) or {}
            points = [(int(level[1:]), rows[level]["rps"]) for level in levels if _measured(rows.get(level))]
            if points:
                ax.plot(*zip(*points, strict=True), style, color=f"C{colour}", label=f"{path} ({who})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrency")
    ax.set_ylabel("requests / s (log)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    throughput_png = out_dir / "bench-throughput.png"
    fig.savefig(throughput_png, dpi=110)
    plt.close(fig)
    return [latency_png, throughput_png]

"""`rag bench` end to end: real `rag serve` processes and the LangChain + GPTCache reference
on 127.0.0.1, a small workload, every path and level in the JSON, the plots written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT

KEYS = {"p50_ms", "p95_ms", "p99_ms", "rps"}


def test_rag_bench_measures_every_path_beside_the_reference(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")} | {"HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "rag.cli", "bench", "--backend", "extractive", "--concurrency", "1,4",
           "--requests", "16", "--backend-requests", "8", "--json", "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert set(result["paths"]) == {"exact_hit", "semantic_hit", "miss_overhead", "miss_backend"}
    for path, levels in result["paths"].items():
        assert set(levels) == {"c1", "c4"}, path
        for row in levels.values():
            assert KEYS <= set(row) and row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] and row["rps"] > 0, path
    assert result["ingest_chunks_per_s"] > 0 and result["reference"]["ingest_chunks_per_s"] > 0
    reference = result["reference"]["paths"]
    assert set(reference) == {"exact_hit", "semantic_hit", "miss_overhead"}  # the same instant answer
    assert all(KEYS <= set(row) for levels in reference.values() for row in levels.values())
    assert set(result["ratios"]["miss_overhead"]["c4"]) == {"p50_speedup", "rps_ratio"}
    assert json.loads((tmp_path / "bench.json").read_text())["paths"].keys() == result["paths"].keys()
    for png in ("bench-latency.png", "bench-throughput.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

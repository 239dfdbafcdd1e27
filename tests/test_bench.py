"""`rag bench` end to end: real `rag serve` processes and the LangChain + GPTCache reference
on 127.0.0.1, a small workload, every path and level in the JSON, the plots written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from eval.bench import measure
from eval.bench_report import table

from .conftest import ROOT

KEYS = {"p50_ms", "p95_ms", "p99_ms", "rps"}


def test_rag_bench_measures_every_path_beside_the_reference(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")} | {"HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "cli", "bench", "--backend", "extractive", "--concurrency", "1,4",
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
    backend = result["paths"]["miss_backend"]
    assert result["scaling"]["miss_backend"]["c4"] == round(backend["c4"]["rps"] / backend["c1"]["rps"], 2)
    # 40 questions: the backend path's 34 (warm-ups included) need none twice; the overhead
    # path's 42 run out, and its c4 level says how many it asked again.
    assert "repeated" not in backend["c1"] and "repeated" not in backend["c4"]
    assert result["paths"]["miss_overhead"]["c4"]["repeated"] == 2
    assert json.loads((tmp_path / "bench.json").read_text())["paths"].keys() == result["paths"].keys()
    for png in ("bench-latency.png", "bench-throughput.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _Recorder(BaseHTTPRequestHandler):
    asked: list[str] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.asked.append(json.loads(body)["question"])
        answer = json.dumps({"answer": "ok", "cache": {"kind": None}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


class _Bar:
    def update(self, n: int) -> None:
        pass


def test_each_level_asks_questions_the_levels_before_it_did_not() -> None:
    """A prefix-caching backend must not answer c16 from the prompts c1 left behind."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        questions = [f"q{i}" for i in range(30)]
        url = f"http://127.0.0.1:{server.server_port}"
        out = measure(url, questions, [1, 4], requests=8, want=None, bar=_Bar())
    finally:
        server.shutdown()
        server.server_close()
    # c1: 2 warm-up + 8; c4: 8 warm-up + 16, of which 4 had to come round again. c4's four
    # clients are recorded in the order their requests arrive, so the last of the new questions
    # and the first that came round again can cross (at most three places apart).
    assert _Recorder.asked[:10] == questions[:10]
    assert sorted(_Recorder.asked[10:]) == sorted(questions[10:] + questions[:4])
    assert all(_Recorder.asked.index(q, 10) >= 30 - 3 for q in questions[:4])
    assert "repeated" not in out["c1"] and out["c4"]["repeated"] == 4


class _Flaky(BaseHTTPRequestHandler):
    """Every third request fails the way GPTCache's SQLite store does under concurrency."""

    count = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).count += 1
        failing = self.count % 3 == 0
        body = b"Internal Server Error: database is locked" if failing else json.dumps({"answer": "ok"}).encode()
        self.send_response(500 if failing else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_failing_server_is_counted_not_the_end_of_the_benchmark() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = measure(f"http://127.0.0.1:{server.server_port}", ["q"], [1, 2], requests=9, want=None, bar=_Bar())
    finally:
        server.shutdown()
        server.server_close()
    # c1: 2 warm-ups, then requests 3..11 (3, 6, 9 fail); c2: 4 warm-ups, then 16..24 (18, 21, 24 fail).
    assert (out["c1"]["n"], out["c1"]["errors"]) == (6, 3) and (out["c2"]["n"], out["c2"]["errors"]) == (6, 3)
    assert "500 Internal Server Error" in out["c1"]["error_sample"]
    result = {"paths": {"exact_hit": out}, "reference": {"paths": {"exact_hit": out}}, "scaling": {}, "levels": [1, 2]}
    assert "exact_hit c1: 3 failed" in table(result) and "reference exact_hit c2: 3 failed" in table(result)

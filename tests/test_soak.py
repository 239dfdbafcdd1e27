"""eval/soak.py, briefly: against the real service it counts every kind and no error, a
bad request's 4xx counts as correct; against a server that answers 500 everything is an
error and the exit status says so."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from eval.soak import Outcome, SoakConfig, main, soak, summarize
from rag.pipeline import build_pipeline
from serving.app import create_app

from .conftest import make_settings
from .servers import running_server

REPORT_KEYS = {
    "url", "seed", "concurrency", "duration_s", "requests", "throughput_rps", "counts", "errors", "errors_by_kind",
    "error_samples", "bad_requests", "cache_outcomes", "latency", "memory", "targets", "passed", "_series",
}  # fmt: skip


@pytest.fixture(scope="module")
def service_url(example_data_dir: Path, embedder) -> Iterator[str]:  # type: ignore[no-untyped-def]
    settings = make_settings(example_data_dir, backend="extractive")
    with running_server(create_app(settings, build_pipeline(settings, embedder))) as url:
        yield url


@pytest.fixture(scope="module")
def failing_url() -> Iterator[str]:
    """A server that answers every request with a 500 and the error body."""
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def everything(path: str, request: Request) -> JSONResponse:
        body = {"error": {"message": "boom", "type": "server_error", "param": None, "code": "internal_error"}}
        return JSONResponse(body, status_code=500)

    with running_server(app) as url:
        yield url


def test_soak_of_the_real_service_counts_every_kind_and_no_error(service_url: str) -> None:
    # It ends at 160 requests; the duration only bounds a machine too slow for that (one CI run
    # with other work on its two cores made 138 in 20 s: a count, not a speed, is asserted).
    config = SoakConfig(url=service_url, pid=os.getpid(), duration_s=120, max_requests=160, concurrency=4, seed=7)
    config.sample_s = 0.2
    report = soak(config)
    assert set(report) == REPORT_KEYS
    assert report["errors"] == 0, report["error_samples"]
    assert report["passed"] is (report["memory"]["growth"] < 0.05)
    assert report["requests"] == 160 and sum(report["counts"].values()) == 160
    assert set(report["counts"]) == {"seed", "exact", "semantic", "miss", "bad"}
    # Every malformed request got its own 4xx with the error body: counted as correct.
    bad = report["bad_requests"]
    assert bad["total"] == report["counts"]["bad"] > 0 and bad["correct_4xx"] == bad["total"]
    assert all(case == {"correct": case["correct"]} for case in bad["by_case"].values())
    # Repeats are exact hits, rewordings mostly semantic ones, new questions misses.
    assert report["cache_outcomes"]["exact"] == {"exact": report["counts"]["exact"]}
    semantic = report["cache_outcomes"]["semantic"]
    assert semantic.get("semantic", 0) >= 0.8 * sum(semantic.values())
    assert report["cache_outcomes"]["miss"] == {"miss": report["counts"]["miss"]}
    for kind in ("all", "seed", "exact", "semantic", "miss", "bad"):
        stats = report["latency"][kind]
        assert 0 < stats["p50_ms"] <= stats["p95_ms"] <= stats["p99_ms"] <= stats["max_ms"]
    memory = report["memory"]
    assert memory["samples"] >= 2 and memory["rss_after_warmup_mib"] > 0 and "growth_pct" in memory


def test_a_server_answering_500_is_all_errors(failing_url: str) -> None:
    report = soak(SoakConfig(url=failing_url, duration_s=10, max_requests=60, concurrency=3, seed=1))
    assert report["requests"] == 60 and report["errors"] == 60 and not report["passed"]
    # A 500 is no answer to a bad request either: it is not the 4xx the request should get.
    assert report["bad_requests"]["total"] > 0 and report["bad_requests"]["correct_4xx"] == 0
    assert any("got 500" in sample for sample in report["error_samples"])
    assert report["memory"] is None


def test_the_soak_stops_when_the_server_process_exits(failing_url: str) -> None:
    stand_in = subprocess.Popen(["sleep", "1"])  # the "server" process whose memory is sampled
    try:
        config = SoakConfig(url=failing_url, pid=stand_in.pid, duration_s=30, max_requests=100_000, concurrency=2)
        config.sample_s = 0.1
        report = soak(config)
    finally:
        stand_in.kill()
        stand_in.wait()
    assert report["server_exited"] and not report["passed"] and report["duration_s"] < 10
    assert "exited" in report["error_samples"][0]


def test_exit_status_and_outputs(failing_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--url", failing_url, "--minutes", "0.2", "--max-requests", "12", "--json", "--out", str(tmp_path)]
    assert main(argv) == 1
    assert '"errors": 12' in capsys.readouterr().out
    assert (tmp_path / "soak.json").exists() and (tmp_path / "soak.png").stat().st_size > 0
    with pytest.raises(SystemExit) as exc:  # loopback only, unless asked
        main(["--url", "http://192.0.2.1:8000", "--minutes", "1"])
    assert exc.value.code == 2


def test_memory_growth_is_measured_after_the_warm_up() -> None:
    config = SoakConfig(url="http://127.0.0.1:1", pid=1, warmup_s=10)
    answered = [Outcome(1.0, "miss", "miss", 200, 12.0, None, "miss")]
    # Start-up growth (500 -> 600 MB) is before the baseline; 3.3% after it passes.
    flat = [(0.0, 500_000, 0, 0), (10.0, 600_000, 0, 0), (20.0, 610_000, 0, 0), (30.0, 620_000, 0, 0)]
    report = summarize(config, answered, flat, 30.0, seed=0)
    assert report["memory"]["rss_after_warmup_mib"] == round(600_000 / 1024, 1)
    assert report["memory"]["growth"] == pytest.approx(20_000 / 600_000, abs=1e-4) and report["passed"]
    leaking = [*flat, (40.0, 640_000, 0, 0)]  # 6.7% over the baseline
    report = summarize(config, answered, leaking, 40.0, seed=0)
    assert report["memory"]["growth"] >= 0.05 and not report["passed"]

"""`rag bench admin`: how long the admin page takes to load in Chromium over a support store
of ``answers`` stored answers (30 days of them: 15% abstentions over 2,000 distinct
questions, 5% voted down), served by a `rag serve` process.

Loaded means drawn: from navigation until the page has fetched the report and the curated
answers and drawn the charts and tables (``body[data-loaded]``). Needs Playwright and
Chromium (the dev extra; `make test` installs them).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from .processes import free_port, server_process
from .stats import latency_summary

CHROMIUM = "/usr/bin/chromium"


def fill_store(data_dir: Path, answers: int, collection: str, seed: int = 0) -> None:
    """``answers`` answer records over the last 30 days, with feedback on 5% of them."""
    from serving.support_store import AnswerRecord, Feedback, open_support_store

    rng = np.random.default_rng(seed)
    store = open_support_store(data_dir, None)
    now = time.time()
    down = []
    for n in range(answers):
        abstained = rng.random() < 0.15
        question = f"Unanswered question number {rng.integers(2000)}?" if abstained else f"Question {n}?"
        cited = [] if abstained else [{"id": int(n), "document_id": "faq.md", "title": "FAQ", "text": "..."}]
        store.record(AnswerRecord(
            f"bench{n}", now - rng.random() * 30 * 86_400, collection, None, question,
            "I don't know." if abstained else "An answer.", "no_answer" if abstained else "quoted",
            "exact" if rng.random() < 0.4 else None, None, None, None, "g", float(rng.gamma(2.0, 20.0)), None, cited,
        ))  # fmt: skip
        if not abstained and rng.random() < 0.05:
            down.append(Feedback(f"bench{n}", collection, "down", "not what I asked", None, None))
        if n % 10_000 == 9_999:
            store.flush()
    store.flush()
    store.sql.write(
        "INSERT INTO feedback (id, answer_id, collection, rating, reason, correction, key_id, created_at, evicted, "
        "block_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [f.row() for f in down],
    )
    store.close()


def run_admin_bench(corpus: Path, settings: Any, answers: int = 100_000, loads: int = 5) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    from ingest.runner import ingest
    from rag.embedder import SentenceTransformerEmbedder

    scratch = Path(tempfile.mkdtemp(prefix="rag-bench-admin-"))
    local = settings.model_copy(update={"data_dir": scratch})
    ingest([corpus], "default", local, SentenceTransformerEmbedder.from_settings(local).load(), progress=False)
    started = time.perf_counter()
    fill_store(scratch, answers, "default")
    fill_s = time.perf_counter() - started
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env |= {"RAG_DATA_DIR": str(scratch), "RAG_BACKEND": "extractive", "HF_HUB_OFFLINE": "1"}
    port = free_port()
    cmd = [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with server_process(cmd, env, scratch / "serve.log", port) as url, sync_playwright() as p:
        t = time.perf_counter()
        httpx.get(f"{url}/v1/admin/report?collection=default", timeout=60).raise_for_status()
        api_first_ms = (time.perf_counter() - t) * 1000
        api_ms = []
        for _ in range(loads):
            t = time.perf_counter()
            httpx.get(f"{url}/v1/admin/report?collection=default", timeout=60).raise_for_status()
            api_ms.append((time.perf_counter() - t) * 1000)
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        times = []
        for _ in range(loads):
            page = browser.new_page()
            t = time.perf_counter()
            page.goto(f"{url}/admin")
            page.wait_for_selector("body[data-loaded]", timeout=60_000)
            times.append((time.perf_counter() - t) * 1000)
            rows = page.locator("#unanswered tr").count() - 1
            page.close()
        browser.close()
    return {
        "answers": answers,
        "fill_s": round(fill_s, 1),
        "report_api_first_ms": round(api_first_ms, 1),
        "report_api_ms": [round(x, 1) for x in api_ms],
        "page_load_ms": [round(x, 1) for x in times],
        **latency_summary(times, (50,), digits=1),
        "unanswered_groups_shown": rows,
    }

"""Ingest is crash-safe and queries never see a torn index.

- An ingest run SIGKILLed at random points (a random line of the writer, or a random moment
  of its wall-clock run): the service keeps answering from a complete version, the next run
  completes and publishes, and nothing half-written is left behind.
- Queries running while re-ingests publish new versions: every answer is the answer of one
  published version, never a mix of two.

Kill points are drawn from a seeded RNG; every trial prints its seed and kill point, and
``RAG_CRASH_SEED=<seed>`` replays the same draws.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from ingest.chunker import Chunker
from ingest.loaders import load_file
from ingest.runner import ingest
from rag.compress import terms
from rag.pipeline import Pipeline, build_pipeline
from rag.settings import Settings
from rag.store import (
    CHUNKS_FILE,
    CURRENT_FILE,
    INDEX_FILE,
    META_FILE,
    CollectionIndex,
    collection_dir,
    current_version_dir,
)
from serving.app import create_app

from .conftest import EXAMPLES, ROOT, make_settings
from .servers import running_server

HOLIDAY_QUESTION = "What are the holiday opening hours?"
VERSION_FILES = sorted([CHUNKS_FILE, INDEX_FILE, META_FILE])


def _variant(n: int) -> dict[str, str]:
    """Trial ``n``'s changes: one article rewritten, one notice added (the last one goes)."""
    return {
        "holiday-hours.md": f"# Holiday opening hours\n\nHoliday schedule H{n}: over the holidays our stores "
        f"open at {7 + n % 4} am and close at {4 + n % 5} pm, and the support line is open until {5 + n % 3} pm.\n",
        f"notice-{n}.md": f"# Store notice {n}\n\nStore notice {n}: the car park of the Leeds store is closed "
        f"for resurfacing during week {n} of the year.\n",
    }


def _apply_variant(corpus: Path, n: int) -> None:
    for old in corpus.glob("notice-*.md"):
        old.unlink()
    for name, text in _variant(n).items():
        (corpus / name).write_text(text)


def _write_vectors(path: Path, settings: Settings, embedder: Any, variants: range) -> None:
    """The real model's vectors for every chunk the variants can produce (the child replays them)."""
    chunker = Chunker(settings.chunk_size, settings.chunk_overlap)
    texts = sorted(
        {
            chunk.embedding_text
            for n in variants
            for name, text in _variant(n).items()
            for doc in load_file(Path(name), text.encode(), document_id=name).documents
            for chunk in chunker.split(doc)
        }
    )
    np.savez(path, texts=np.asarray(texts), vectors=embedder.embed_batch(texts))


def check_version(vdir: Path) -> dict[int, tuple[str, str]]:
    """Assert ``vdir`` is a complete version (its three files, FAISS and SQLite agreeing) and
    return its chunks, ``{id: (document_id, text)}``."""
    import faiss

    assert sorted(p.name for p in vdir.iterdir()) == VERSION_FILES, f"{vdir} is incomplete: {list(vdir.iterdir())}"
    meta = json.loads((vdir / META_FILE).read_text())
    index = faiss.read_index(str(vdir / INDEX_FILE))
    with closing(sqlite3.connect(f"file:{vdir / CHUNKS_FILE}?mode=ro", uri=True)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = {r[0]: (r[1], r[2]) for r in db.execute("SELECT id, document_id, text FROM chunks")}
    assert index.ntotal == len(rows) == meta["chunks"], f"{vdir}: FAISS {index.ntotal}, SQLite {len(rows)}"
    assert sorted(int(i) for i in faiss.vector_to_array(index.id_map)) == sorted(rows)  # type: ignore[attr-defined]
    return rows


def assert_nothing_half_written(cdir: Path) -> None:
    """Only the live version, at most the previous one (both complete), CURRENT and the lock."""
    live = current_version_dir(cdir)
    assert live is not None
    versions = [p for p in cdir.iterdir() if p.name.startswith("v")]
    assert live in versions and len(versions) <= 2, f"version folders left: {sorted(p.name for p in versions)}"
    for vdir in versions:
        check_version(vdir)
    others = {p.name for p in cdir.iterdir()} - {CURRENT_FILE, ".lock"} - {p.name for p in versions}
    assert not others, f"left behind in {cdir}: {sorted(others)}"


def _live_fingerprint(cdir: Path) -> str:
    live = current_version_dir(cdir)
    assert live is not None
    return str(json.loads((live / META_FILE).read_text())["fingerprint"])


@dataclass
class CrashBench:
    """A collection, a corpus to change, and what a child run looks like."""

    corpus: Path
    settings: Settings
    vectors: Path
    embedder: Any
    lines: dict[str, int] = field(default_factory=dict)  # "file:line" -> runs in a full run
    run_seconds: float = 0.0  # a full run, from "go" to exit
    next_variant: int = 0

    @property
    def cdir(self) -> Path:
        return collection_dir(self.settings.collections_dir, "default")

    def child(self, mode: str, arg: str | None = None, **popen: Any) -> subprocess.Popen[bytes]:
        args = [str(self.corpus), str(self.settings.data_dir), str(self.vectors), mode, *([arg] if arg else [])]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
        return subprocess.Popen([sys.executable, "-m", "tests.crash_child", *args], cwd=ROOT, env=env, **popen)

    def change(self) -> int:
        n = self.next_variant
        self.next_variant += 1
        _apply_variant(self.corpus, n)
        return n

    def calibrate(self, tmp: Path) -> None:
        self.change()
        counts = tmp / "lines.json"
        proc = self.child("calibrate", str(counts), stderr=subprocess.PIPE)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-3000:]
        self.lines = json.loads(counts.read_text())
        self.change()
        _, seconds = self.run_until(None)
        self.run_seconds = seconds

    def run_until(self, kill_after_s: float | None) -> tuple[int, float]:
        """A ``wait`` child: start it, say go, SIGKILL it ``kill_after_s`` later (None: let it
        finish). Returns its exit status and the seconds from go to exit."""
        proc = self.child("wait", stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdin is not None and proc.stdout is not None
        assert proc.stdout.readline().strip() == b"READY"
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        started = time.perf_counter()
        if kill_after_s is not None:
            time.sleep(kill_after_s)
            proc.send_signal(signal.SIGKILL)
        rc = proc.wait(timeout=120)
        seconds = time.perf_counter() - started
        proc.stdin.close()
        proc.stdout.close()
        return rc, seconds

    def run_to_line(self, target: str) -> int:
        proc = self.child("line", target, stderr=subprocess.PIPE)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode in (0, -signal.SIGKILL), err.decode()[-3000:]
        return proc.returncode


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory, embedder) -> CrashBench:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("crash")
    corpus = root / "docs"
    shutil.copytree(EXAMPLES, corpus)
    settings = make_settings(root / "data", backend="extractive", cache_enabled=False)
    bench = CrashBench(corpus, settings, root / "vectors.npz", embedder)
    _write_vectors(bench.vectors, settings, embedder, range(64))
    ingest([corpus], "default", settings, embedder, progress=False)
    bench.calibrate(root)
    assert_nothing_half_written(bench.cdir)
    return bench


async def _trial(bench: CrashBench, pipeline: Pipeline, kill: str, label: str) -> None:
    """One re-ingest killed at ``kill`` ("line FILE:LINE:HIT" or "time SECONDS"), then the checks."""
    before = _live_fingerprint(bench.cdir)
    n = bench.change()
    how, _, where = kill.partition(" ")
    if how == "line":
        rc = bench.run_to_line(where)
    else:
        rc, _ = bench.run_until(float(where))
    live = current_version_dir(bench.cdir)
    print(f"{label}: kill at {kill} -> exit {rc}, live {live.name if live else None}")
    context = f"{label} (kill at {kill}, exit {rc})"

    # The service answers from a complete version: the one before, or the finished new one.
    assert live is not None, context
    rows = check_version(live)
    after_kill = _live_fingerprint(bench.cdir)
    index = CollectionIndex.load(bench.settings.collections_dir, "default", model="all-MiniLM-L6-v2", dimension=384)
    index.close()
    pipeline.refresh()  # what the server's version watcher does within RAG_INDEX_POLL_S
    answer = await pipeline.answer(HOLIDAY_QUESTION)
    assert any(c.document_id == "holiday-hours.md" for c in answer.citations), (context, answer)
    for c in answer.citations:  # the cited text (the quoted sentences of the chunk) is that chunk's
        assert c.id in rows and set(terms(c.text.removesuffix("…"))) <= set(terms(rows[c.id][1])), (context, c)

    # The next run completes and publishes trial n's content.
    report = ingest([bench.corpus], "default", bench.settings, bench.embedder, progress=False)
    assert _live_fingerprint(bench.cdir) == report.version, context
    assert _live_fingerprint(bench.cdir) != before, context
    assert after_kill in (before, report.version), f"{context}: served a version that is neither old nor new"
    texts = [text for _, text in check_version(current_version_dir(bench.cdir)).values()]  # type: ignore[arg-type]
    assert any(f"Holiday schedule H{n}:" in t for t in texts) and any(f"Store notice {n}:" in t for t in texts)
    assert not any(f"Store notice {n - 1}:" in t for t in texts), context
    if rc == 0:  # the child finished first: this run had nothing left to do
        assert not report.indexed, context
    assert_nothing_half_written(bench.cdir)
    pipeline.refresh()
    answer = await pipeline.answer(HOLIDAY_QUESTION)
    assert any(f"H{n}" in c.text for c in answer.citations), (context, answer)


def _line_of(relpath: str, needle: str) -> str:
    """``FILE:LINE`` of the line of ``relpath`` holding ``needle`` (the writer's landmarks)."""
    lines = (ROOT / relpath).read_text().splitlines()
    found = [i for i, line in enumerate(lines, 1) if needle in line]
    assert len(found) == 1, f"{relpath} should have one line with {needle!r}: update this test"
    return f"{relpath}:{found[0]}"


def _random_kills(bench: CrashBench, rng: random.Random, count: int) -> list[str]:
    """Half at a random line of the writer (any line it runs is equally likely, then a random
    run of it), half at a random moment from go to a little after a full run's end."""
    kills = []
    lines = sorted(bench.lines)
    for i in range(count):
        if i % 2 == 0:
            line = rng.choice(lines)
            kills.append(f"line {line}:{rng.randint(1, bench.lines[line])}")
        else:
            kills.append(f"time {rng.uniform(0, 1.1 * bench.run_seconds):.4f}")
    return kills


def _seed() -> int:
    return int(os.environ.get("RAG_CRASH_SEED") or random.SystemRandom().randrange(2**32))


async def _run_trials(bench: CrashBench, kills: list[str], seed: int) -> None:
    pipeline = build_pipeline(bench.settings, bench.embedder)
    try:
        for i, kill in enumerate(kills):
            await _trial(bench, pipeline, kill, f"seed {seed} trial {i}")
    finally:
        await pipeline.aclose()


async def test_ingest_killed_at_a_few_points_keeps_serving_and_recovers(bench: CrashBench) -> None:
    """The moments around the commit point, then one random line and one random moment."""
    seed = _seed()
    landmarks = [
        _line_of("rag/store/writer.py", "faiss.write_index(self.index, str(self.path / INDEX_FILE))"),  # publishing
        _line_of("rag/store/layout.py", "os.replace(tmp, cdir / CURRENT_FILE)"),  # CURRENT's temp file written
        _line_of("rag/store/writer.py", "self.published = True"),  # just switched
    ]
    for line in landmarks:
        assert line in bench.lines, f"a full run never ran {line}"
    kills = [*(f"line {line}:1" for line in landmarks), *_random_kills(bench, random.Random(seed), 2)]
    print(f"full run {bench.run_seconds:.3f} s, {len(bench.lines)} lines; seed {seed}")
    await _run_trials(bench, kills, seed)


@pytest.mark.slow
async def test_ingest_killed_at_twenty_random_points_keeps_serving_and_recovers(bench: CrashBench) -> None:
    seed = _seed()
    print(f"full run {bench.run_seconds:.3f} s, {len(bench.lines)} lines; seed {seed}")
    await _run_trials(bench, _random_kills(bench, random.Random(seed), 20), seed)


# --- queries during ingest -------------------------------------------------------------------

QUESTIONS = [HOLIDAY_QUESTION, "Is the car park of the Leeds store closed?", "How long do refunds take?"]


def _expected_answers(snapshot: Path, embedder: Any) -> dict[str, Any]:
    """What each question gets from this one version alone (its own data dir)."""
    import asyncio

    settings = make_settings(snapshot, backend="extractive", cache_enabled=False)
    pipeline = build_pipeline(settings, embedder)

    async def ask() -> dict[str, Any]:
        out = {q: _essence((await pipeline.answer(q)).to_dict()) for q in QUESTIONS}
        await pipeline.aclose()
        return out

    return asyncio.run(ask())


def _essence(body: dict[str, Any]) -> str:
    return json.dumps([body["answer"], [(c["id"], c["document_id"], c["text"]) for c in body["citations"]]])


def _snapshot(cdir: Path, into: Path) -> Path:
    live = current_version_dir(cdir)
    assert live is not None
    target = into / live.name / "collections" / "default"
    shutil.copytree(live, target / live.name)
    (target / CURRENT_FILE).write_text(live.name + "\n")
    return into / live.name


def _wait_for_more(seen: list[Any], count: int, timeout_s: float = 30) -> None:
    target, deadline = len(seen) + count, time.monotonic() + timeout_s
    while len(seen) < target and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.fixture
def query_threads() -> Iterator[list[threading.Thread]]:
    threads: list[threading.Thread] = []
    yield threads
    for t in threads:
        t.join(timeout=60)


def test_queries_during_reingests_each_see_one_whole_version(
    tmp_path: Path, corpus: Path, embedder, query_threads: list[threading.Thread]
) -> None:  # type: ignore[no-untyped-def]
    """Four workers query the live service without pause while six re-ingests publish new
    versions (one article rewritten, one added, one removed each time). Every answer must
    be exactly the answer one published version gives on its own: a query that mixed two
    versions (FAISS ids of one resolved in another's SQLite, a half-switched collection)
    would cite chunks no single version returns together, or say what none of them says."""
    settings = make_settings(tmp_path / "data", backend="extractive", cache_enabled=False)
    snapshots = tmp_path / "snapshots"
    _apply_variant(corpus, 0)
    ingest([corpus], "default", settings, embedder, progress=False)
    cdir = collection_dir(settings.collections_dir, "default")
    published = [_snapshot(cdir, snapshots)]

    seen: list[tuple[str, int, str]] = []
    stop = threading.Event()
    with running_server(create_app(settings, build_pipeline(settings, embedder))) as url:

        def worker(offset: int) -> None:
            with httpx.Client(base_url=url, timeout=60) as client:
                i = offset
                while not stop.is_set():
                    question = QUESTIONS[i % len(QUESTIONS)]
                    response = client.post("/v1/query", json={"question": question})
                    seen.append((question, response.status_code, response.text))
                    i += 1

        query_threads.extend(threading.Thread(target=worker, args=(i,), daemon=True) for i in range(4))
        for t in query_threads:
            t.start()
        try:
            for n in range(1, 7):
                _wait_for_more(seen, 4)  # some queries on this version, then switch under them
                _apply_variant(corpus, n)
                ingest([corpus], "default", settings, embedder, progress=False)
                published.append(_snapshot(cdir, snapshots))
            _wait_for_more(seen, 4)
        finally:
            stop.set()
            for t in query_threads:
                t.join(timeout=60)

    failed = [(q, status, text[:300]) for q, status, text in seen if status != 200]
    assert not failed, failed[:5]
    expected = [_expected_answers(s, embedder) for s in published]
    assert len({json.dumps(e, sort_keys=True) for e in expected}) == len(published)  # each version answers differently
    versions_seen = set()
    for question, _, text in seen:
        got = _essence(json.loads(text))
        matches = [i for i, e in enumerate(expected) if e[question] == got]
        assert matches, f"{question!r} got an answer no single version gives: {got[:500]}"
        versions_seen.update(matches)
    print(f"{len(seen)} queries during {len(published) - 1} re-ingests; answers from versions {sorted(versions_seen)}")
    assert len(versions_seen) >= 5  # the queries really overlapped the switches

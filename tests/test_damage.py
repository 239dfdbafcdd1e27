"""Files damaged on disk (a disk error, a bad restore, a hand that deleted the wrong file):
a collection whose files are not what its ingest wrote is an error that says how to mend
it, never wrong passages served in silence, and nothing whole is thrown away."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from ingest.runner import ingest
from rag.errors import CollectionDamagedError, IngestError
from rag.pipeline import build_pipeline
from rag.store import CURRENT_FILE, INDEX_FILE, CollectionIndex, current_version_dir
from serving.app import create_app

from .conftest import EXAMPLES, ROOT, make_settings
from .servers import running_server


@pytest.fixture
def data_dir(example_data_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the example collection, free to damage."""
    target = tmp_path / "data"
    shutil.copytree(example_data_dir / "collections", target / "collections")
    return target


def _garble(path: Path, whole: bool = False) -> None:
    """Noise over the middle of the file (4 KB, or its third quarter), its size unchanged (the
    same noise each run)."""
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.seek(size // 2)
        fh.write(random.Random(7).randbytes(size // 4 if whole else min(4096, size // 4)))


def _cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAG_DATA_DIR": str(data_dir), "RAG_BACKEND": "extractive"}
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def _load(data_dir: Path, embedder) -> CollectionIndex:  # type: ignore[no-untyped-def]
    return CollectionIndex.load(data_dir / "collections", "default", model=embedder.name, dimension=embedder.dimension)


def test_an_index_overwritten_in_place_is_refused_with_how_to_mend_it(data_dir: Path, embedder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """FAISS reads a garbled index without a word (its vectors are just other numbers): the
    size and checksum its ingest kept catch it, at load, at /readyz, at a question, and at
    the next ingest (which would otherwise build on it); --rebuild mends it."""
    vdir = current_version_dir(data_dir / "collections" / "default")
    assert vdir is not None
    _garble(vdir / INDEX_FILE)
    with pytest.raises(CollectionDamagedError, match=r"index\.faiss is not the file its ingest wrote"):
        _load(data_dir, embedder)

    settings = make_settings(data_dir, backend="extractive")
    with running_server(create_app(settings, build_pipeline(settings, embedder))) as url:
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 503 and "index.faiss" in ready.json()["error"]["message"], ready.text
        response = httpx.post(f"{url}/v1/query", json={"question": "Do gift cards expire?"}, timeout=60)
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "collection_damaged" and "--rebuild" in error["message"], error
        assert str(data_dir) not in error["message"]  # no server path to clients

    shown = _cli("collections", "--json", data_dir=data_dir)
    assert shown.returncode == 1  # a monitor's check sees it
    listed = json.loads(shown.stdout)
    assert [r["name"] for r in listed] == ["default"] and "index.faiss is not the file" in listed[0]["state"], listed
    backup = _cli("backup", str(tmp_path / "backup"), data_dir=data_dir)  # a copy of it would be no backup
    assert backup.returncode == 1 and "left out, damaged: collections/default" in backup.stderr, backup.stderr
    assert (tmp_path / "backup").is_dir() and not (tmp_path / "backup" / "collections").exists()

    docs = tmp_path / "docs"
    shutil.copytree(EXAMPLES, docs)
    with pytest.raises(IngestError, match="is damaged"):
        ingest([docs], "default", settings, embedder, progress=False)
    assert current_version_dir(data_dir / "collections" / "default") == vdir  # nothing was changed

    ingest([docs], "default", settings, embedder, progress=False, rebuild=True)
    shown = _cli("collections", "--json", data_dir=data_dir)
    assert shown.returncode == 0
    listed = json.loads(shown.stdout)
    assert listed[0]["state"] == "whole" and listed[0]["chunks"] > 0 and listed[0]["index_version"], listed
    index = _load(data_dir, embedder)
    assert len(index) > 0 and index.version_dir != vdir
    index.close()


def test_a_truncated_chunks_file_or_a_missing_meta_is_named(data_dir: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    vdir = current_version_dir(data_dir / "collections" / "default")
    assert vdir is not None
    chunks = vdir / "chunks.sqlite"
    os.truncate(chunks, chunks.stat().st_size // 2)
    with pytest.raises(CollectionDamagedError, match=r"chunks\.sqlite is \d+ bytes; its ingest wrote \d+"):
        _load(data_dir, embedder)
    (vdir / "meta.json").unlink()
    with pytest.raises(CollectionDamagedError, match=r"meta\.json is missing"):
        _load(data_dir, embedder)


def test_a_lost_current_file_says_which_version_is_whole_and_ingest_keeps_it(
    data_dir: Path,
    embedder,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """Without CURRENT a collection looked never ingested, and the next ingest cleared its
    whole version away (and embedded everything again): now both say how to put it back."""
    cdir = data_dir / "collections" / "default"
    vdir = current_version_dir(cdir)
    assert vdir is not None
    (cdir / CURRENT_FILE).write_text("v999999\n")  # a CURRENT naming no version folder (a typo)
    meta = vdir / "meta.json"
    os.utime(meta, (meta.stat().st_atime, meta.stat().st_mtime - 120))  # not one being published now
    with pytest.raises(CollectionDamagedError, match="names no version folder"):
        _load(data_dir, embedder)
    (cdir / CURRENT_FILE).unlink()
    with pytest.raises(CollectionDamagedError, match=f"echo {vdir.name} > collections/default/CURRENT"):
        _load(data_dir, embedder)

    settings = make_settings(data_dir, backend="extractive")
    with running_server(create_app(settings, build_pipeline(settings, embedder))) as url:
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 503 and f"echo {vdir.name}" in ready.json()["error"]["message"], ready.text

    docs = tmp_path / "docs"
    shutil.copytree(EXAMPLES, docs)
    with pytest.raises(IngestError, match="CURRENT file is missing"):
        ingest([docs], "default", settings, embedder, progress=False)
    assert (vdir / INDEX_FILE).exists()  # the whole version is still there

    (cdir / CURRENT_FILE).write_text(vdir.name + "\n")  # what the message says to do
    index = _load(data_dir, embedder)
    assert index.version_dir == vdir and len(index) > 0
    index.close()


def test_a_response_cache_damaged_past_its_header_is_a_miss_and_clear_mends_it(tmp_path: Path) -> None:
    """Opening reads only the first pages: damage further in used to fail every lookup with a
    500 and `rag cache clear` with a traceback. Now a lookup is a miss, and clearing sets
    the file aside and starts it empty, keeping the blocks (another file)."""
    import numpy as np

    from cache import SemanticCache

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(400, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cache = SemanticCache(tmp_path / "cache", dimension=384, threshold=0.9)
    for n, v in enumerate(vectors):
        cache.put("s", f"question number {n}?", v, {"answer": f"answer {n} " + "x" * 2000})
    cache.reject("s", "question number 0?", vectors[0], "answer 0", "no-answer", "default")  # a block
    cache.close()
    _garble(tmp_path / "cache" / "entries" / "cache.db", whole=True)

    cache = SemanticCache(tmp_path / "cache", dimension=384, threshold=0.9)
    hits = [cache.get_exact("s", f"question number {n}?") for n in range(1, 400)]
    assert cache.lookups["store_errors"] > 0 and hits.count(None) >= cache.lookups["store_errors"]  # misses
    assert cache.clear() == 0
    assert list((tmp_path / "cache").glob("entries.corrupt-*")), "the damaged file is kept aside"
    cache.put("s", "question number 1?", vectors[1], {"answer": "fresh"})
    hit = cache.get_exact("s", "question number 1?")
    assert hit is not None and hit.payload["answer"] == "fresh"
    assert len(cache.blocks.all("default")) == 1  # the block outlived it
    cache.close()


def test_a_damaged_support_store_stops_serve_with_one_line_and_a_damaged_job_store_is_set_aside(
    tmp_path: Path,
) -> None:
    """The support store holds answers, feedback and curated answers: `rag serve` will not
    start on a damaged one, and says so in one line, naming it; the job store (a batch's
    progress) is set aside and started empty."""
    from serving.jobs import JobStore
    from serving.support_store import open_support_store

    data = tmp_path / "data"
    open_support_store(data, None).close()
    JobStore(data / "jobs.sqlite").close()
    for name in ("support.sqlite", "jobs.sqlite"):
        with open(data / name, "r+b") as fh:
            fh.write(os.urandom(100))  # its header
    jobs = JobStore(data / "jobs.sqlite")
    assert jobs.unfinished() == []  # empty, and working
    jobs.close()
    assert list(data.glob("jobs.sqlite.corrupt-*"))

    result = _cli("serve", "--port", "0", data_dir=data)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert "support.sqlite in the data dir is damaged" in result.stderr and "rag backup" in result.stderr, result.stderr


def test_a_rebuild_keeps_the_index_type_and_the_versions_before_until_it_is_whole(
    tmp_path: Path,
    embedder,  # type: ignore[no-untyped-def]
) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(EXAMPLES, docs)
    settings = make_settings(tmp_path / "data", backend="extractive")
    ingest([docs], "default", settings, embedder, progress=False, index_type="hnsw")
    (docs / "gift-cards.txt").write_text("Gift cards now expire after five years.\n")
    ingest([docs], "default", settings, embedder, progress=False)  # v2: v1 stays one run longer
    cdir = settings.collections_dir / "default"
    before = sorted(p.name for p in cdir.glob("v[0-9]*"))
    assert len(before) == 2
    _garble(cdir / before[-1] / INDEX_FILE)

    seen: list[list[str]] = []
    from rag.store import NewVersion

    real_publish = NewVersion.publish

    def publish(self: NewVersion, meta: dict) -> None:  # type: ignore[type-arg]
        seen.append(sorted(p.name for p in cdir.glob("v[0-9]*")))  # what is on disk until then
        real_publish(self, meta)

    NewVersion.publish = publish  # type: ignore[method-assign]
    try:
        ingest([docs], "default", settings, embedder, progress=False, rebuild=True)
    finally:
        NewVersion.publish = real_publish  # type: ignore[method-assign]
    assert set(before) <= set(seen[0]), seen  # the whole v1 was kept while the rebuild ran
    index = CollectionIndex.load(settings.collections_dir, "default", model=embedder.name, dimension=384)
    assert index.meta["index_type"] == "hnsw", index.meta
    index.close()


def test_a_damaged_collection_is_not_hashed_again_for_each_request(
    data_dir: Path,
    embedder,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Checking reads both files whole: a damaged collection's verdict is kept while its files
    stay as they are (each request and /readyz probe would read them again), and dropped when
    they change (a restore)."""
    import rag.store.layout as layout

    vdir = current_version_dir(data_dir / "collections" / "default")
    assert vdir is not None
    good = (vdir / INDEX_FILE).read_bytes()
    _garble(vdir / INDEX_FILE)
    checks = []
    real = layout.check_files
    monkeypatch.setattr(layout, "check_files", lambda *a: (checks.append(1), real(*a))[1])
    pipeline = build_pipeline(make_settings(data_dir, backend="extractive"), embedder)
    try:
        for _ in range(3):
            with pytest.raises(CollectionDamagedError):
                pipeline.get_index("default")
        assert len(checks) == 1
        (vdir / INDEX_FILE).write_bytes(good)  # put back
        assert len(pipeline.get_index("default")) > 0 and len(checks) == 2
    finally:
        pipeline.close_indexes()


def test_a_backup_of_a_damaged_answer_log_is_refused_not_called_a_backup(tmp_path: Path) -> None:
    """Damage past the header (a page of a table) opens fine, and SQLite's online backup copies
    it page for page: the copy was reported "backed up" with exit 0."""
    import sqlite3
    from contextlib import closing

    from serving.keys import KeyStore
    from serving.support_store import open_support_store

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    open_support_store(data_dir, None).close()
    keys = KeyStore(data_dir)
    keys.create([], admin=True)  # sound: backed up
    keys.close()
    db = data_dir / "support.sqlite"
    with closing(sqlite3.connect(db)) as conn:  # every page in the file itself, none in the WAL
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    with open(db, "r+b") as f:  # the first page past the header's: a table's root
        f.seek(4096)
        f.write(b"\xab" * 4096)
    backup = _cli("backup", str(tmp_path / "backup"), data_dir=data_dir)
    assert backup.returncode == 1 and "left out, damaged: support.sqlite (" in backup.stderr, backup.stderr
    assert "put a database back from an earlier backup" in backup.stderr
    assert not (tmp_path / "backup" / "support.sqlite").exists() and (tmp_path / "backup" / "keys.sqlite").exists()
    forget = _cli("forget", "--match", "jane.roe@example.com", data_dir=data_dir)  # was a 43-line traceback
    assert forget.returncode == 1 and "Traceback" not in forget.stderr, forget.stderr
    assert (
        forget.stderr.startswith("error: a database under the data dir is damaged (") and "rag backup" in forget.stderr
    )

"""The store's layout on disk, the part every reader and writer agrees on: the files of a
version folder, the SQLite schema, the FAISS index types, how vectors are kept, and how
``CURRENT`` names the live version.

Layout under ``<data_dir>/collections/<name>/``::

    CURRENT        the name of the live version folder, replaced atomically
    v000007/       index.faiss, chunks.sqlite, meta.json
    .lock          held by an ingest run

A writer (:mod:`rag.store.writer`) builds a whole new version folder and only then swaps
``CURRENT``, so a crash at any moment leaves the previous version serving.

Index types, chosen at ingest (``--index-type``):

- ``flat``: exact inner product; updated in place on re-ingest (adds and deletes);
- ``hnsw``: graph search, for millions of chunks (M=32);
- ``ivfpq``: inverted lists + product quantisation, ~120 bytes a vector in memory;
- ``sq8``: 8-bit scalar quantisation, exact scan of 1/4 of the memory.

The approximate types are rebuilt from the stored vectors when a re-ingest deletes chunks
(FAISS's HNSW cannot delete) or retrains (IVF-PQ, SQ8).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidRequestError

INDEX_FILE = "index.faiss"
CHUNKS_FILE = "chunks.sqlite"
META_FILE = "meta.json"
CURRENT_FILE = "CURRENT"
# 3: chunks.file (the file on this host) apart from chunks.source (the path citations show).
# Later columns (chunks.url) are added in place (rag.store.writer), without a rebuild.
FORMAT_VERSION = 3
READABLE_FORMAT = 2  # the query path reads versions from here up (2 added the full-text index)
INDEX_TYPES = ("flat", "hnsw", "ivfpq", "sq8")
COMPRESSED_TYPES = frozenset({"ivfpq", "sq8"})
REFINE = 2  # compressed types: candidates re-scored exactly, as a multiple of the pool
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    source TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    document_ids TEXT NOT NULL,
    chunks INTEGER NOT NULL,
    ingested_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    file TEXT NOT NULL,
    source TEXT NOT NULL,
    document_id TEXT NOT NULL,
    title TEXT NOT NULL,
    position INTEGER NOT NULL,
    text TEXT NOT NULL,
    vector BLOB,
    url TEXT NOT NULL DEFAULT '',
    page INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS chunks_file ON chunks(file);
CREATE INDEX IF NOT EXISTS chunks_source ON chunks(source);
CREATE INDEX IF NOT EXISTS chunks_title ON chunks(title);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
    title, text, content='chunks', content_rowid='id', tokenize='porter unicode61'
);
CREATE TRIGGER IF NOT EXISTS chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, title, text) VALUES (new.id, new.title, new.text);
END;
CREATE TRIGGER IF NOT EXISTS chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, title, text) VALUES ('delete', old.id, old.title, old.text);
END;
CREATE TABLE IF NOT EXISTS faq_questions (
    chunk_id INTEGER PRIMARY KEY,
    vector BLOB NOT NULL
);
CREATE TRIGGER IF NOT EXISTS faq_questions_ad AFTER DELETE ON chunks BEGIN
    DELETE FROM faq_questions WHERE chunk_id = old.id;
END;
"""


def new_faiss_index(index_type: str, dimension: int, vectors: np.ndarray) -> Any:
    """An empty-or-trained FAISS index of ``index_type`` (ids added by the caller)."""
    import faiss

    n = len(vectors)
    if index_type == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))
    if index_type == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dimension, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 80
        hnsw.hnsw.efSearch = 256  # 1M synthetic: recall@10 0.94 at 128 (p50 0.7 ms)
        return faiss.IndexIDMap2(hnsw)
    if index_type == "sq8":
        sq = faiss.IndexScalarQuantizer(dimension, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        sq.train(vectors)
        return faiss.IndexIDMap2(sq)
    if index_type == "ivfpq":
        if n < 1000:
            raise ValueError(f"ivfpq needs at least 1,000 chunks to train on, this collection has {n}: use flat")
        nlist = int(min(16384, max(1, 4 * np.sqrt(n))))
        nlist = min(nlist, n // 39)
        quantizer = faiss.IndexFlatIP(dimension)
        ivf = faiss.IndexIVFPQ(quantizer, dimension, nlist, dimension // 4, 8, faiss.METRIC_INNER_PRODUCT)
        sample = vectors[np.random.default_rng(0).permutation(n)[: max(nlist * 64, 20000)]]
        ivf.train(sample)
        ivf.nprobe = min(nlist, 32)
        return ivf
    raise ValueError(f"unknown index type {index_type!r}: use one of {', '.join(INDEX_TYPES)}")


def read_index_mapped(path: Path) -> Any:
    """The index with its vectors memory-mapped from the file where FAISS can (flat codes:
    loads in 3 ms instead of 15 ms for 20k vectors, and worker processes share the pages);
    read into memory otherwise. Version folders are never rewritten, so the file under the
    mapping stays as it was."""
    import faiss

    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
    except RuntimeError:
        return faiss.read_index(str(path))


def decode_vectors(blobs: list[bytes], dimension: int) -> np.ndarray:
    """Stored float32 vector blobs as one (len(blobs), dimension) matrix."""
    return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), dimension)


def fetch_vectors(db: sqlite3.Connection, ids: list[int], dimension: int) -> np.ndarray:
    """The float32 vectors of these chunks, as the ``chunks`` table keeps them on disk, row
    for row."""
    marks = ",".join("?" * len(ids))
    rows = dict(db.execute(f"SELECT id, vector FROM chunks WHERE id IN ({marks})", ids).fetchall())
    return decode_vectors([rows[i] for i in ids], dimension)


def check_collection_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise InvalidRequestError(
            f"invalid collection name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            param="collection",
        )
    return name


def collection_dir(collections_dir: Path, name: str) -> Path:
    return collections_dir / check_collection_name(name)


def current_version_dir(cdir: Path) -> Path | None:
    """The live version folder of a collection, or None if it was never ingested."""
    try:
        name = (cdir / CURRENT_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    path = cdir / name
    return path if path.is_dir() else None


def switch_current(cdir: Path, version_dir: Path) -> None:
    """Point CURRENT at ``version_dir`` atomically (write a temp file, fsync, rename)."""
    tmp = cdir / f".{CURRENT_FILE}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        fh.write(version_dir.name + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, cdir / CURRENT_FILE)
    dir_fd = os.open(cdir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


CHECKED_FILES = (INDEX_FILE, CHUNKS_FILE)
"""The files of a version whose size and digest ``meta.json`` keeps (version folders are never
rewritten): a reader checks them before it trusts them, so a damaged index is an error, not
wrong passages served in silence."""


def file_digests(vdir: Path) -> dict[str, dict[str, Any]]:
    """Size and BLAKE2b of each of a version's :data:`CHECKED_FILES`."""
    out = {}
    for name in CHECKED_FILES:
        digest = hashlib.blake2b(digest_size=16)
        with open(vdir / name, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
        out[name] = {"bytes": (vdir / name).stat().st_size, "blake2b": digest.hexdigest()}
    return out


def read_meta(vdir: Path) -> dict[str, Any]:
    """A version's ``meta.json``; :class:`Damage` if it is missing or unreadable."""
    try:
        meta = json.loads((vdir / META_FILE).read_text())
    except FileNotFoundError:
        raise Damage(f"{vdir.name}/{META_FILE} is missing") from None
    except (ValueError, UnicodeDecodeError):
        raise Damage(f"{vdir.name}/{META_FILE} is not the JSON its ingest wrote") from None
    if not isinstance(meta, dict):
        raise Damage(f"{vdir.name}/{META_FILE} is not the JSON its ingest wrote")
    return meta


def check_files(vdir: Path, meta: dict[str, Any]) -> None:
    """Raise :class:`Damage` if a file of the version is missing, or is not the size and bytes
    its ingest wrote (versions written before digests were kept: only that the files exist)."""
    for name in CHECKED_FILES:
        if not (vdir / name).is_file():
            raise Damage(f"{vdir.name}/{name} is missing")
    expected = meta.get("files")
    if not isinstance(expected, dict):
        return
    for name in CHECKED_FILES:
        size = (vdir / name).stat().st_size
        if name in expected and size != expected[name].get("bytes"):
            raise Damage(f"{vdir.name}/{name} is {size} bytes; its ingest wrote {expected[name].get('bytes')}")
    found = file_digests(vdir)
    for name in CHECKED_FILES:
        if name in expected and found[name]["blake2b"] != expected[name].get("blake2b"):
            raise Damage(f"{vdir.name}/{name} is not the file its ingest wrote (its checksum differs)")


SETTLED_S = 60.0
"""How old a version without ``CURRENT`` must be before a reader calls its pointer lost (not
being published now)."""


class Damage(Exception):
    """What is wrong with a version folder on disk (the message)."""


def orphaned_versions(cdir: Path, settled_s: float = 0.0) -> list[Path]:
    """Whole versions (their ``meta.json`` written, which publishing does last but one) of a
    collection whose ``CURRENT`` is missing or names no version folder: a collection that was
    ingested and lost its pointer, not one never ingested. Newest first. A reader passes
    ``settled_s``: a version whose meta.json is younger may be being published this moment
    (the writer, holding the lock, passes 0)."""
    if current_version_dir(cdir) is not None:
        return []
    now = time.time()
    whole = []
    for path in cdir.glob("v[0-9]*"):
        try:
            if now - (path / META_FILE).stat().st_mtime >= settled_s:
                whole.append(path)
        except OSError:
            continue
    return sorted(whole, reverse=True)


def lost_pointer(whole: Path) -> str:
    """What to say of a collection whose ``CURRENT`` is gone and whose ``whole`` version is not."""
    lost = "names no version folder" if (whole.parent / CURRENT_FILE).exists() else "is missing"
    return (
        f"its {CURRENT_FILE} file {lost}, and {whole.name} is whole: put it back with "
        f"`echo {whole.name} > collections/{whole.parent.name}/{CURRENT_FILE}` in the data dir"
    )


def checked_version(cdir: Path, settled_s: float = 0.0) -> tuple[Path, dict[str, Any]] | None:
    """A collection's live version folder and its meta, its files checked; None if it was
    never ingested. :class:`Damage` says what is wrong: a lost ``CURRENT`` (``settled_s`` as
    :func:`orphaned_versions`), a ``meta.json`` or a file not as its ingest wrote it."""
    vdir = current_version_dir(cdir)
    if vdir is None:
        if orphans := orphaned_versions(cdir, settled_s):
            raise Damage(lost_pointer(orphans[0]))
        return None
    meta = read_meta(vdir)
    check_files(vdir, meta)
    return vdir, meta


def collection_dirs(collections_dir: Path) -> list[Path]:
    """Every collection's folder, by name, whatever state it is in."""
    return sorted(p for p in collections_dir.iterdir() if p.is_dir()) if collections_dir.is_dir() else []


def list_collections(collections_dir: Path) -> list[str]:
    return [p.name for p in collection_dirs(collections_dir) if current_version_dir(p) is not None]


def lost_collections(collections_dir: Path) -> list[str]:
    """Collections whose ``CURRENT`` is gone while whole versions remain (readiness reports
    them, with how to mend them; :func:`list_collections` does not list them)."""
    return [p.name for p in collection_dirs(collections_dir) if orphaned_versions(p, SETTLED_S)]

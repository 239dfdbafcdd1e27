"""A collection's index on disk: FAISS vectors with explicit int64 ids, chunk text and
metadata in SQLite beside them, in versioned folders.

Layout under ``<data_dir>/collections/<name>/``::

    CURRENT        the name of the live version folder, replaced atomically
    v000007/       index.faiss, chunks.sqlite, meta.json
    .lock          held by an ingest run

A writer builds a whole new version folder and only then swaps ``CURRENT``, so a crash at
any moment leaves the previous version serving.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CollectionNotFoundError, IndexMismatchError, InvalidRequestError

INDEX_FILE = "index.faiss"
CHUNKS_FILE = "chunks.sqlite"
META_FILE = "meta.json"
CURRENT_FILE = "CURRENT"
FORMAT_VERSION = 1
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
    source TEXT NOT NULL,
    document_id TEXT NOT NULL,
    title TEXT NOT NULL,
    position INTEGER NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_source ON chunks(source);
"""


def check_collection_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise InvalidRequestError(
            f"invalid collection name {name!r}: use 1-64 letters, digits, '.', '_' or '-'",
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


def list_collections(collections_dir: Path) -> list[str]:
    if not collections_dir.is_dir():
        return []
    return sorted(p.name for p in collections_dir.iterdir() if current_version_dir(p) is not None)


@dataclass(frozen=True)
class RetrievedChunk:
    id: int
    document_id: str
    source: str
    title: str
    position: int
    text: str
    score: float


class CollectionIndex:
    """One loaded, read-only version of a collection."""

    def __init__(self, name: str, version_dir: Path, index: Any, meta: dict[str, Any]) -> None:
        self.name = name
        self.version_dir = version_dir
        self.meta = meta
        self._index = index
        self._db = sqlite3.connect(f"file:{version_dir / CHUNKS_FILE}?mode=ro", uri=True, check_same_thread=False)

    @property
    def version(self) -> str:
        """Content fingerprint: changes whenever the indexed content does."""
        return str(self.meta["fingerprint"])

    @property
    def lineage(self) -> str:
        """Stays the same across incremental re-ingests; chunk ids are unique within it."""
        return str(self.meta.get("lineage") or self.meta["fingerprint"])

    def has_chunks(self, ids: list[int]) -> bool:
        """Whether every one of these chunks is still in this version (none changed or went)."""
        if not ids:
            return True
        marks = ",".join("?" * len(ids))
        (found,) = self._db.execute(f"SELECT COUNT(*) FROM chunks WHERE id IN ({marks})", ids).fetchone()
        return int(found) == len(set(ids))

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @classmethod
    def load(cls, collections_dir: Path, name: str, *, model: str, dimension: int) -> CollectionIndex:
        import faiss

        cdir = collection_dir(collections_dir, name)
        vdir = current_version_dir(cdir)
        if vdir is None:
            raise CollectionNotFoundError(name, collections_dir.parent)
        meta = json.loads((vdir / META_FILE).read_text())
        if meta.get("embedding_model") != model or int(meta.get("dimension", -1)) != dimension:
            raise IndexMismatchError(
                f"collection {name!r} was built with {meta.get('embedding_model')} "
                f"({meta.get('dimension')}-d) but this service embeds with {model} ({dimension}-d) - "
                f"re-ingest it with `rag ingest PATH --collection {name}`",
                param="collection",
            )
        return cls(name, vdir, faiss.read_index(str(vdir / INDEX_FILE)), meta)

    def search(self, vector: np.ndarray, k: int) -> list[RetrievedChunk]:
        if len(self) == 0:
            return []
        scores, ids = self._index.search(np.asarray(vector, dtype=np.float32).reshape(1, -1), min(k, len(self)))
        hits = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]
        if not hits:
            return []
        marks = ",".join("?" * len(hits))
        rows = {
            row[0]: row
            for row in self._db.execute(
                f"SELECT id, document_id, source, title, position, text FROM chunks WHERE id IN ({marks})",
                [i for i, _ in hits],
            )
        }
        return [
            RetrievedChunk(*rows[i], score=score)  # type: ignore[misc]
            for i, score in hits
            if i in rows
        ]

    def close(self) -> None:
        self._db.close()

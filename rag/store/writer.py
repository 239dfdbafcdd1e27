"""Writing a collection: one new version folder at a time, published atomically.

:class:`NewVersion` is the whole protocol of a writer. Entered, it holds the collection's
lock (one writer at a time; a second gets a clear error), clears what crashed runs left,
and opens a new version folder: the live version's chunks copied and its FAISS index read,
or empty tables and an empty flat index for a new collection (or one an older release
wrote). The caller changes ``db`` and ``index`` as it likes; :meth:`NewVersion.publish`
then writes the index and ``meta.json``, fsyncs the folder and swaps ``CURRENT``. Leaving
without publishing (an error, or :meth:`NewVersion.discard`) removes the folder, so readers
only ever see whole versions and a crash at any moment leaves the previous one serving.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from ..errors import CollectionDamagedError, IngestError
from .layout import (
    CHUNKS_FILE,
    CURRENT_FILE,
    FORMAT_VERSION,
    INDEX_FILE,
    META_FILE,
    SCHEMA,
    Damage,
    checked_version,
    collection_dir,
    current_version_dir,
    file_digests,
    new_faiss_index,
    orphaned_versions,
    read_meta,
    switch_current,
)


class NewVersion:
    def __init__(self, collections_dir: Path, name: str, *, model: str, dimension: int, rebuild: bool = False) -> None:
        self.name = name
        self.rebuild = rebuild
        self.cdir = collection_dir(collections_dir, name)
        self.model = model
        self.dimension = dimension
        self.current: Path | None = None
        self.path = self.cdir
        self.db: sqlite3.Connection
        self.index: Any = None
        self.meta: dict[str, Any] = {}
        self.published = False
        self._stack = ExitStack()

    def __enter__(self) -> NewVersion:
        import faiss

        self._stack.enter_context(_locked(self.cdir))
        try:
            self.current = current_version_dir(self.cdir)
            if not self.rebuild:
                self._check_current()
            self.path = self._next_version_dir()
            # The live version stays until the new one is published; rebuilding (the live one may be
            # damaged), every whole one does, and those a lost CURRENT left.
            whole = {p for p in self.cdir.glob("v[0-9]*") if (p / META_FILE).is_file()} if self.rebuild else set()
            keep = {*whole, *orphaned_versions(self.cdir), *((self.current,) if self.current else ())}
            self._clean_old_versions(keep=keep)
            self.path.mkdir(parents=True)
            self.db = sqlite3.connect(self.path / CHUNKS_FILE)
            self._stack.callback(self._remove_unpublished)
            current = None if self.rebuild else self.current  # rebuilt: afresh, from the files given
            if current is not None:
                self.meta = read_meta(current)
                if self.meta.get("embedding_model") != self.model or self.meta.get("dimension") != self.dimension:
                    raise IngestError(
                        f"collection {self.name!r} was built with {self.meta.get('embedding_model')}; "
                        f"rebuild it with {self.model}: `rag ingest PATH... --collection {self.name} --rebuild`"
                    )
            if current is not None and int(self.meta.get("format_version", 1)) >= FORMAT_VERSION:
                with closing(sqlite3.connect(f"file:{current / CHUNKS_FILE}?mode=ro", uri=True)) as old:
                    old.backup(self.db)
                self.db.executescript(SCHEMA)  # tables a later release added (all IF NOT EXISTS)
                _add_columns(self.db)
                self.index = faiss.read_index(str(current / INDEX_FILE))
            else:  # new, or written by an older release: built afresh from the files
                self.db.executescript(SCHEMA)
                self.index = new_faiss_index("flat", self.dimension, np.zeros((0, self.dimension), np.float32))
                # Chunk ids never repeat within a lineage, so "the chunks an answer cites still
                # exist" means "its sources are unchanged"; a rebuilt collection starts a new one.
                self.meta = {"next_id": 1, "lineage": uuid.uuid4().hex, "index_type": "flat"}
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stack.close()

    @property
    def rebuilt_index_type(self) -> str | None:
        """Rebuilding: the index type the collection had (an ivfpq one would come back flat, at
        12x the memory), where its meta still says; else None."""
        if not self.rebuild or self.current is None:
            return None
        try:
            return str(read_meta(self.current).get("index_type", "flat"))
        except Damage:
            return None

    def _check_current(self) -> None:
        """Refuse to build on a damaged version, or over whole versions whose ``CURRENT`` is
        gone (the folders a new version would clear away): say how to mend it instead."""
        try:
            checked_version(self.cdir)
        except Damage as exc:
            raise IngestError(CollectionDamagedError(self.name, str(exc)).message) from None

    def publish(self, meta: dict[str, Any]) -> None:
        """Make this version the live one: ``db`` committed, ``index`` and ``meta`` written,
        everything fsynced, then ``CURRENT`` swapped; the version before it stays one run
        longer (a server may be loading it)."""
        import faiss

        self.db.commit()
        self.db.close()
        faiss.write_index(self.index, str(self.path / INDEX_FILE))
        meta = {**meta, "format_version": FORMAT_VERSION, "files": file_digests(self.path)}
        (self.path / META_FILE).write_text(json.dumps(meta, indent=2))
        _fsync_dir(self.path)
        switch_current(self.cdir, self.path)
        self.published = True
        self._clean_old_versions(keep={p for p in (self.current, self.path) if p is not None})

    def discard(self) -> None:
        """Nothing changed: the new folder goes, the live version stays."""
        self._remove_unpublished()

    def current_fingerprint(self) -> str | None:
        if self.current is None or self.rebuild:
            return None
        try:
            fingerprint = read_meta(self.current).get("fingerprint")
        except Damage:
            return None
        return str(fingerprint) if fingerprint is not None else None

    def _remove_unpublished(self) -> None:
        if self.published:
            return
        try:
            self.db.close()
        except (AttributeError, sqlite3.Error):
            pass
        shutil.rmtree(self.path, ignore_errors=True)

    def _next_version_dir(self) -> Path:
        numbers = [int(p.name[1:]) for p in self.cdir.glob("v[0-9]*") if p.name[1:].isdigit()]
        return self.cdir / f"v{max(numbers, default=0) + 1:06d}"

    def _clean_old_versions(self, keep: set[Path]) -> None:
        # The previous version stays one run longer so a server that is just loading it
        # never finds it gone; crashed runs' half-written folders go now, and so does the
        # temp file of a CURRENT switch that was killed before its rename (we hold the
        # lock: no other writer is switching).
        for path in self.cdir.glob("v[0-9]*"):
            if path not in keep and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
        for tmp in self.cdir.glob(f".{CURRENT_FILE}.*.tmp"):
            tmp.unlink(missing_ok=True)


def _add_columns(db: sqlite3.Connection) -> None:
    """Columns a later release added to a table an earlier one made, in place: the lineage and
    the chunk ids stay (nothing is embedded again; a file's chunks get the new values when it
    is read again, when it changes)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(chunks)")}
    if "url" not in columns:  # citations' links
        db.execute("ALTER TABLE chunks ADD COLUMN url TEXT NOT NULL DEFAULT ''")
    if "page" not in columns:  # a PDF passage's page
        db.execute("ALTER TABLE chunks ADD COLUMN page INTEGER NOT NULL DEFAULT 0")


@contextmanager
def _locked(cdir: Path) -> Iterator[None]:
    cdir.mkdir(parents=True, exist_ok=True)
    with open(cdir / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise IngestError(f"another ingest run is writing {cdir} - wait for it to finish") from exc
        yield


def _fsync_dir(path: Path) -> None:
    for child in path.iterdir():
        with open(child, "rb") as fh:
            os.fsync(fh.fileno())
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)

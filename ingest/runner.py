"""One ingest run: walk files, skip unchanged ones, re-chunk and re-embed changed ones,
drop deleted ones, and publish a new index version atomically.

Pruning: a file that was ingested earlier from under one of the paths given to this run,
and is no longer there, has its chunks removed (``prune=False`` keeps them). Files ingested
from other paths are never touched, so collections can be fed from several folders.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from rag.embedder import Embedder
from rag.errors import DocumentError, IngestError
from rag.settings import Settings
from rag.store import FORMAT_VERSION, INDEX_TYPES, NewVersion, decode_vectors, is_faq_question, new_faiss_index

from .chunker import Chunk, Chunker
from .loaders import iter_files, load_file


@dataclass
class IngestReport:
    collection: str
    indexed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped_lines: list[tuple[str, str]] = field(default_factory=list)
    """Lines of a .jsonl file that were skipped while the rest of it was indexed: (file, reason)."""
    chunks_added: int = 0
    chunks_removed: int = 0
    chunks_total: int = 0
    seconds: float = 0.0
    read_seconds: float = 0.0  # hashing, parsing, chunking
    warm_seconds: float = 0.0  # loading the embedding model (Ray: starting the workers)
    embed_seconds: float = 0.0
    version: str | None = None
    index_type: str = "flat"
    rechunked: str | None = None
    """Why every file was read again (the chunk settings changed since the last run), if so."""
    duplicates: list[str] = field(default_factory=list)
    """Files of the collection with the same content, or documents of several files with the
    same title (an archive copy beside the current page): both are quoted, so it is said."""
    not_english: list[str] = field(default_factory=list)
    """Files read this run whose text does not read as English: the bundled embedding model
    and judge are English ones, so questions about them go unanswered or wrong."""

    @property
    def changed(self) -> bool:
        return bool(self.indexed or self.removed)

    def summary(self) -> str:
        rate = self.chunks_added / self.embed_seconds if self.embed_seconds > 0 else 0.0
        return (
            f"collection {self.collection!r}: {len(self.indexed)} files indexed, "
            f"{len(self.unchanged)} unchanged, {len(self.removed)} removed, {len(self.failed)} failed"
            f"{f', {len(self.skipped_lines)} lines skipped' if self.skipped_lines else ''}; "
            f"{self.chunks_added} chunks added, {self.chunks_removed} removed, {self.chunks_total} in the {self.index_type} index; "
            f"{self.seconds:.1f} s ({rate:.0f} chunks/s embedding)"
        )


def _is_under(source: str, roots: list[Path]) -> bool:
    path = Path(source)
    return any(path == root or root in path.parents for root in roots)


def _fingerprint(db: sqlite3.Connection, settings: Settings, model: str) -> str:
    digest = hashlib.sha256(json.dumps([model, settings.chunk_size, settings.chunk_overlap, FORMAT_VERSION]).encode())
    for source, sha in db.execute("SELECT source, sha256 FROM files ORDER BY source"):
        digest.update(f"{source}\0{sha}\n".encode())
    return digest.hexdigest()[:16]


def ingest(
    paths: list[Path],
    collection: str,
    settings: Settings,
    embedder: Embedder,
    *,
    prune: bool = True,
    progress: bool | None = None,
    index_type: str | None = None,
    stages: Any = None,
    rebuild: bool = False,
) -> IngestReport:
    """Index ``paths`` into ``collection``. Raises IngestError only if nothing could be indexed.
    ``stages``: where reading and embedding run (:class:`LocalStages` unless given, e.g.
    :class:`ingest.distributed.RayStages`); the writing is always here. ``rebuild``: afresh from
    ``paths`` alone, a new lineage (the live version is not read: it may be damaged)."""
    stages = stages or LocalStages(embedder)

    started = time.perf_counter()
    report = IngestReport(collection=collection)
    roots = _existing_roots(paths, report)
    with NewVersion(
        settings.collections_dir, collection, model=embedder.name, dimension=embedder.dimension, rebuild=rebuild
    ) as version:
        db, meta = version.db, version.meta
        previous_type = str(meta.get("index_type", "flat"))
        index_type = index_type or version.rebuilt_index_type or previous_type
        if index_type not in INDEX_TYPES:
            raise IngestError(f"unknown index type {index_type!r}: use one of {', '.join(INDEX_TYPES)}")

        known = {src: sha for src, sha in db.execute("SELECT source, sha256 FROM files")}
        chunker = Chunker(settings.chunk_size, settings.chunk_overlap)
        report.rechunked = _chunking_changed(meta, settings)
        # A PDF indexed before chunks had pages is read again: split page by page, cited by page.
        pdfs = "SELECT source FROM files WHERE source LIKE '%.pdf'"  # the chunks of these only, by index
        unpaged = {f for (f,) in db.execute(f"SELECT DISTINCT file FROM chunks WHERE page = 0 AND file IN ({pdfs})")}
        unchanged = {} if report.rechunked else {s: sha for s, sha in known.items() if s not in unpaged}
        read_started = time.perf_counter()  # new chunk settings: no file is unchanged
        pending, seen = _read(roots, unchanged, chunker, report, progress, stages)
        report.read_seconds = time.perf_counter() - read_started

        to_remove = [s for s, _, _, _ in pending if s in known]
        if prune:
            gone = [s for s in known if s not in seen and _is_under(s, roots)]
            to_remove += gone
            report.removed.extend(gone)
        incremental = index_type == previous_type and (index_type == "flat" or (index_type == "hnsw" and not to_remove))
        report.chunks_removed = _remove(db, version.index if incremental else None, to_remove)
        # Files already in the collection first: an edited file keeps its document ids from
        # a newer file that wanted them (it was skipped for them, and is read again each run).
        pending = _unique_ids(db, sorted(pending, key=lambda p: p[0] not in known), report)
        next_id = int(meta.get("next_id", 1))
        ids, vectors = _add(db, pending, next_id, stages, settings.embedding_batch_size, report, progress)
        if incremental:
            if len(ids):
                version.index.add_with_ids(vectors, ids)
        elif pending or to_remove or index_type != previous_type:
            version.index = _rebuild(db, index_type, embedder.dimension)
        now = time.time()
        db.executemany(
            "INSERT INTO files (source, sha256, document_ids, chunks, ingested_at) VALUES (?, ?, ?, ?, ?)",
            [(s, sha, json.dumps(doc_ids), len(chunks), now) for s, sha, doc_ids, chunks in pending],
        )
        report.indexed = [s for s, _, _, _ in pending]
        report.chunks_added = len(ids)
        report.chunks_total = int(version.index.ntotal)
        report.index_type = index_type
        report.duplicates = _duplicates(db)

        if not report.changed and index_type == previous_type:
            version.discard()
            report.version = version.current_fingerprint()
        else:
            db.commit()
            report.version = _publish(version, settings, embedder.name, next_id + len(ids), report, now)
    report.seconds = time.perf_counter() - started
    if not report.indexed and not report.unchanged and not report.removed:
        raise IngestError(_nothing_indexed_message(report))
    return report


def _duplicates(db: sqlite3.Connection) -> list[str]:
    """What the collection holds twice: files with the same bytes, then documents of different
    files with the same title (each file named once, in the first group it is in)."""
    groups: list[tuple[str, list[str]]] = []
    shown = dict(db.execute("SELECT DISTINCT file, source FROM chunks"))  # the path citations show
    by_sha: dict[str, list[str]] = {}
    for file, sha in db.execute("SELECT source, sha256 FROM files ORDER BY source"):
        by_sha.setdefault(sha, []).append(shown.get(file, file))
    groups += [("the same content", sources) for sources in by_sha.values() if len(sources) > 1]
    named = {s for _, sources in groups for s in sources}
    by_title: dict[str, list[str]] = {}
    for title, source in db.execute("SELECT DISTINCT title, source FROM chunks WHERE title != '' ORDER BY source"):
        by_title.setdefault(title, []).append(source)
    groups += [
        (f"the title {title!r}", sources)
        for title, sources in by_title.items()
        if len(sources) > 1 and not set(sources) <= named
    ]
    return [f"{len(sources)} files with {what}: {', '.join(sources)}" for what, sources in groups]


def _chunking_changed(meta: dict[str, Any], settings: Settings) -> str | None:
    """What changed, if the chunk settings differ from the last run's (its meta)."""
    before = (meta.get("chunk_size"), meta.get("chunk_overlap"))
    now = (settings.chunk_size, settings.chunk_overlap)
    if before[0] is None or before == now:
        return None
    return f"chunk size/overlap {before[0]}/{before[1]} -> {now[0]}/{now[1]}"


def _existing_roots(paths: list[Path], report: IngestReport) -> list[Path]:
    """The paths that exist, resolved; a missing one is reported, and never pruned: an
    unmounted folder must not empty the collection."""
    roots = []
    for path in paths:
        root = path.resolve()
        if root.exists():
            roots.append(root)
        else:
            report.failed.append((str(root), "no such file or directory"))
    return roots


Pending = list[tuple[str, str, list[str], list[Chunk]]]
"""(file, sha256, document ids, chunks) of each new or changed file."""


@dataclass(frozen=True)
class FileRead:
    """One file, read: ``kind`` is "pending" (new or changed: its chunks), "unchanged" or
    "failed" (``reason``)."""

    source: str
    kind: str
    sha: str = ""
    document_ids: tuple[str, ...] = ()
    chunks: tuple[Chunk, ...] = ()
    problems: tuple[str, ...] = ()
    reason: str = ""
    english: bool = True


def read_file(root: Path, path: Path, known_sha: str | None, chunker: Chunker) -> FileRead:
    """Read, hash, parse and chunk one file (a local run does this in the process, a Ray run
    in a task: the same code, so the same chunks). A bad file is a "failed" record, never an
    exception."""
    source = str(path.resolve())
    try:
        source.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 in its name: it could not be stored, or cited
        shown = os.fsencode(source).decode("utf-8", "backslashreplace")  # its bytes, as \xe9
        return FileRead(shown, "failed", reason="its name is not valid UTF-8 - rename the file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        return FileRead(source, "failed", reason=f"cannot read ({exc.strerror})")
    sha = hashlib.sha256(data).hexdigest()
    if known_sha == sha:
        return FileRead(source, "unchanged", sha)
    try:
        rel = path.relative_to(root).as_posix() if root.is_dir() else path.name
        loaded = load_file(path.resolve(), data, document_id=rel, source=rel)
    except DocumentError as exc:
        return FileRead(source, "failed", reason=exc.message)
    except Exception as exc:  # a parser's own failure on one odd file must not end the run
        return FileRead(source, "failed", reason=f"could not be read ({type(exc).__name__}: {exc})")
    chunks = tuple(c for doc in loaded.documents for c in chunker.split(doc))
    ids = tuple(d.document_id for d in loaded.documents)
    english = reads_as_english("\n".join(d.text for d in loaded.documents))
    return FileRead(source, "pending", sha, ids, chunks, tuple(loaded.problems), english=english)


_LETTERS_RE = re.compile(r"[^\W\d_]+")
_MIN_WORDS_TO_TELL = 40
# The share of English stop words ("the", "and", "to", ...) in a text: 0.35-0.55 in the help
# centres, FAQs and articles of the evaluation sets, 0.0-0.02 in German pages, 0 in other scripts.
_ENGLISH_MIN_SHARE = 0.15


def reads_as_english(text: str) -> bool:
    """Whether ``text`` reads as English (too short to tell: yes)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    words = _LETTERS_RE.findall(text.lower())
    if len(words) < _MIN_WORDS_TO_TELL:
        return True
    return sum(w in ENGLISH_STOP_WORDS for w in words) / len(words) >= _ENGLISH_MIN_SHARE


def files_to_read(roots: list[Path]) -> list[tuple[Path, Path]]:
    """(root, file) of every supported file under ``roots``, each file once (overlapping
    paths, or two links to one file), in a stable order."""
    seen: set[str] = set()
    files = []
    for root, path in iter_files(roots):
        if path.exists() and str(path.resolve()) not in seen:
            seen.add(str(path.resolve()))
            files.append((root, path))
    return files


class LocalStages:
    """Reading and embedding in this process (the default). :class:`ingest.distributed.RayStages`
    is the same two stages on a Ray cluster."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder

    def read(
        self, files: list[tuple[Path, Path]], known: dict[str, str], chunker: Chunker, progress: bool | None
    ) -> list[FileRead]:
        bar = tqdm(files, desc="reading", unit="file", disable=_quiet(progress))
        return [read_file(root, path, known.get(str(path.resolve())), chunker) for root, path in bar]

    def warm(self) -> None:
        """Load the model before the clock starts, so the rate measures embedding alone."""
        load = getattr(self.embedder, "load", None)
        if load is not None:
            load()

    def embed(self, texts: list[str], batch_size: int, progress: bool | None) -> np.ndarray:
        return _embed(self.embedder, texts, batch_size, progress)


def _read(
    roots: list[Path], known: dict[str, str], chunker: Chunker, report: IngestReport, progress: bool | None, stages: Any
) -> tuple[Pending, set[str]]:
    """Every new or changed file under ``roots``, loaded and chunked; the unchanged and the
    unreadable ones go into ``report`` (a bad file is reported and skipped, never the run).
    Returns the pending files (in file order: chunk ids follow it) and every file seen."""
    files = files_to_read(roots)
    pending: Pending = []
    for read in stages.read(files, known, chunker, progress):
        if read.kind == "unchanged":
            report.unchanged.append(read.source)
        elif read.kind == "failed":
            report.failed.append((read.source, read.reason))
        else:
            report.skipped_lines.extend((read.source, problem) for problem in read.problems)
            if not read.english:
                report.not_english.append(read.source)
            pending.append((read.source, read.sha, list(read.document_ids), list(read.chunks)))
    return pending, {str(path.resolve()) for _, path in files}


def _unique_ids(db: sqlite3.Connection, pending: Pending, report: IngestReport) -> Pending:
    """A document id names one document in a collection: citations, FAQ entries and document
    filters go by it. A document whose id another file already holds (two FAQ files both
    numbering from 1, or faq.md under two of the folders ingested) is skipped and reported
    with the file holding it; a file left with nothing fails."""
    owner = {doc: file for doc, file in db.execute("SELECT DISTINCT document_id, file FROM chunks")}
    kept: Pending = []
    for source, sha, doc_ids, chunks in pending:
        taken = {d: owner[d] for d in doc_ids if owner.get(d, source) != source}
        used = [f"{doc!r} by {other}" for doc, other in taken.items()]
        if taken and len(taken) == len(set(doc_ids)):
            report.failed.append(
                (source, f"its document ids are already used ({', '.join(used[:3])}) - give each its own")
            )
            continue
        report.skipped_lines.extend(
            (source, f"document id {doc!r} is already used by {other} - skipped; give each document its own id")
            for doc, other in taken.items()
        )
        ids = [d for d in doc_ids if d not in taken]
        owner.update(dict.fromkeys(ids, source))
        kept.append((source, sha, ids, [c for c in chunks if c.document_id not in taken]))
    return kept


def _publish(
    version: NewVersion, settings: Settings, model: str, next_id: int, report: IngestReport, now: float
) -> str:
    """The new version live, with its meta; returns its fingerprint."""
    meta = version.meta
    meta.update(
        embedding_model=model,
        dimension=version.dimension,
        chunk_size=settings.chunk_size,
        chunk_overlap=settings.chunk_overlap,
        next_id=next_id,
        index_type=report.index_type,
        chunks=report.chunks_total,
        fingerprint=_fingerprint(version.db, settings, model),
        created_at=now,
    )
    version.publish(meta)
    return str(meta["fingerprint"])


def _remove(db: sqlite3.Connection, index: Any, sources: list[str]) -> int:
    """Every chunk of ``sources`` out of the tables, and out of ``index`` when it is updated in
    place (None: it is rebuilt afterwards). Returns how many chunks went."""
    removed = 0
    for source in sources:
        old_ids = [r[0] for r in db.execute("SELECT id FROM chunks WHERE file = ?", (source,))]
        if old_ids and index is not None:
            index.remove_ids(np.asarray(old_ids, dtype=np.int64))
        removed += len(old_ids)
        db.execute("DELETE FROM chunks WHERE file = ?", (source,))
        db.execute("DELETE FROM files WHERE source = ?", (source,))
    return removed


def _add(
    db: sqlite3.Connection,
    pending: Pending,
    next_id: int,
    stages: Any,
    batch_size: int,
    report: IngestReport,
    progress: bool | None,
) -> tuple[np.ndarray, np.ndarray]:
    """The pending files' chunks embedded and stored with ids from ``next_id`` (and the FAQ
    entries' questions embedded alone). Returns the new ids and their vectors."""
    all_chunks = [c for _, _, _, chunks in pending for c in chunks]
    ids = np.arange(next_id, next_id + len(all_chunks), dtype=np.int64)
    embed_started = time.perf_counter()
    if all_chunks:
        stages.warm()
        report.warm_seconds = time.perf_counter() - embed_started
        embed_started = time.perf_counter()
    vectors = stages.embed([c.embedding_text for c in all_chunks], batch_size, progress)
    report.embed_seconds = time.perf_counter() - embed_started
    files_of = [s for s, _, _, chunks in pending for _ in chunks]
    db.executemany(
        "INSERT INTO chunks (id, file, source, document_id, title, position, text, vector, url, page) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (int(i), f, c.source, c.document_id, c.title, c.position, c.text, v.tobytes(), c.url, c.page)
            for i, f, c, v in zip(ids, files_of, all_chunks, vectors, strict=True)
        ],
    )
    _embed_faq_questions(db, stages, batch_size)
    return ids, vectors


def _rebuild(db: sqlite3.Connection, index_type: str, dimension: int) -> Any:
    """A fresh index of ``index_type`` over every stored vector (training it first)."""
    rows = db.execute("SELECT id, vector FROM chunks ORDER BY id").fetchall()
    ids = np.asarray([r[0] for r in rows], dtype=np.int64)
    vectors = decode_vectors([r[1] for r in rows], dimension)
    try:
        index = new_faiss_index(index_type, dimension, vectors)
    except ValueError as exc:
        raise IngestError(str(exc)) from exc
    if len(ids):
        index.add_with_ids(vectors, ids)
    return index


def _embed_faq_questions(db: sqlite3.Connection, stages: Any, batch_size: int) -> None:
    """The question of each FAQ entry (a document titled with a question) without its answer,
    embedded once for its first chunk; entries from before this was done are filled in too."""
    rows = db.execute(
        "SELECT c.id, c.title FROM chunks c LEFT JOIN faq_questions f ON f.chunk_id = c.id "
        "WHERE c.position = 0 AND f.chunk_id IS NULL AND c.title LIKE '%?%'"
    ).fetchall()
    rows = [(i, title) for i, title in rows if is_faq_question(title)]
    if not rows:
        return
    vectors = stages.embed([title for _, title in rows], batch_size, progress=False)
    db.executemany(
        "INSERT INTO faq_questions (chunk_id, vector) VALUES (?, ?)",
        [(i, v.tobytes()) for (i, _), v in zip(rows, vectors, strict=True)],
    )


def _nothing_indexed_message(report: IngestReport) -> str:
    reasons = "; ".join(f"{src}: {why}" for src, why in report.failed[:5]) or "no supported files found"
    return f"nothing could be indexed ({reasons}) - supported: .txt .md .html .pdf .jsonl .csv"


def _quiet(progress: bool | None) -> bool | None:
    # tqdm's disable=None means "only on a terminal".
    return None if progress is None else not progress


def _embed(embedder: Embedder, texts: list[str], batch_size: int, progress: bool | None) -> np.ndarray:
    """Every text's vector, in order. Batches are cut from the texts sorted by length, so a
    batch pads its texts to a similar length, not to the longest chunk of the run."""
    out = np.zeros((len(texts), embedder.dimension), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    with tqdm(total=len(texts), desc="embedding", unit="chunk", disable=_quiet(progress)) as bar:
        for start in range(0, len(texts), batch_size * 4):
            rows = order[start : start + batch_size * 4]
            out[rows] = embedder.embed_batch([texts[i] for i in rows])
            bar.update(len(rows))
    return out

"""Reading a collection: one loaded, read-only version, searched by the query path.

Search is hybrid: the dense (FAISS) and lexical (FTS5 BM25) rankings are fused by
reciprocal rank. Metadata filters (title, document_id, source) restrict both.

The two compressed index types rank by approximate scores, so their first ``REFINE`` x pool
candidates are re-scored exactly from the float32 vectors that SQLite keeps on disk (a
few hundred KB read a query): the memory stays compressed, the ranking is exact (1M
synthetic vectors: IVF-PQ recall@10 0.73 alone, 1.00 re-ranked; ``rag eval index``).
"""

from __future__ import annotations

import functools
import logging
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..embedding_models import calibration_of
from ..errors import CollectionDamagedError, CollectionNotFoundError, IndexMismatchError, InvalidRequestError
from .layout import (
    CHUNKS_FILE,
    COMPRESSED_TYPES,
    INDEX_FILE,
    READABLE_FORMAT,
    REFINE,
    SETTLED_S,
    Damage,
    checked_version,
    collection_dir,
    decode_vectors,
    fetch_vectors,
    read_index_mapped,
)

log = logging.getLogger("rag.store")
FILTER_FIELDS = ("title", "document_id", "source")
RRF_K = 60
_FTS_TOKEN_RE = re.compile(r"\w+", re.UNICODE)


def rerank_exact(candidates: np.ndarray, query: np.ndarray, vectors: Any, k: int) -> list[int]:
    """The ``k`` best of ``candidates`` (ids, -1 padding allowed) by exact inner product with
    ``query``; ``vectors(ids)`` returns their float32 vectors, row for row."""
    ids = [int(i) for i in candidates if i >= 0]
    if not ids:
        return []
    scores = np.asarray(vectors(ids), dtype=np.float32) @ query
    return [ids[i] for i in np.argsort(-scores, kind="stable")[:k]]


def is_faq_question(title: str) -> bool:
    """A document whose title is a question is an FAQ entry: its title is what users ask."""
    return title.rstrip().endswith("?")


def fts_query(text: str) -> str:
    """An FTS5 query matching any content word of ``text`` (each quoted: no operator
    injection). Stop words go: BM25 gives them little weight anyway, but "the" OR ... would
    make FTS5 rank nearly every chunk."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    words = {w.lower() for w in _FTS_TOKEN_RE.findall(text.replace("'", ""))}
    words = {w for w in words if (len(w) > 1 or w.isdigit()) and w not in ENGLISH_STOP_WORDS}
    return " OR ".join(f'"{w}"' for w in sorted(words))


def _filter_sql(filters: dict[str, Any] | None) -> tuple[str, list[Any]]:
    if not filters:
        return "", []
    clauses, params = [], []
    for key, value in filters.items():
        if key not in FILTER_FIELDS:
            raise InvalidRequestError(
                f"cannot filter on {key!r}: filter on {', '.join(FILTER_FIELDS)}", param=f"filters.{key}"
            )
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, str) for v in values):
            raise InvalidRequestError(f"filter {key!r} takes a string or a list of strings", param=f"filters.{key}")
        clauses.append(f"{key} IN ({','.join('?' * len(values))})")
        params += values
    return " AND ".join(clauses), params


@dataclass(frozen=True)
class RetrievedChunk:
    id: int
    document_id: str
    source: str
    title: str
    position: int
    text: str
    score: float
    url: str = ""
    page: int = 0


def _chunk(row: Any, score: float = 1.0) -> RetrievedChunk:
    """A chunk from its row (the fields ``CollectionIndex._fields`` names); score 1.0 for one
    asked for by id or name rather than found."""
    chunk_id, document_id, source, title, position, text, url, page = row
    return RetrievedChunk(chunk_id, document_id, source, title, position, text, score, url, page)


@dataclass(frozen=True)
class SearchResult:
    """The fused ranking's best chunks, and the first chunk of each ranking that went into it:
    the dense and the lexical searches are two independent witnesses of what a question is
    about (the response cache asks whether both point at a cached answer's source)."""

    chunks: list[RetrievedChunk]
    dense_top: RetrievedChunk | None = None
    lexical_top: RetrievedChunk | None = None


class CollectionIndex:
    """One loaded, read-only version of a collection."""

    def __init__(self, name: str, version_dir: Path, index: Any, meta: dict[str, Any]) -> None:
        self.name = name
        self.version_dir = version_dir
        self.meta = meta
        self._index = index
        self._titles: list[str] | None = None
        self._db = sqlite3.connect(f"file:{version_dir / CHUNKS_FILE}?mode=ro", uri=True, check_same_thread=False)
        # What a RetrievedChunk is read from (a version written before chunks.url or
        # chunks.page has none).
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(chunks)")}
        self._fields = "id, document_id, source, title, position, text, " + ", ".join(
            name if name in columns else default for name, default in (("url", "''"), ("page", "0"))
        )
        self._faq: tuple[np.ndarray, np.ndarray] | None = None
        # An FAQ entry's question alone is a third ranking, from this cosine to the user's
        # question up (below it, "the closest FAQ question" is no evidence).
        self.faq_question_floor = calibration_of(str(meta.get("embedding_model"))).faq_question_floor

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

    @functools.cached_property
    def newest_chunk(self) -> int:
        """The highest chunk id in this version. Ids only grow within a lineage, so a chunk
        with a higher one was added after (a new document, or a changed one read again)."""
        (newest,) = self._db.execute("SELECT MAX(id) FROM chunks").fetchone()
        return int(newest) if newest is not None else -1

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @classmethod
    def load(cls, collections_dir: Path, name: str, *, model: str, dimension: int) -> CollectionIndex:

        try:
            found = checked_version(collection_dir(collections_dir, name), SETTLED_S)
        except Damage as exc:
            raise CollectionDamagedError(name, str(exc)) from None
        if found is None:
            raise CollectionNotFoundError(name, collections_dir.parent)
        vdir, meta = found
        if int(meta.get("format_version", 1)) < READABLE_FORMAT:
            raise IndexMismatchError(
                f"collection {name!r} was written by an older release (no full-text index) - "
                f"re-ingest it with `rag ingest PATH --collection {name}`",
                param="collection",
            )
        if meta.get("embedding_model") != model or int(meta.get("dimension", -1)) != dimension:
            raise IndexMismatchError(
                f"collection {name!r} was built with {meta.get('embedding_model')} "
                f"({meta.get('dimension')}-d) but this service embeds with {model} ({dimension}-d) - "
                f"rebuild it with `rag ingest PATH... --collection {name} --rebuild`",
                param="collection",
            )
        try:
            return cls(name, vdir, read_index_mapped(vdir / INDEX_FILE), meta)
        except (RuntimeError, sqlite3.DatabaseError) as exc:  # a version written before digests were kept
            log.error("collection %r, %s: %s", name, vdir.name, exc)
            raise CollectionDamagedError(name, f"{vdir.name} cannot be read: {type(exc).__name__}") from None

    def warm(self) -> None:
        """Read what the first request would otherwise wait for: the titles, the FAQ questions,
        and the index's pages (one dense search)."""
        self.titles()
        self.faq_questions()
        if len(self):
            dimension = int(self.meta["dimension"])
            probe = np.full((1, dimension), dimension**-0.5, dtype=np.float32)
            self._index.search(probe, 1)

    def titles(self) -> list[str]:
        """The titles that group three or more chunks (an entity, a long document), read once. A
        title with one or two chunks (an FAQ entry, a duplicate) names no entity to search within."""
        if self._titles is None:
            sql = "SELECT title FROM chunks GROUP BY title HAVING COUNT(*) >= 3"
            self._titles = [t for (t,) in self._db.execute(sql) if t]
        return self._titles

    def faq_questions(self) -> tuple[np.ndarray, np.ndarray]:
        """(chunk ids, question vectors) of the collection's FAQ entries, read once."""
        if self._faq is None:
            try:
                rows = self._db.execute("SELECT chunk_id, vector FROM faq_questions ORDER BY chunk_id").fetchall()
            except sqlite3.OperationalError:  # written before FAQ questions were embedded
                rows = []
            ids = np.asarray([r[0] for r in rows], dtype=np.int64)
            self._faq = ids, decode_vectors([r[1] for r in rows], int(self.meta["dimension"]))
        return self._faq

    def _faq_ranking(self, query: np.ndarray, pool: int, allowed: list[int] | None) -> list[int]:
        ids, matrix = self.faq_questions()
        if not len(ids):
            return []
        scores = matrix @ query
        keep = scores >= self.faq_question_floor
        if allowed is not None:
            keep &= np.isin(ids, allowed)
        order = np.flatnonzero(keep)
        return [int(ids[i]) for i in order[np.argsort(-scores[order], kind="stable")][:pool]]

    def search(
        self,
        vector: np.ndarray,
        k: int,
        text: str | None = None,
        filters: dict[str, Any] | None = None,
        mode: str = "hybrid",
    ) -> list[RetrievedChunk]:
        """The ``k`` best chunks: dense and BM25 rankings fused by reciprocal rank (``mode``
        "dense" or "lexical" uses one), within ``filters``. In hybrid mode the FAQ entries whose
        question alone is close to the query (cosine >= the model's ``faq_question_floor``: MiniLM 0.5) are a third
        ranking: a reworded question matches the FAQ's question better than its answer.
        ``score`` is each chunk's cosine similarity to the query, whichever ranking found it
        (the relevance floor reads it)."""
        return self.search_detailed(vector, k, text, filters, mode).chunks

    def search_detailed(
        self,
        vector: np.ndarray,
        k: int,
        text: str | None = None,
        filters: dict[str, Any] | None = None,
        mode: str = "hybrid",
    ) -> SearchResult:
        """:meth:`search`, with the first chunk of the dense and of the lexical ranking."""
        if len(self) == 0:
            return SearchResult([])
        where, params = _filter_sql(filters)
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        pool = max(4 * k, 40)
        allowed: list[int] | None = None
        dense: list[int] = []
        lexical: list[int] = []
        if where:
            # Filtered: score the matching chunks exactly from their stored vectors.
            rows = self._db.execute(f"SELECT id, vector FROM chunks WHERE {where}", params).fetchall()
            if not rows:
                return SearchResult([])
            allowed = [int(r[0]) for r in rows]
            if mode != "lexical":
                matrix = decode_vectors([r[1] for r in rows], len(query))
                dense = [allowed[i] for i in np.argsort(-(matrix @ query))[:pool]]
        elif mode != "lexical" and self.meta.get("index_type") in COMPRESSED_TYPES:
            _, ids = self._index.search(query.reshape(1, -1), min(REFINE * pool, len(self)))
            dense = rerank_exact(ids[0], query, self.stored_vectors, pool)
        elif mode != "lexical":
            _, ids = self._index.search(query.reshape(1, -1), min(pool, len(self)))
            dense = [int(i) for i in ids[0] if i >= 0]
        match = fts_query(text) if text and mode != "dense" else ""
        if match:
            lexical = self._lexical(match, pool, allowed)
        faq = self._faq_ranking(query, pool, allowed) if mode == "hybrid" else []
        fused: dict[int, float] = {}
        for ranking in (dense, lexical, faq):
            for rank, chunk_id in enumerate(ranking):
                fused[chunk_id] = fused.get(chunk_id, 0.0) + 1.0 / (RRF_K + rank + 1)
        top = sorted(fused, key=lambda i: -fused[i])[:k]
        if not top:
            return SearchResult([])
        wanted = list({*top, *dense[:1], *lexical[:1]})
        marks = ",".join("?" * len(wanted))
        found = {
            row[0]: _chunk(row[:8], score=float(np.frombuffer(row[8], dtype=np.float32) @ query))
            for row in self._db.execute(
                f"SELECT {self._fields}, vector FROM chunks WHERE id IN ({marks})",
                wanted,
            )
        }
        return SearchResult(
            [found[i] for i in top if i in found],
            found.get(dense[0]) if dense else None,
            found.get(lexical[0]) if lexical else None,
        )

    def document_ids(self) -> list[str]:
        """Every document this version holds."""
        return [d for (d,) in self._db.execute("SELECT DISTINCT document_id FROM chunks ORDER BY document_id")]

    def document_chunks(self, document_id: str, limit: int = 8) -> list[RetrievedChunk]:
        """A document's first ``limit`` chunks in order (score 1.0: asked for by name, not found)."""
        rows = self._db.execute(
            f"SELECT {self._fields} FROM chunks WHERE document_id = ? ORDER BY position LIMIT ?",
            (document_id, limit),
        ).fetchall()
        return [_chunk(row) for row in rows]

    def chunks(self, ids: list[int]) -> dict[int, RetrievedChunk]:
        """These chunks, by id (the ones this version holds)."""
        marks = ",".join("?" * len(ids))
        sql = f"SELECT {self._fields} FROM chunks WHERE id IN ({marks})"
        return {row[0]: _chunk(row) for row in self._db.execute(sql, ids)}

    def chunks_starting(self, prefix: str, document_id: str, limit: int = 8) -> list[RetrievedChunk]:
        """The chunks whose text starts with ``prefix``, those of ``document_id`` first."""
        sql = f"SELECT {self._fields} FROM chunks WHERE substr(text, 1, ?) = ? ORDER BY document_id != ?, id LIMIT ?"
        rows = self._db.execute(sql, (len(prefix), prefix, document_id, limit)).fetchall()
        return [_chunk(row) for row in rows]

    def stored_vectors(self, ids: list[int]) -> np.ndarray:
        return fetch_vectors(self._db, ids, int(self.meta["dimension"]))

    def _lexical(self, match: str, pool: int, allowed: list[int] | None) -> list[int]:
        """BM25 ranking from FTS5, within ``allowed`` chunk ids when given."""
        if allowed is None:
            sql = "SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY rank LIMIT ?"
            return [row[0] for row in self._db.execute(sql, [match, pool])]
        # FTS5 cannot push "rowid IN (...)" into its ranking (10x slower here): rank every
        # match, keep the allowed ones.
        keep = set(allowed)
        rows = self._db.execute("SELECT rowid, rank FROM chunks_fts WHERE chunks_fts MATCH ?", [match])
        return [i for _, i in sorted((rank, i) for i, rank in rows if i in keep)[:pool]]

    def close(self) -> None:
        self._db.close()

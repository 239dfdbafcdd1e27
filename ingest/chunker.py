"""Split documents into overlapping chunks with langchain's recursive splitter."""

from __future__ import annotations

from dataclasses import dataclass

from langchain_text_splitters import RecursiveCharacterTextSplitter

from .loaders import Document


@dataclass(frozen=True)
class Chunk:
    document_id: str
    title: str
    source: str
    position: int
    text: str
    url: str = ""
    page: int = 0
    """The page of a PDF the chunk begins on (from 1); 0 for a document without pages."""

    @property
    def embedding_text(self) -> str:
        # The title says what a passage is about even when the chunk itself does not.
        return f"{self.title}\n{self.text}" if self.title and self.title not in self.text[:200] else self.text


class Chunker:
    def __init__(self, chunk_size: int, chunk_overlap: int) -> None:
        self._splitter = RecursiveCharacterTextSplitter(
            chunk_size=chunk_size,
            chunk_overlap=min(chunk_overlap, chunk_size // 2),
            separators=["\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " ", ""],
            keep_separator="end",
            strip_whitespace=True,
        )

    def split(self, doc: Document) -> list[Chunk]:
        """A PDF is split page by page (a chunk cites one page; a sentence over a page break
        is its first page's), anything else as one text."""
        edges = sorted({0, *doc.pages, len(doc.text)}) if doc.pages else [0, len(doc.text)]
        pieces = [
            (doc.page_at(a), p)
            for a, b in zip(edges, edges[1:], strict=False)
            for p in self._splitter.split_text(doc.text[a:b])
            if p.strip()
        ]
        return [
            Chunk(doc.document_id, doc.title, doc.source, i, text, url=doc.url, page=page)
            for i, (page, text) in enumerate(pieces)
        ]

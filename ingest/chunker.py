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
        pieces = [p for p in self._splitter.split_text(doc.text) if p.strip()]
        return [
            Chunk(document_id=doc.document_id, title=doc.title, source=doc.source, position=i, text=p, url=doc.url)
            for i, p in enumerate(pieces)
        ]

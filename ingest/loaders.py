"""Read files into documents: one loader per format, each turning bytes into text.

A file that cannot be read raises :class:`rag.errors.DocumentError` with the reason, so the
caller can report it and go on with the rest.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rag.errors import DocumentError
from rag.wire import jsonl_lines

SUPPORTED_SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".jsonl")


@dataclass(frozen=True)
class Document:
    """One document: a whole file, or one line of a .jsonl corpus."""

    document_id: str
    title: str
    text: str
    source: str
    metadata: dict[str, str] = field(default_factory=dict)


def _decode(data: bytes) -> str:
    if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):  # Windows' "Unicode" text: its mark says so
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise DocumentError(f"not valid UTF-16 (byte {exc.start}) - re-save the file as UTF-8") from exc
        if "\x00" in text:  # UTF-32, whose mark starts as UTF-16's does, or binary
            raise DocumentError("not UTF-8 or UTF-16 text (it decodes to NUL characters) - re-save it as UTF-8")
        return text
    if b"\x00" in data[:8192]:
        raise DocumentError("looks like a binary file (contains NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentError(f"not valid UTF-8 (byte {exc.start}) - re-save the file as UTF-8") from exc


def _first_line_title(text: str, fallback: str) -> str:
    for line in text.splitlines():
        line = line.strip().lstrip("#").strip()
        if line:
            return line[:200]
    return fallback


def _load_text(data: bytes, path: Path) -> tuple[str, str]:
    text = _decode(data)
    return _first_line_title(text, path.stem), text


def _load_markdown(data: bytes, path: Path) -> tuple[str, str]:
    text = _decode(data)
    match = re.search(r"^#\s+(.+)$", text, flags=re.MULTILINE)
    return (match.group(1).strip() if match else path.stem), text


_BLOCK_TAGS = [
    "p",
    "div",
    "section",
    "article",
    "main",
    "header",
    "aside",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "li",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "tr",
    "table",
    "blockquote",
    "pre",
    "hr",
    "figure",
    "figcaption",
]


def _load_html(data: bytes, path: Path) -> tuple[str, str]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(_decode(data), "html.parser")
    for tag in soup(["script", "style", "nav", "footer", "noscript", "template"]):
        tag.decompose()
    title = soup.title.get_text(strip=True) if soup.title else ""
    if soup.title:
        soup.title.decompose()
    body = soup.body or soup
    for cell in body.find_all(["td", "th"]):
        cell.append(" | ")
    for node in body.find_all(string=True):  # source line breaks mean nothing in HTML
        node.replace_with(re.sub(r"\s+", " ", str(node)))
    for block in body.find_all(_BLOCK_TAGS):
        block.insert_before("\n")
        block.insert_after("\n")
    for br in body.find_all("br"):
        br.replace_with("\n")
    text = body.get_text()
    text = "\n".join(" ".join(line.split()) for line in text.splitlines())
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    if not title:
        heading = body.find(["h1", "h2"])
        title = heading.get_text(strip=True) if heading else path.stem
    return title, text


def _load_pdf(data: bytes, path: Path) -> tuple[str, str]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    # pypdf logs what it finds wrong ("EOF marker not found") as well as raising it: the run's
    # report says it once, with the file's name.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
        meta_title = reader.metadata.title if reader.metadata else None
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise DocumentError(f"corrupt or unreadable PDF ({exc})") from exc
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    return (meta_title or _first_line_title(text, path.stem)), text


_LOADERS: dict[str, Callable[[bytes, Path], tuple[str, str]]] = {
    ".txt": _load_text,
    ".md": _load_markdown,
    ".markdown": _load_markdown,
    ".html": _load_html,
    ".htm": _load_html,
    ".pdf": _load_pdf,
}


@dataclass
class Loaded:
    """A file's documents, and the lines of it that were skipped (with their reasons)."""

    documents: list[Document]
    problems: list[str] = field(default_factory=list)


def _jsonl_record(line: str, lineno: int, path: Path, source: str) -> Document:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DocumentError(f"line {lineno} is not JSON ({exc.msg})") from exc
    if not isinstance(record, dict):
        raise DocumentError(f'line {lineno} is not an object like {{"id", "title", "text"}}')
    text = record.get("text")
    if text is None and "answer" in record:  # FAQ shape: question + answer is the passage
        text = f"{record.get('question', '')}\n{record['answer']}"
    if not isinstance(text, str) or not text.strip():
        raise DocumentError(f'line {lineno} has no "text"')
    # Without an id, one made from the line's own text: a line added above it moves nothing
    # (by line number, every id after it would name another entry from then on).
    made = f"{path.stem}:{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:10]}"
    doc_id = str(record.get("id", made))
    title = str(record.get("title") or record.get("question") or doc_id)
    return Document(document_id=doc_id, title=title, text=text, source=source)


def _load_jsonl(data: bytes, path: Path, source: str) -> Loaded:
    """Every good line is a document; a bad line (not JSON, no text, an id seen on an earlier
    line) is skipped and reported with its number, and the rest of the file is still indexed."""
    loaded = Loaded([])
    seen: dict[str, int] = {}
    for lineno, line in enumerate(jsonl_lines(_decode(data)), start=1):
        if not line.strip():
            continue
        try:
            doc = _jsonl_record(line, lineno, path, source)
        except DocumentError as exc:
            loaded.problems.append(exc.message)
            continue
        if doc.document_id in seen:
            loaded.problems.append(
                f"line {lineno} repeats the id {doc.document_id!r} of line {seen[doc.document_id]} - skipped; "
                "give each line its own id (a line without one is named by its text: the same text repeats it)"
            )
            continue
        seen[doc.document_id] = lineno
        loaded.documents.append(doc)
    return loaded


def load_file(path: Path, data: bytes, document_id: str, source: str | None = None) -> Loaded:
    """Turn one file's bytes into documents; raises DocumentError with the reason when none
    can be read. ``source`` is the path citations show (relative to the folder ingested)."""
    suffix = path.suffix.lower()
    source = source or path.name
    if not data.strip():
        raise DocumentError("empty file")
    if suffix == ".jsonl":
        loaded = _load_jsonl(data, path, source)
    else:
        loader = _LOADERS.get(suffix)
        if loader is None:
            raise DocumentError(f"unsupported file type {suffix!r} (supported: {', '.join(SUPPORTED_SUFFIXES)})")
        title, text = loader(data, path)
        loaded = Loaded([Document(document_id=document_id, title=title, text=text, source=source)])
    loaded.documents = [d for d in loaded.documents if d.text.strip()]
    if not loaded.documents:
        reasons = "; ".join(loaded.problems[:3])
        raise DocumentError(f"no text could be extracted ({reasons})" if reasons else "no text could be extracted")
    return loaded


def iter_files(paths: list[Path]) -> Iterator[tuple[Path, Path]]:
    """Yield (root, file) for every supported file under the given files and folders."""
    for root in paths:
        if root.is_dir():
            for path in sorted(root.rglob("*")):
                if (
                    path.is_file()
                    and path.suffix.lower() in SUPPORTED_SUFFIXES
                    and not any(part.startswith(".") for part in path.relative_to(root).parts)
                ):
                    yield root, path
        else:
            yield root.parent, root
